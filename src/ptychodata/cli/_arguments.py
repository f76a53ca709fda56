"""Argument types (``type=`` of ``add_argument``) and arguments shared by several commands."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

from ptychodata._runtime import check_int
from ptychodata.errors import ParameterError


def integer(text: str) -> int:
    """A whole number, of any sign (its range is checked where it is used)."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


integer.__name__ = "int"


def int_at_least(minimum: int) -> Callable[[str], int]:
    """The type of an integer flag whose value must be ``>= minimum``."""

    def parse(text: str) -> int:
        value = integer(text)
        try:
            return check_int("value", value, minimum=minimum)
        except ParameterError:
            message = f"{value} is too small; expected an integer >= {minimum}"
            raise argparse.ArgumentTypeError(message) from None

    parse.__name__ = "int"
    return parse


positive_int = int_at_least(1)


def number(text: str) -> float:
    """A float, of any value (its range is checked where it is used)."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


number.__name__ = "float"


def positive_float(text: str) -> float:
    """A finite float > 0."""
    value = number(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text} must be a positive finite number")
    return value


_SECONDS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}


def age(text: str) -> float:
    """An age in seconds, from ``14d``, ``36h``, ``90m``, ``30s`` or a plain number of days."""
    unit = text.strip()[-1:].lower()
    scale = _SECONDS.get(unit)
    try:
        value = positive_float(text.strip()[:-1] if scale else text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text}: expected an age such as 14d, 36h, 90m or 14 (days)") from None
    return value * (scale or _SECONDS["d"])


def fraction(text: str) -> float:
    """A float in [0, 1)."""
    value = number(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text} is outside [0, 1)")
    return value


def add_cache_dir(parser: argparse.ArgumentParser) -> None:
    """``--cache-dir DIR``, where stores live."""
    parser.add_argument(
        "--cache-dir", type=Path, help="cache directory (default $PTYCHODATA_CACHE, else ~/.cache/ptychodata)"
    )
