"""The argument parser of ``ptychodata``, built from its commands."""

from __future__ import annotations

import argparse
import sys

from ptychodata._runtime import __version__
from ptychodata.cli import _cache, _convert, _dataset, _demo, _inspect, _prepare, _prepare_scan, _simulate

_COMMANDS = (_simulate, _inspect, _convert, _prepare, _prepare_scan, _dataset, _cache, _demo)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ptychodata`` and its sub-commands.

    Returns
    -------
    argparse.ArgumentParser
        Parsing gives a namespace whose ``run`` is the command's ``run(args) -> int``.
    """
    parser = OneLineParser(
        prog="ptychodata",
        description="Ptychography scans in, neighbour-grouped training data out.",
        epilog="Run 'ptychodata demo' for the whole pipeline on a synthetic scan.",
    )
    parser.add_argument("--version", action="version", version=f"ptychodata {__version__}")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error (also after COMMAND)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in _COMMANDS:
        command.add_parser(commands).set_defaults(run=command.run)
    return parser


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one ``error: ...`` line (naming the
    command and where its help is) and exit status 2; its sub-command parsers are too."""

    def error(self, message: str):  # noqa: D102 - argparse's hook
        print(f"error: {' '.join(message.split())} (see '{self.prog} --help')", file=sys.stderr)
        raise SystemExit(2)
