"""Batch buffers recycled once nothing outside the pool refers to them.

Fresh memory is slow on a first touch (the kernel zero-fills every page, or a whole
2 MiB huge page at once), and a batch is mostly fresh memory. A :class:`BufferPool`
hands out the arrays of an earlier batch instead, but only once no array, view, tensor
(``torch.from_numpy`` keeps its array alive) or dict outside the pool refers to them any
more. A batch the caller still holds is therefore never overwritten.

The rule rests on CPython's exact reference counts (``sys.getrefcount``) under the
global interpreter lock, the interpreter CI uses. Where counts are not exact (PyPy) or
the GIL is off (free-threaded CPython 3.13t+), the pool never recycles: every batch is
fresh memory, which is slower but always correct.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import numpy as np

__all__ = ["BufferPool"]

Layout = dict[str, tuple[tuple[int, ...], Any]]


def _refcounts(arrays: dict[str, np.ndarray]) -> list[int]:
    return [sys.getrefcount(array) for array in arrays.values()]


def _counts_are_exact() -> bool:
    gil_enabled = getattr(sys, "_is_gil_enabled", lambda: True)()
    return sys.implementation.name == "cpython" and gil_enabled


class BufferPool:
    """Sets of arrays of one layout each, lent out again when they come back unreferenced.

    Parameters
    ----------
    max_sets : int
        Sets kept per layout. When all are in use, :meth:`take` returns fresh arrays that
        the pool does not keep, so a caller holding many batches costs no pooled memory.
    max_layouts : int
        Layouts kept (e.g. batch sizes); the least recently used one is dropped beyond it,
        so the pool's memory stays bounded whatever sizes are asked for.

    Attributes
    ----------
    reused, allocated : int
        How many :meth:`take` calls lent a pooled set, and how many allocated.
    """

    def __init__(self, max_sets: int = 4, max_layouts: int = 4):
        self.max_sets = max_sets
        self.max_layouts = max_layouts
        self.recycles = _counts_are_exact()
        self.reused = 0
        self.allocated = 0
        self._sets: dict[Any, list[tuple[dict[str, np.ndarray], list[int]]]] = {}
        self._lock = threading.Lock()

    def take(self, layout: Layout, key: Any = None) -> dict[str, np.ndarray]:
        """Arrays of ``layout`` (``{name: (shape, dtype)}``), uninitialised: a pooled set that
        nothing refers to any more, a new pooled set, or (pool full) fresh arrays. ``key``
        names the layout (it must then always mean the same layout); by default the
        layout itself is the key."""
        if key is None:
            key = tuple((name, shape, np.dtype(dtype).str) for name, (shape, dtype) in layout.items())
        with self._lock:
            sets = self._sets.pop(key, [])
            self._sets[key] = sets  # most recently used last
            while len(self._sets) > self.max_layouts:
                del self._sets[next(iter(self._sets))]
            for arrays, idle in sets:
                if _refcounts(arrays) == idle:
                    # The new dict holds a reference to every array before the lock is
                    # released, so no other thread can take the same set.
                    self.reused += 1
                    return dict(arrays)
            self.allocated += 1
            arrays = {name: np.empty(shape, dtype) for name, (shape, dtype) in layout.items()}
            if self.recycles and len(sets) < self.max_sets:
                sets.append((arrays, _refcounts(arrays)))
            return dict(arrays)

    def __len__(self) -> int:
        """Pooled sets, over all layouts."""
        return sum(len(sets) for sets in self._sets.values())
