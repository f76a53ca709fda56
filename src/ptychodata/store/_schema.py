"""Typed reading of the JSON a store keeps (its manifests): every field checked for its type and
range as it is read, and a wrong one named by file and key, with what was found and what was
expected, as ``StoreCorruptError``.

A manifest is data like any input: it may have been edited, damaged, or made by someone else.
Nothing read through :class:`Fields` reaches the rest of the store unchecked.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import numpy as np

from ptychodata.errors import StoreCorruptError
from ptychodata.store._ids import REPAIR, check_build_id, check_key

__all__ = ["Fields", "corrupt"]

T = TypeVar("T")
_MAX_DIMS = 8
# Dtypes a store file may hold: booleans, integers, floats and complex numbers, never objects.
_KINDS = "biufc"


def corrupt(where: str, message: str) -> StoreCorruptError:
    """The error for something wrong in a store's file ``where``."""
    return StoreCorruptError(f"{where}: {message}; {REPAIR}")


def _found(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


class Fields:
    """The fields of one JSON object of a manifest, read by type.

    Parameters
    ----------
    values : object
        What the JSON held there; anything but an object (dict) is refused.
    where : str
        The file, for messages.
    prefix : str
        The object's place in the file (``"experiments[0].source."``), for messages.
    known : collection of str, optional
        The keys the object may hold: another key is refused.
    """

    def __init__(self, values: Any, where: str, prefix: str = "", *, known: Any = None):
        self.where, self.prefix = where, prefix
        if not isinstance(values, Mapping):
            name = prefix.rstrip(".") or "the manifest"
            raise corrupt(where, f"{name}: found {_found(values)}; expected a JSON object")
        self.values = values
        if known is not None:
            unknown = sorted(str(key) for key in values if key not in known)
            if unknown:
                raise corrupt(where, f"unexpected key(s) {', '.join(prefix + key for key in unknown)}")

    def error(self, key: str, found: Any, expected: str) -> StoreCorruptError:
        return corrupt(self.where, f"key '{self.prefix}{key}': found {_found(found)}; expected {expected}")

    def has(self, key: str) -> bool:
        return key in self.values

    def raw(self, key: str, *, default: Any = ...) -> Any:
        if key not in self.values:
            if default is not ...:
                return default
            raise corrupt(self.where, f"key '{self.prefix}{key}' is missing")
        return self.values[key]

    def integer(self, key: str, *, minimum: int | None = 0, optional: bool = False, default: Any = ...) -> Any:
        value = self.raw(key, default=default)
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
            bound = "" if minimum is None else f" >= {minimum}"
            raise self.error(key, value, f"an integer{bound}" + (" or null" if optional else ""))
        return value

    def number(self, key: str, *, positive: bool = False, optional: bool = False) -> Any:
        return self._number(key, self.raw(key), positive=positive, optional=optional)

    def _number(self, key: str, value: Any, *, positive: bool, optional: bool) -> float | None:
        if value is None and optional:
            return None
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or (positive and value <= 0):
            what = "a finite number" + (" > 0" if positive else "") + (" or null" if optional else "")
            raise self.error(key, value, what)
        return float(value)

    def boolean(self, key: str, *, optional: bool = False, default: Any = ...) -> Any:
        value = self.raw(key, default=default)
        if value is None and optional:
            return None
        if not isinstance(value, bool):
            raise self.error(key, value, "true or false" + (" or null" if optional else ""))
        return value

    def text(self, key: str, *, optional: bool = False, default: Any = ...) -> Any:
        value = self.raw(key, default=default)
        if value is None and optional:
            return None
        if not isinstance(value, str):
            raise self.error(key, value, "a string" + (" or null" if optional else ""))
        return value

    def hex_digest(self, key: str, *, optional: bool = True) -> str | None:
        value = self.raw(key, default=None if optional else ...)
        if value is None and optional:
            return None
        if not isinstance(value, str) or not 16 <= len(value) <= 128 or any(c not in "0123456789abcdef" for c in value):
            raise self.error(key, value, "a hex digest" + (" or null" if optional else ""))
        return value

    def build_id(self, key: str) -> str:
        return check_build_id(self.raw(key), f"{self.where}: key '{self.prefix}{key}'")

    def key(self, key: str) -> str:
        return check_key(self.raw(key), f"{self.where}: key '{self.prefix}{key}'")

    def mapping(self, key: str, *, default: Any = ...) -> dict[str, Any]:
        value = self.raw(key, default=default)
        if not isinstance(value, Mapping):
            raise self.error(key, value, "a JSON object")
        return dict(value)

    def items(self, key: str, parse: Callable[[Any, str], T], *, minimum: int = 0) -> list[T]:
        """A list, each item parsed by ``parse(item, "key[i].")``."""
        value = self.raw(key)
        if not isinstance(value, list) or len(value) < minimum:
            raise self.error(key, value, f"a list of at least {minimum} item(s)" if minimum else "a list")
        return [parse(item, f"{self.prefix}{key}[{i}].") for i, item in enumerate(value)]

    def numbers(self, key: str, *, positive: bool = False, optional_items: bool = False) -> list[Any]:
        value = self.raw(key)
        if not isinstance(value, list):
            raise self.error(key, value, "a list of numbers")
        return [
            self._number(f"{key}[{i}]", item, positive=positive, optional=optional_items) for i, item in enumerate(value)
        ]

    def shape(self, key: str, *, optional: bool = False, dims: int | None = None) -> Any:
        value = self.raw(key)
        if value is None and optional:
            return None
        ok = (
            isinstance(value, list)
            and len(value) <= _MAX_DIMS
            and (dims is None or len(value) == dims)
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in value)
        )
        if not ok:
            rank = f"{dims} " if dims is not None else ""
            raise self.error(key, value, f"a shape: a list of {rank}non-negative integers" + (" or null" if optional else ""))
        return [int(n) for n in value]

    def dtype(self, key: str) -> str:
        """A NumPy dtype string in its canonical form (``"<f4"``) of booleans, integers, floats or
        complex numbers: never an object, structured or unsized dtype."""
        value = self.raw(key)
        try:
            dtype = np.dtype(value) if isinstance(value, str) else None
        except (TypeError, ValueError, SyntaxError):
            dtype = None
        if dtype is None or dtype.kind not in _KINDS or dtype.fields is not None or dtype.str != value:
            raise self.error(key, value, "a NumPy dtype string such as '<f4' (numbers only)")
        return value
