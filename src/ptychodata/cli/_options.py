"""The reading flags, generated from :class:`ptychodata.io.LoadOptions`, the one definition of the
load options: their defaults, types, checks and help live there, not here.

:func:`add_load_options` makes one argparse argument per load option that has a
:class:`~ptychodata.io.Flag` (its ``dest`` is the option's name); :func:`load_options` turns the
parsed namespace back into keyword arguments, keeping only the options that differ from their
defaults (:meth:`LoadOptions.changed`), so ``prepare`` gets the same key from the command line
as from Python; :func:`python_spellings` says how each option's Python spelling reads as a flag.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from ptychodata.cli._arguments import integer, number
from ptychodata.errors import ParameterError
from ptychodata.io import Flag, LoadOptions, load_option_flags, regular_file

_TYPES = {"int": integer, "float": number, "str": str, "path": Path}


def add_load_options(parser: argparse.ArgumentParser) -> None:
    """Add the reading flags (one per flagged option of ``LoadOptions``) to ``parser``.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        A command that reads scan files; its namespace gets one attribute per option.
    """
    group = parser.add_argument_group("reading (see ScanData.load)")
    for name, default, flag in load_option_flags():
        if flag.kind == "either":
            pair = group.add_mutually_exclusive_group()
            pair.add_argument(flag.flag, dest=name, action="store_const", const=True, default=default,
                              help=flag.help)
            pair.add_argument(flag.off, dest=name, action="store_const", const=False, help=flag.off_help)
        else:
            group.add_argument(flag.flag, dest=name, help=flag.help, **_how(default, flag))


def _how(default: Any, flag: Flag) -> dict[str, Any]:
    """The argparse settings of one flag of a kind other than ``either``."""
    if flag.kind == "switch":
        return {"action": "store_true", "default": default}
    if flag.kind == "pair":
        return {"nargs": 2, "type": number, "default": default, "metavar": flag.metavar}
    if flag.kind == "keymap":
        return {"action": "append", "default": None, "metavar": flag.metavar}
    if flag.kind == "npy":
        return {"type": Path, "default": None, "metavar": flag.metavar}
    if flag.kind == "value":
        return {"type": _TYPES[flag.type], "choices": flag.choices, "default": default,
                "metavar": flag.metavar}
    raise ValueError(f"{flag.flag}: unknown kind of flag {flag.kind!r}")


def load_options(args: argparse.Namespace) -> dict[str, Any]:
    """The load options given on the command line, as keyword arguments of ``ScanData.load``.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed by a parser with :func:`add_load_options`.

    Returns
    -------
    dict
        Only the options that differ from their defaults, checked and normalised by
        ``LoadOptions`` (``LoadOptions(**given).changed()``); a value ``LoadOptions`` refuses
        raises its error, whose Python spelling the entry point turns into the flag.
    """
    given = {}
    for name, _default, flag in load_option_flags():
        value = getattr(args, name)
        if flag.kind == "keymap":
            value = _key_map(flag, value)
        elif flag.kind == "npy":
            value = _npy_mask(flag, value)
        elif flag.kind == "pair" and value is not None:
            value = tuple(value)
        given[name] = value
    return LoadOptions(**given).changed()


def _key_map(flag: Flag, items: list[str] | None) -> dict[str, str] | None:
    keys = {}
    for item in items or ():
        name, sep, member = item.partition("=")
        if not sep or not name or not member:
            raise ParameterError(
                f"{flag.flag} {item!r}: expected NAME=PATH, e.g. {flag.flag} diffraction=/entry/data/data"
            )
        keys[name] = member
    return keys or None


def _npy_mask(flag: Flag, path: Path | None) -> np.ndarray | None:
    if path is None:
        return None
    regular_file(path, f"a NumPy array file (.npy) for {flag.flag}")  # a FIFO would block the read
    try:
        return np.load(path, allow_pickle=False) != 0
    except ValueError as exc:  # not a .npy file, or one holding Python objects
        raise ParameterError(f"{flag.flag} {path}: not a NumPy array file (.npy): {exc}") from None


def python_spellings() -> list[tuple[str, str, bool]]:
    """How the load options' Python spellings read on the command line.

    Returns
    -------
    list of (str, str, bool)
        ``(python, flag, takes_value)`` in the order to apply them: ``("intensity=False",
        "--amplitude", False)``, ``("probe_modes='all'", "--probe-modes all", False)``,
        ``("crop=", "--crop", True)`` (``crop=64`` reads ``--crop 64``), ``("keys=",
        "--key NAME=PATH", True)``.
    """
    spellings = []
    for name, _default, flag in load_option_flags():
        if flag.kind in ("either", "switch"):
            spellings.append((f"{name}=True", flag.flag, False))
            if flag.off is not None:
                spellings.append((f"{name}=False", flag.off, False))
            continue
        spellings += [(f"{name}={choice!r}", f"{flag.flag} {choice}", False) for choice in flag.choices or ()]
        spelled = f"{flag.flag} {flag.metavar}" if flag.kind == "keymap" else flag.flag
        spellings.append((f"{name}=", spelled, True))
    return spellings


def key_map_flags() -> list[str]:
    """The flags that take ``NAME=PATH`` (``--key``): what follows them is a key name, not an option."""
    return [flag.flag for _name, _default, flag in load_option_flags() if flag.kind == "keymap"]
