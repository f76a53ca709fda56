"""The entry point: parse, run the command, turn library errors and warnings into one line each."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence

from ptychodata.cli._messages import for_the_command_line, one_line
from ptychodata.cli._parser import build_parser
from ptychodata.errors import PtychodataError


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``ptychodata ARGS``; returns the exit status.

    Parameters
    ----------
    argv : list of str, optional
        Arguments without the program name; default ``sys.argv[1:]``.

    Returns
    -------
    int
        0 on success, 2 on a usage error, a :class:`PtychodataError`, an OS error or a
        memory error (printed as one ``error: ...`` line on stderr, flags named as flags),
        130 on Ctrl-C. ``--help`` and ``--version`` print and return 0. A command may
        return 1 for a finding (``inspect``: the file does not load; ``cache verify``: a
        problem).
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors: argparse has printed already
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    previous = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        return args.run(args)
    except (PtychodataError, OSError, MemoryError) as exc:
        _close_progress_bars()
        print(f"error: {_error_text(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _close_progress_bars()
        print("error: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = previous


def _error_text(exc: BaseException) -> str:
    text = for_the_command_line(one_line(exc))
    if isinstance(exc, MemoryError):
        return f"out of memory: {text}" if text else "out of memory"
    return text


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
