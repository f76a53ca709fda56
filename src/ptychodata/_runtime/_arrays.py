"""Array helpers that NumPy has, at the speed a loader needs."""

from __future__ import annotations

import numpy as np

__all__ = ["sorted_unique"]


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """``np.unique(values)``: the distinct values, ascending, of a flattened integer array.

    By one sort: NumPy 2.3 and later find a plain ``np.unique`` through a hash table, about 40×
    slower for 10⁶ integers (0.6 s against 14 ms), and loaders call this per window and per build.
    """
    ordered = np.sort(np.asarray(values).ravel())
    if len(ordered) < 2:
        return ordered
    keep = np.empty(len(ordered), bool)
    keep[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]
