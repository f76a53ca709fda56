"""Argument checks shared by every public entry point: one rule, one error class, one wording."""

from __future__ import annotations

import numbers
from typing import Any

from ptychodata.errors import ParameterError


def check_int(name: str, value: Any, *, minimum: int = 1, maximum: int | None = None) -> int:
    """``value`` as an ``int`` if it is a whole number ``>= minimum``, else ``ParameterError``.

    Parameters
    ----------
    name : str
        The parameter's name, as the caller spells it (``"batch_size"``), for the message.
    value : Any
        An ``int`` or NumPy integer; a ``bool``, a float (even ``2.0``) or a string is refused.
    minimum : int, default 1
        The smallest value accepted; 1 makes it the positive-integer check.
    maximum : int, optional
        The largest value accepted.

    Returns
    -------
    int
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ParameterError(f"{name}={value!r}; expected {_expected(minimum)}")
    if value < minimum:
        raise ParameterError(f"{name}={value!r}; expected {_expected(minimum)}")
    if maximum is not None and value > maximum:
        raise ParameterError(f"{name}={value!r}; expected {_expected(minimum)} <= {maximum}")
    return int(value)


def _expected(minimum: int) -> str:
    if minimum == 1:
        return "a positive integer"
    if minimum == 0:
        return "a non-negative integer"
    return f"an integer >= {minimum}"
