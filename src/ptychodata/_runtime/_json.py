"""JSON-safe values: the one sanitiser for metadata, descriptions and manifests."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

import numpy as np


def jsonable(value: Any) -> Any:
    """``value`` with NumPy scalars and arrays, tuples, paths and mappings made plain JSON values.

    Parameters
    ----------
    value : Any
        Nested mappings, sequences, NumPy scalars or arrays, paths, numbers and strings.

    Returns
    -------
    Any
        The same structure of ``dict`` (string keys), ``list``, ``str``, ``int``, ``float``, ``bool``
        and ``None``. Non-finite floats stay floats (``json.dumps`` writes them as ``NaN``/``Infinity``).

    Raises
    ------
    TypeError
        For a value that has no JSON form (an object, bytes, a complex number).
    """
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, np.dtype) or (isinstance(value, type) and issubclass(value, np.generic)):
        return np.dtype(value).str
    raise TypeError(f"{value!r} ({type(value).__name__}) has no JSON form")


def canonical_json(value: Any) -> str:
    """``value`` as compact JSON with sorted keys: equal values give equal text (for keys and hashes)."""
    return json.dumps(jsonable(value), sort_keys=True, separators=(",", ":"))

