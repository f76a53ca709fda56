"""How library messages read on the command line: one line, and flags where they name Python
parameters (``pass intensity=False`` reads ``pass --amplitude``).

The load options' part of the translation is generated from their one definition
(:func:`ptychodata.cli._options.python_spellings`); the rest, for the grouping and ``prepare``'s
own parameters, is written here.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

from ptychodata.cli._options import key_map_flags, python_spellings

# Parameters that are not load options, and their flags.
_OTHER_FLAGS = {
    "enable_oversampling=True": "--oversample",
    "cache_dir=...": "--cache-dir DIR",
    "materialize=True": "--materialize",
    "verify=True": "--verify",
    "neighbor_count": "--neighbors",
    "n_groups": "--n-groups",
    "nphotons=": "--nphotons ",
    "copy=False": "--no-copy",
    "copy=True": "no --no-copy",
    "frames_dtype=": "--frames-dtype ",
}

_VALUE_FOLLOWS = re.compile(r"[^\s,;)]")


def one_line(message: object) -> str:
    """``message`` as text on one line, runs of white space as one space."""
    return " ".join(str(message).split())


def for_the_command_line(message: str) -> str:
    """``message`` with the Python spellings of parameters replaced by their flags.

    Parameters
    ----------
    message : str
        A library message, which names Python parameters (``crop=1; expected ...``).

    Returns
    -------
    str
        The same message naming flags (``--crop 1; expected ...``).
    """
    for pattern, replace in _load_option_patterns():
        message = pattern.sub(replace, message)
    for argument, flag in _OTHER_FLAGS.items():
        message = message.replace(argument, flag)
    return message


@functools.cache
def _load_option_patterns() -> list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]]:
    """One pattern a Python spelling of a load option, whole words only and not a key name
    after ``--key`` (``--key diffraction=/d`` stays)."""
    not_a_key = "".join(f"(?<!{re.escape(flag)} )" for flag in key_map_flags())
    patterns = []
    for python, flag, takes_value in python_spellings():
        end = "" if takes_value else r"(?![\w'])"
        pattern = re.compile(rf"(?<![\w-]){not_a_key}{re.escape(python)}{end}")
        patterns.append((pattern, functools.partial(_spelled, flag, takes_value)))
    return patterns


def _spelled(flag: str, takes_value: bool, match: re.Match[str]) -> str:
    if not takes_value:
        return flag
    following = match.string[match.end() : match.end() + 1]
    return f"{flag} " if _VALUE_FOLLOWS.match(following) else flag
