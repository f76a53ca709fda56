"""Reading memory-mapped arrays without letting them fill this process's resident memory, and
the machine budgets that size chunks and thread pools."""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Iterator

import numpy as np

__all__ = ["is_memory_mapped", "iter_rows", "release_pages", "rows_per_chunk", "usable_cores"]


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the system tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def rows_per_chunk(row_bytes: int, budget_bytes: int) -> int:
    """How many rows of ``row_bytes`` each fit in ``budget_bytes`` (at least one)."""
    return max(1, int(budget_bytes) // max(1, int(row_bytes)))


def iter_rows(array: np.ndarray, rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start, copy of array[start:start + rows])`` along the first axis.

    Sources marked ``returns_copies`` (lazy pattern sources, whose every read is a new
    array) are not copied again.

    For a memmap, the pages just read are dropped from this process's mapping after
    each copy (see :func:`release_pages`), so reading a file of any size through a
    memmap leaves resident memory at about one chunk.
    """
    fresh = getattr(array, "returns_copies", False)  # a lazy source hands out new arrays: no second copy
    for start in range(0, array.shape[0], rows):
        chunk = array[start : start + rows]
        yield start, chunk if fresh else np.array(chunk)
        release_pages(array)


def release_pages(array: np.ndarray) -> None:
    """Drop a memmap's pages from this process's resident set (``MADV_DONTNEED``).

    The data stays in the OS page cache, so the next read is still fast; only this
    process's RSS shrinks. A no-op for arrays that are not memory-mapped.
    """
    mapping = _backing_mmap(array)
    if mapping is not None:
        with contextlib.suppress(ValueError, OSError):
            mapping.madvise(mmap.MADV_DONTNEED)


def is_memory_mapped(array: np.ndarray) -> bool:
    """Whether ``array`` (or the array it is a view of) reads a memory-mapped file."""
    return _backing_mmap(array) is not None


def _backing_mmap(array: np.ndarray) -> mmap.mmap | None:
    base = array
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "_mmap", None) or getattr(base, "base", None)
    return base
