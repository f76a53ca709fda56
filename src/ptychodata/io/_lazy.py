"""Patterns read lazily: a :class:`DetectorSteps` applied on each read, whole HDF5 chunks at a time."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from ptychodata.errors import ScanDataError
from ptychodata.io._detector import DetectorSteps

__all__ = ["LazyPatterns"]

_READ_BYTES = 32 << 20


class LazyPatterns:
    """Prepared patterns (M, N, N), float32 (or integers kept, see :meth:`keeping_integers`),
    read from ``raw`` and prepared on each read.

    ``raw`` is any row-sliceable array (an :class:`~ptychodata.io._hdf5.H5Dataset`, a
    memmap, an ndarray). Reads are widened to whole HDF5 chunks, and the decoded rows past
    the request are kept for the next read, so a sequential reader (``iter_rows``) decodes
    every chunk once whatever its step. Pickles by reference when ``raw`` does.

    Attributes
    ----------
    shape : tuple (M, N, N)
    dtype : numpy.dtype
        float32, or the raw integer dtype when integers are kept.
    rows_per_read : int
        A good number of rows for sequential reads: whole chunks, about 32 MiB.
    """

    def __init__(self, raw: Any, detector: DetectorSteps, *, where: str = ""):
        self.raw, self.detector, self.where = raw, detector, where
        N = detector.N
        self.shape = (int(raw.shape[0]), N, N)
        self.dtype = detector.output_dtype(raw.dtype)
        self._tail: tuple[int, np.ndarray] | None = None
        self._ahead: tuple[int, Any] | None = None  # (first row, future of the raw block read ahead)
        self._reader: Any = None  # one background thread, created on the first sequential read
        self._last_stop: int | None = None
        chunk_rows = int(getattr(raw, "rows_per_chunk", 1))
        frame_bytes = int(np.prod(raw.shape[1:])) * np.dtype(raw.dtype).itemsize
        self.rows_per_read = max(chunk_rows, (_READ_BYTES // max(1, frame_bytes)) // chunk_rows * chunk_rows)

    ndim = 3
    # Every read returns a new array that nothing else references: callers need not copy it.
    returns_fresh_arrays = True
    returns_copies = True

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    @property
    def mask(self) -> np.ndarray | None:
        return self.detector.mask

    def __len__(self) -> int:
        return self.shape[0]

    def keeping_integers(self) -> LazyPatterns:
        """The same patterns with integer frames kept in their own dtype where nothing
        needs float32 (:attr:`DetectorSteps.keep_integers`)."""
        return LazyPatterns(self.raw, replace(self.detector, keep_integers=True), where=self.where)

    def __repr__(self) -> str:
        return f"LazyPatterns(shape={self.shape}, source={self.where or self.raw!r}, steps={self.detector.steps()})"

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_tail"] = state["_ahead"] = state["_reader"] = state["_last_stop"] = None
        return state

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype, copy=False)

    def __getitem__(self, key: Any) -> np.ndarray:
        M = self.shape[0]
        if isinstance(key, tuple):
            first, rest = (key[0], key[1:]) if key else (slice(None), ())
            return self[first][(slice(None), *rest)] if not np.isscalar(first) else self[first][rest]
        if isinstance(key, (int, np.integer)):
            index = int(key) + M if key < 0 else int(key)
            if not 0 <= index < M:
                raise IndexError(f"pattern {key} out of range for {M} patterns")
            return self._rows(index, index + 1)[0]
        if isinstance(key, slice):
            start, stop, step = key.indices(M)
            if step == 1:
                return self._rows(start, max(start, stop))
            key = np.arange(start, stop, step)
        indices = np.asarray(key)
        if indices.dtype == bool:
            indices = np.flatnonzero(indices)
        indices = np.where(indices < 0, indices + M, indices).astype(np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= M):
            raise IndexError(f"pattern index out of range for {M} patterns")
        unique, inverse = np.unique(indices, return_inverse=True)
        if isinstance(self.raw, np.ndarray):
            raw = self.raw[unique]
        else:  # one read per HDF5 chunk touched, never one per row
            chunk = int(getattr(self.raw, "rows_per_chunk", 1))
            raw = np.empty((len(unique), *self.raw.shape[1:]), self.raw.dtype)
            blocks = unique // chunk
            starts = np.flatnonzero(np.r_[True, blocks[1:] != blocks[:-1]])
            for first, stop in zip(starts, np.r_[starts[1:], len(unique)]):
                block_start = int(blocks[first]) * chunk
                block = np.asarray(self.raw[block_start : min(M, block_start + chunk)])
                raw[first:stop] = block[unique[first:stop] - block_start]
        return self._apply(raw, 0)[inverse.reshape(indices.shape)]

    def _rows(self, start: int, stop: int) -> np.ndarray:
        """Prepared rows [start, stop): whole chunks read, the rest kept, the next block read ahead.

        When reads are sequential (each starts where the last stopped), the next block of the
        same size is read in a background thread while this one is prepared and consumed:
        HDF5 decompression overlaps the NumPy work (which releases the GIL) and the caller's
        writing. At most one block is read ahead and one partial block kept.
        """
        if stop <= start:
            return np.empty((0, *self.shape[1:]), self.dtype)
        sequential = self._last_stop is None and start == 0 or self._last_stop == start
        self._last_stop = stop
        chunk = int(getattr(self.raw, "rows_per_chunk", 1))
        parts, position, block_end = [], start, None
        if self._tail is not None:
            tail_start, tail = self._tail
            if tail_start <= position < tail_start + len(tail):
                take = min(stop, tail_start + len(tail))
                parts.append(tail[position - tail_start : take - tail_start])
                self._tail = (take, tail[take - tail_start :]) if take < tail_start + len(tail) else None
                position = take
        while position < stop:
            block_start, block = self._block(position, stop, chunk)
            block_end = block_start + len(block)
            take = min(stop, block_end)
            parts.append(block[position - block_start : take - block_start])
            self._tail = (take, block[take - block_start :]) if block_end > take else None
            position = take
        if (
            sequential
            and block_end is not None
            and block_end < self.shape[0]
            and not isinstance(self.raw, np.ndarray)
        ):
            span = max(chunk, -(-(stop - start) // chunk) * chunk)
            self._read_ahead(block_end, min(self.shape[0], block_end + span))
        raw = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return self._apply(raw, start)

    def _block(self, position: int, stop: int, chunk: int) -> tuple[int, np.ndarray]:
        """A raw block that starts at or before ``position``: the one read ahead, else read now."""
        if self._ahead is not None:
            ahead_start, future = self._ahead
            self._ahead = None
            block = future.result()
            if ahead_start <= position < ahead_start + len(block):
                return ahead_start, block
        aligned_start = position // chunk * chunk
        aligned_stop = min(self.shape[0], -(-stop // chunk) * chunk)
        return aligned_start, np.asarray(self.raw[aligned_start:aligned_stop])

    def _read_ahead(self, start: int, stop: int) -> None:
        if self._reader is None:
            from concurrent.futures import ThreadPoolExecutor

            self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ptychodata-read-ahead")
        self._ahead = (start, self._reader.submit(lambda: np.asarray(self.raw[start:stop])))

    def _apply(self, raw: np.ndarray, first: int) -> np.ndarray:
        try:
            return self.detector.apply(raw, first)
        except ScanDataError as exc:
            raise ScanDataError(f"{self.where}{exc}") from None
