"""The entry point: parse, run the command, turn errors and warnings into one line each.

Whatever goes wrong, the user reads one ``error: ...`` line on stderr, never a traceback
(``--debug`` adds it): a usage error, a :class:`PtychodataError`, an OS error or a memory
error exits 2, and so does an unexpected exception (named as one, to be reported).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path

from ptychodata.cli._messages import for_the_command_line, one_line
from ptychodata.cli._parser import build_parser
from ptychodata.errors import PtychodataError

DEBUG_FLAG = "--debug"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``ptychodata ARGS``; returns the exit status.

    Parameters
    ----------
    argv : list of str, optional
        Arguments without the program name; default ``sys.argv[1:]``. ``--debug``
        anywhere before a ``--`` also prints the traceback of an error.

    Returns
    -------
    int
        0 on success, 2 on a usage error, a :class:`PtychodataError`, an OS error, a
        memory error or an unexpected exception (printed as one ``error: ...`` line on
        stderr, flags named as flags, the path at fault named), 130 on Ctrl-C. ``--help``
        and ``--version`` print and return 0. A command may return 1 for a finding
        (``inspect``: the file does not load; ``cache verify``: a problem).
    """
    argv, debug = _without_debug(sys.argv[1:] if argv is None else list(argv))
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors: printed already
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    previous = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        return args.run(args)
    except KeyboardInterrupt:
        _close_progress_bars()
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the one place every error becomes one line
        _close_progress_bars()
        if debug:
            traceback.print_exc()
        print(f"error: {_error_text(exc, args)}", file=sys.stderr)
        return 2
    finally:
        warnings.showwarning = previous


def _without_debug(argv: list[str]) -> tuple[list[str], bool]:
    """``argv`` without ``--debug`` (before any ``--``), and whether it was there."""
    end = argv.index("--") if "--" in argv else len(argv)
    debug = DEBUG_FLAG in argv[:end]
    return [a for i, a in enumerate(argv) if not (i < end and a == DEBUG_FLAG)], debug


def _error_text(exc: BaseException, args: argparse.Namespace) -> str:
    """One line for ``exc``: the library's message with flags for parameters; an OS error as
    ``PATH: what``; a memory error or an unexpected one naming the files the command was given."""
    if isinstance(exc, PtychodataError):
        return for_the_command_line(one_line(exc))
    given = _paths_given(args)
    if isinstance(exc, MemoryError):
        text = one_line(exc)
        where = f" while working on {given}" if given else ""
        return f"out of memory{where}: {text}" if text else f"out of memory{where}"
    if isinstance(exc, OSError):
        return _os_error_text(exc, given)
    where = f" (working on {given})" if given else ""
    return (
        f"unexpected {type(exc).__name__}{where}: {one_line(exc)}; this is a bug: run again with --debug for the "
        "traceback and report it"
    )


def _os_error_text(exc: OSError, given: str) -> str:
    reason = exc.strerror or one_line(exc) or type(exc).__name__
    code = f" [Errno {exc.errno}]" if exc.errno else ""
    if exc.filename is not None:
        target = f" -> {os.fsdecode(exc.filename2)}" if exc.filename2 is not None else ""
        return f"{os.fsdecode(exc.filename)}{target}: {reason}{code}"
    where = f" (working on {given})" if given else ""
    return f"{reason}{code}{where}"


def _paths_given(args: argparse.Namespace) -> str:
    """The files and directories named on the command line, as one phrase (empty when none)."""
    paths: list[str] = []
    for value in vars(args).values():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, Path):
                paths.append(str(item))
    if len(paths) > 3:
        paths = [*paths[:3], f"and {len(paths) - 3} more"]
    return ", ".join(paths)


def _close_progress_bars() -> None:
    """End unfinished progress bars so the next line starts on a line of its own."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()
    sys.stderr.flush()


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ARG001
    """Warnings as one ``warning: ...`` line, without Python's source line."""
    _close_progress_bars()
    print(f"warning: {for_the_command_line(one_line(message))}", file=sys.stderr if file is None else file)
