"""Gathering §7 batches from a store's memory-mapped arrays into (pooled) buffers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ptychodata._runtime import CACHE_BYTES, rows_per_chunk, take_into
from ptychodata.errors import GroupIndexError, ParameterError, StoreError
from ptychodata.patches import extract_patches
from ptychodata.store._batch_schema import DEFAULT_SCHEMA, Layout
from ptychodata.store._buffers import BufferPool
from ptychodata.store._frames import FramesEncoding, decode_into
from ptychodata.store._threads import GatherThreads, default_threads

__all__ = ["BatchGatherer", "BatchSources", "check_batch_indices", "check_out"]

def check_batch_indices(indices: Any, n_groups: int) -> np.ndarray:
    """``indices`` of a batch as (B,) int64 positions in [0, n_groups), negative ones
    counted from the end; ``GroupIndexError`` for anything but a 1-D sequence of ints in
    [-n_groups, n_groups)."""
    index = np.asarray(indices)
    if index.ndim != 1 or not (index.size == 0 or index.dtype.kind in "iu"):
        raise GroupIndexError(f"batch indices must be a 1-D sequence of ints; got shape {index.shape} {index.dtype}")
    index = index.astype(np.int64, copy=False)
    if not index.size:
        return index
    low, high = index.min(), index.max()
    if low < -n_groups or high >= n_groups:
        bad = low if low < -n_groups else high
        raise GroupIndexError(f"group index {bad} out of range for a store of {n_groups} groups")
    return index if low >= 0 else np.where(index < 0, index + n_groups, index)


@dataclass(frozen=True)
class BatchSources:
    """What a batch is gathered from (memory-mapped arrays of one build).

    Attributes
    ----------
    patterns : (M, N, N), stored as ``encoding`` says (float32 amplitudes by default)
    encoding : FramesEncoding
    groups : (B, C) int64; group_experiment : (B,) int64
    centres : (B, 2) float64; relative : (B, C, 2) float64
    x_scale : (E,) float32
    probes : (E, N, N) complex64, or None (a source without a probe)
    masks : (E, N, N) bool, or None (no source with a bad-pixel mask)
    X : (B, C, N, N) float32 or None (materialized stores)
    Y : (M, N, N) complex64 or None (stored patches)
    objects : sequence of (H, W) complex64 or None, one per experiment
    xcoords, ycoords, experiment_of_pattern : (M,)
    """

    patterns: np.ndarray
    encoding: FramesEncoding
    groups: np.ndarray
    group_experiment: np.ndarray
    centres: np.ndarray
    relative: np.ndarray
    x_scale: np.ndarray
    probes: np.ndarray | None
    X: np.ndarray | None
    Y: np.ndarray | None
    objects: Sequence[np.ndarray | None]
    xcoords: np.ndarray
    ycoords: np.ndarray
    experiment_of_pattern: np.ndarray
    start_centres: np.ndarray | None = None
    start_relative: np.ndarray | None = None
    masks: np.ndarray | None = None


class BatchGatherer:
    """Fills §7 batches from :class:`BatchSources`, with recycled buffers and a few threads."""

    def __init__(self, sources: BatchSources, *, sorted_reads: bool = False, threads: int | None = None):
        self.sources = sources
        self.N = int(sources.patterns.shape[-1])
        self.C = int(sources.groups.shape[1])
        self.sorted_reads = sorted_reads
        self.threads = default_threads() if threads is None else max(1, int(threads))
        self.pool = BufferPool()
        self._threads = GatherThreads()

    def layout(self, batch_size: int, *, with_Y: bool = False) -> Layout:
        """Shape and dtype of each array of a §7 batch of ``batch_size`` groups."""
        s = self.sources
        return DEFAULT_SCHEMA.arrays(
            batch_size, self.C, self.N, with_Y=with_Y, probe=s.probes is not None, mask=s.masks is not None
        )

    def thread_count(self, threads: int | None) -> int:
        """Threads a gather uses: ``threads`` (at least 1), default the gatherer's."""
        return self.threads if threads is None else max(1, int(threads))

    def gather(
        self,
        index: np.ndarray,
        *,
        with_Y: bool,
        reuse: bool,
        out: dict[str, np.ndarray] | None,
        threads: int | None,
        group_index: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """The batch of groups ``index`` (int64, checked, within the build's table).
        ``group_index`` is what the batch reports as each group's index (default ``index``)."""
        s = self.sources
        layout = self.layout(len(index), with_Y=with_Y)
        out = self.arrays(layout, ("batch", len(index), with_Y), reuse, out)
        experiment, members = self.members(index, out)
        if s.X is not None:  # materialized: already scaled
            self._take(s.X, index, out["X"])
        else:
            self.gather_scaled(members, experiment, out["X"], self.thread_count(threads))
        out["coords_relative"][:, :, 0, :] = s.relative[index]
        out["coords_offsets"][:, 0, 0, :] = s.centres[index]
        out["group_index"][:] = index if group_index is None else group_index
        for key, per_experiment in (("probe", s.probes), ("mask", s.masks)):
            if per_experiment is None:
                continue
            if len(per_experiment) == 1:
                out[key][:] = per_experiment[0]
            else:
                take_into(per_experiment, experiment, out[key])
        if with_Y:
            self.fill_Y(members, out["Y"])
        return out

    def arrays(self, layout: Layout, key: Any, reuse: bool, out: dict[str, np.ndarray] | None) -> dict:
        """The arrays a batch is gathered into: ``out`` (checked), pooled, or fresh."""
        if out is not None:
            check_out(out, layout)
            return out
        if reuse:
            return self.pool.take(layout, key=key)
        return {name: np.empty(shape, dtype) for name, (shape, dtype) in layout.items()}

    def members(self, index: np.ndarray, out: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Each group's experiment and member indices, written into the batch."""
        s = self.sources
        experiment = take_into(s.group_experiment, index, out["experiment_id"])
        return experiment, take_into(s.groups, index, out["nn_indices"])

    def gather_scaled(
        self, members: np.ndarray, experiment: np.ndarray | None, out: np.ndarray, threads: int
    ) -> None:
        """X = patterns[members] · x_scale[experiment], in cache-sized runs of groups so the
        scaling pass finds the rows it multiplies still in cache; the runs are shared
        among ``threads`` threads (one core alone does not reach the memory bandwidth).
        ``experiment=None``: the raw patterns, unscaled."""
        B, N = out.shape[0], self.N
        s = self.sources
        if not s.encoding.is_identity:
            self._gather_decoded(members, experiment, out, threads)
            return
        if self.sorted_reads:
            self._take(s.patterns, members.reshape(-1), out.reshape(-1, N, N))
            if experiment is None:
                return
        step = rows_per_chunk(out[:1].nbytes, CACHE_BYTES)

        def fill(first: int, stop: int) -> None:
            for start in range(first, stop, step):
                rows = out[start : min(start + step, stop)]
                if not self.sorted_reads:
                    take_into(s.patterns, members[start : start + len(rows)].reshape(-1), rows.reshape(-1, N, N))
                if experiment is None:
                    continue
                if len(s.x_scale) == 1:
                    rows *= s.x_scale[0]
                else:
                    rows *= s.x_scale[experiment[start : start + len(rows)]][:, None, None, None]

        self._threads.share(fill, B, step, out.nbytes, threads)

    def _gather_decoded(
        self, members: np.ndarray, experiment: np.ndarray | None, out: np.ndarray, threads: int
    ) -> None:
        """X of a compact or counts store: per cache-sized run of groups, gather the stored
        rows into a small scratch buffer, then convert them into ``out`` while they are
        still in cache, the §5 scale fused into the conversion (sqrt for counts, widening
        for float16, a shift for bfloat16; :func:`~ptychodata.store._frames.decode_into`),
        so the batch is float32 X exactly as the contract says. ``experiment=None``: the
        raw amplitudes, unscaled."""
        B, C, N = out.shape[0], self.C, self.N
        s = self.sources
        stored = s.patterns
        if self.sorted_reads:  # read in file order into one scratch, convert in batch order below
            stored = self.pool.take({"sorted": ((B * C, N, N), stored.dtype)})["sorted"]
            self._take(s.patterns, members.reshape(-1), stored)
        step = rows_per_chunk(out[:1].nbytes, CACHE_BYTES)

        def scale_of(start: int, n_rows: int) -> np.float32 | np.ndarray | None:
            """The scale of rows [start·C, start·C + n_rows) of the batch (None: unscaled)."""
            if experiment is None:
                return None
            if len(s.x_scale) == 1:
                return s.x_scale[0]
            return np.repeat(s.x_scale[experiment[start : start + n_rows // C]], C)[:, None, None]

        def fill(first: int, stop: int) -> None:
            scratch = np.empty((step * C, N, N), s.patterns.dtype)
            for start in range(first, stop, step):
                rows = out[start : min(start + step, stop)].reshape(-1, N, N)
                if self.sorted_reads:
                    raw = stored[start * C : start * C + len(rows)]
                else:
                    raw = scratch[: len(rows)]
                    take_into(stored, members[start : start + len(rows) // C].reshape(-1), raw)
                decode_into(s.encoding, raw, rows, scale_of(start, len(rows)))

        self._threads.share(fill, B, step, out.nbytes, threads)

    def close(self) -> None:
        self._threads.close()

    def _take(self, source: np.ndarray, index: np.ndarray, out: np.ndarray) -> None:
        """``out[:] = source[index]`` in one vectorised gather into an existing buffer.

        With ``sorted_reads`` the rows are read in ascending order into a scratch buffer
        and then put back in the requested order.
        """
        if not self.sorted_reads:
            take_into(source, index, out)
            return
        order = np.argsort(index, kind="stable")
        scratch = self.pool.take({"scratch": (out.shape, out.dtype)})["scratch"]
        take_into(source, index[order], scratch)
        out[order] = scratch

    def fill_Y(self, members: np.ndarray, out: np.ndarray) -> None:
        """Ground-truth patches of ``members`` (any shape of pattern indices) into ``out``
        (the same shape + (N, N)): stored patches, or cut from each experiment's object."""
        s = self.sources
        flat_members = members.reshape(-1)
        flat_out = out.reshape(-1, self.N, self.N)
        if s.Y is not None:
            self._take(s.Y, flat_members, flat_out)
            return
        experiment_of = s.experiment_of_pattern[flat_members]
        for experiment in np.unique(experiment_of):
            obj = s.objects[experiment]
            if obj is None:
                raise StoreError(f"experiment {experiment} has no object, so no ground-truth Y")
            rows = np.flatnonzero(experiment_of == experiment)
            points = flat_members[rows]
            flat_out[rows] = extract_patches(obj, s.xcoords[points], s.ycoords[points], self.N)


def check_out(out: Any, layout: Layout) -> None:
    """Refuse ``out`` arrays a gather could not fill in place (wrong key, shape, dtype, a
    non-contiguous or read-only view): a reshape of such a view would be a copy, and the
    batch would silently stay unfilled."""
    if not isinstance(out, dict):
        raise ParameterError(f"out must be a dict of arrays with keys {sorted(layout)}; got {type(out).__name__}")
    for key, (shape, dtype) in layout.items():
        array = out.get(key)
        if not isinstance(array, np.ndarray):
            raise ParameterError(f"out[{key!r}]: missing or not a NumPy array; expected shape {shape}, dtype {np.dtype(dtype)}")
        if array.shape != shape or array.dtype != dtype:
            raise ParameterError(
                f"out[{key!r}]: shape {array.shape}, dtype {array.dtype}; expected shape {shape}, dtype {np.dtype(dtype)}"
            )
        if not array.flags.c_contiguous:
            raise ParameterError(f"out[{key!r}]: not C-contiguous (strides {array.strides}); pass contiguous arrays")
        if not array.flags.writeable:
            raise ParameterError(f"out[{key!r}]: read-only; pass writable arrays")
