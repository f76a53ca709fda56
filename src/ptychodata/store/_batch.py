"""Gathering §7 batches from a store's memory-mapped arrays into (pooled) buffers."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from ptychodata._runtime import rows_per_chunk, usable_cores
from ptychodata.errors import ParameterError, StoreError
from ptychodata.patches import extract_patches
from ptychodata.store._buffers import BufferPool
from ptychodata.store._frames import FramesEncoding, decode_into

__all__ = [
    "LAYOUTS",
    "BatchGatherer",
    "BatchSources",
    "PtychoTorchConstants",
    "batch_layout",
    "default_threads",
    "ptycho_torch_layout",
]

_CACHE_BYTES = 512 << 10
_MIN_THREAD_BYTES = 1 << 20  # less per thread and the hand-off costs what the thread saves

Layout = dict[str, tuple[tuple[int, ...], type]]


def default_threads() -> int:
    """Usable cores, at most 4."""
    return max(1, min(4, usable_cores()))


def batch_layout(
    batch_size: int, C: int, N: int, *, with_Y: bool = False, probe: bool = True, mask: bool = False
) -> Layout:
    """Shape and dtype of each array of a batch of ``batch_size`` groups (§7): ``probe``
    only for stores with a probe for every experiment, ``mask`` for stores with a
    bad-pixel mask."""
    B = batch_size
    layout = {
        "X": ((B, C, N, N), np.float32),
        "coords_relative": ((B, C, 1, 2), np.float32),
        "coords_offsets": ((B, 1, 1, 2), np.float32),
        "nn_indices": ((B, C), np.int64),
        "group_index": ((B,), np.int64),
        "experiment_id": ((B,), np.int64),
    }
    if probe:
        layout["probe"] = ((B, N, N), np.complex64)
    if mask:
        layout["mask"] = ((B, N, N), np.bool_)
    if with_Y:
        layout["Y"] = ((B, C, N, N), np.complex64)
    return layout


LAYOUTS = ("default", "ptycho_torch")


def ptycho_torch_layout(batch_size: int, C: int, N: int, *, with_Y: bool = False) -> Layout:
    """Shape and dtype of each array of a ptycho_torch batch of ``batch_size`` groups.

    The arrays of ptycho_torch's ``PtychoDataset`` batch, flat: ``images`` (B, C, N, N)
    raw amplitudes; ``coords_global``, ``coords_relative``, ``coords_start_relative``
    (B, C, 1, 2); ``coords_center``, ``coords_start_center`` (B, 1, 1, 2); ``nn_indices``
    (B, C); ``experiment_id`` (B,); ``rms_scaling_constant``, ``physics_scaling_constant``
    and ``probe_scaling`` (B, 1, 1, 1); ``probe`` (B, 1, 1, N, N) (one probe mode, not yet
    repeated over the C channels); ``label_amp`` and ``label_phase`` (B, C, N, N) with Y.
    """
    B = batch_size
    layout = {
        "images": ((B, C, N, N), np.float32),
        "coords_global": ((B, C, 1, 2), np.float32),
        "coords_center": ((B, 1, 1, 2), np.float32),
        "coords_relative": ((B, C, 1, 2), np.float32),
        "coords_start_center": ((B, 1, 1, 2), np.float32),
        "coords_start_relative": ((B, C, 1, 2), np.float32),
        "nn_indices": ((B, C), np.int64),
        "experiment_id": ((B,), np.int64),
        "rms_scaling_constant": ((B, 1, 1, 1), np.float32),
        "physics_scaling_constant": ((B, 1, 1, 1), np.float32),
        "probe": ((B, 1, 1, N, N), np.complex64),
        "probe_scaling": ((B, 1, 1, 1), np.float32),
    }
    if with_Y:
        layout["label_amp"] = ((B, C, N, N), np.float32)
        layout["label_phase"] = ((B, C, N, N), np.float32)
    return layout


@dataclass(frozen=True)
class PtychoTorchConstants:
    """ptycho_torch's per-experiment constants of a store (E experiments).

    Attributes
    ----------
    rms_scaling_constant : (E,) float32
        sqrt(N² / mean over all of the experiment's patterns of Σ A²).
    physics_scaling_constant : (E,) float32
        1 / mean over all of the experiment's patterns of Σ A.
    probe : (E, N, N) complex64
        Each experiment's probe normalised by ptycho_torch's rule
        (:func:`~ptychodata.normalize.normalize_probe` with ``rule="ptycho_torch"``).
    probe_scaling : (E,) float32
        1 / the factor the probe was divided by (ptycho_torch's ``probe_scaling``).
    probe_scale : float
        The ``probe_scale`` used.
    """

    rms_scaling_constant: np.ndarray
    physics_scaling_constant: np.ndarray
    probe: np.ndarray
    probe_scaling: np.ndarray
    probe_scale: float


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
    objects : list of (H, W) complex64 or None, one per experiment
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
    objects: list[np.ndarray | None]
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
        self._executor: ThreadPoolExecutor | None = None
        self._executor_key = (0, 0)  # (process id, threads) it was made for
        self._executor_lock = threading.Lock()

    def layout(self, batch_size: int, *, with_Y: bool = False) -> Layout:
        s = self.sources
        return batch_layout(
            batch_size, self.C, self.N, with_Y=with_Y, probe=s.probes is not None, mask=s.masks is not None
        )

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
        out = self._arrays(layout, ("batch", len(index), with_Y), reuse, out)
        experiment, members = self._members(index, out)
        threads = self.threads if threads is None else max(1, int(threads))
        if s.X is not None:  # materialized: already scaled
            self._take(s.X, index, out["X"])
        else:
            self._gather_scaled(members, experiment, out["X"], threads)
        out["coords_relative"][:, :, 0, :] = s.relative[index]
        out["coords_offsets"][:, 0, 0, :] = s.centres[index]
        out["group_index"][:] = index if group_index is None else group_index
        for key, per_experiment in (("probe", s.probes), ("mask", s.masks)):
            if per_experiment is None:
                continue
            if len(per_experiment) == 1:
                out[key][:] = per_experiment[0]
            else:
                np.take(per_experiment, experiment, axis=0, out=out[key])
        if with_Y:
            self.fill_Y(members, out["Y"])
        return out

    def gather_ptycho_torch(
        self,
        index: np.ndarray,
        constants: PtychoTorchConstants,
        *,
        with_Y: bool,
        reuse: bool,
        out: dict[str, np.ndarray] | None,
        threads: int | None,
    ) -> dict[str, np.ndarray]:
        """The ptycho_torch batch (:func:`ptycho_torch_layout`) of groups ``index`` (int64,
        checked, within the build's table), per-experiment values taken from ``constants``."""
        s = self.sources
        if s.start_centres is None or s.start_relative is None:
            raise StoreError("this build has no start (nominal) group coordinates; prepare the store again")
        if len(constants.probe) != len(s.x_scale) or constants.probe.shape[1:] != (self.N, self.N):
            raise ParameterError(
                f"constants hold {len(constants.probe)} probes of shape {constants.probe.shape[1:]}; "
                f"expected "
                f"{len(s.x_scale)} of shape {(self.N, self.N)} (from this store's ptycho_torch_constants())"
            )
        B = len(index)
        layout = ptycho_torch_layout(B, self.C, self.N, with_Y=with_Y)
        out = self._arrays(layout, ("ptycho_torch", B, with_Y), reuse, out)
        experiment, members = self._members(index, out)
        threads = self.threads if threads is None else max(1, int(threads))
        self._gather_scaled(members, None, out["images"], threads)
        out["coords_global"][:, :, 0, 0] = s.xcoords[members]
        out["coords_global"][:, :, 0, 1] = s.ycoords[members]
        out["coords_center"][:, 0, 0, :] = s.centres[index]
        out["coords_relative"][:, :, 0, :] = s.relative[index]
        out["coords_start_center"][:, 0, 0, :] = s.start_centres[index]
        out["coords_start_relative"][:, :, 0, :] = s.start_relative[index]
        for key in ("rms_scaling_constant", "physics_scaling_constant", "probe_scaling"):
            np.take(getattr(constants, key), experiment, out=out[key].reshape(B))
        np.take(constants.probe, experiment, axis=0, out=out["probe"].reshape(B, self.N, self.N))
        if with_Y:
            Y = self.pool.take({"Y": ((B, self.C, self.N, self.N), np.complex64)}, key=("label_Y", B))["Y"]
            self.fill_Y(members, Y)
            np.abs(Y, out=out["label_amp"])
            np.arctan2(Y.imag, Y.real, out=out["label_phase"])
        return out

    def _arrays(self, layout: Layout, key: Any, reuse: bool, out: dict[str, np.ndarray] | None) -> dict:
        """The arrays a batch is gathered into: ``out`` (checked), pooled, or fresh."""
        if out is not None:
            check_out(out, layout)
            return out
        if reuse:
            return self.pool.take(layout, key=key)
        return {name: np.empty(shape, dtype) for name, (shape, dtype) in layout.items()}

    def _members(self, index: np.ndarray, out: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Each group's experiment and member indices, written into the batch."""
        s = self.sources
        experiment = np.take(s.group_experiment, index, out=out["experiment_id"])
        return experiment, np.take(s.groups, index, axis=0, out=out["nn_indices"])

    def _gather_scaled(
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
        step = rows_per_chunk(out[:1].nbytes, _CACHE_BYTES)

        def fill(first: int, stop: int) -> None:
            for start in range(first, stop, step):
                rows = out[start : min(start + step, stop)]
                if not self.sorted_reads:
                    np.take(s.patterns, members[start : start + len(rows)].reshape(-1), axis=0,
                            out=rows.reshape(-1, N, N))
                if experiment is None:
                    continue
                if len(s.x_scale) == 1:
                    rows *= s.x_scale[0]
                else:
                    rows *= s.x_scale[experiment[start : start + len(rows)]][:, None, None, None]

        self._share(fill, B, step, out.nbytes, threads)

    def _share(self, fill, B: int, step: int, nbytes: int, threads: int) -> None:
        """Run ``fill(first, stop)`` over [0, B) in runs of ``step`` groups, split among up
        to ``threads`` threads when the batch is large enough to pay for the hand-off."""
        parts = min(threads, -(-B // step), max(1, nbytes // _MIN_THREAD_BYTES))
        if parts <= 1:
            fill(0, B)
            return
        bounds = [round(B * part / parts / step) * step for part in range(parts)] + [B]
        executor = self._thread_pool(parts - 1)
        pending = [executor.submit(fill, bounds[part], bounds[part + 1]) for part in range(1, parts)]
        fill(bounds[0], bounds[1])
        for future in pending:
            future.result()

    def _gather_decoded(self, members: np.ndarray, experiment: np.ndarray, out: np.ndarray, threads: int) -> None:
        """X of a compact or counts store: per cache-sized run of groups, gather the stored
        rows into a small scratch buffer, then convert them into ``out`` while they are
        still in cache, the §5 scale fused into the conversion (sqrt for counts, widening
        for float16, a shift for bfloat16; :func:`~ptychodata.store._frames.decode_into`),
        so the batch is float32 X exactly as the contract says."""
        B, C, N = out.shape[0], self.C, self.N
        s = self.sources
        stored = s.patterns
        if self.sorted_reads:  # read in file order into one scratch, convert in batch order below
            stored = self.pool.take({"sorted": ((B * C, N, N), stored.dtype)})["sorted"]
            self._take(s.patterns, members.reshape(-1), stored)
        step = rows_per_chunk(out[:1].nbytes, _CACHE_BYTES)
        one_scale = s.x_scale[0] if len(s.x_scale) == 1 else None

        def fill(first: int, stop: int) -> None:
            scratch = np.empty((step * C, N, N), s.patterns.dtype)
            for start in range(first, stop, step):
                rows = out[start : min(start + step, stop)].reshape(-1, N, N)
                if self.sorted_reads:
                    raw = stored[start * C : start * C + len(rows)]
                else:
                    raw = scratch[: len(rows)]
                    np.take(stored, members[start : start + len(rows) // C].reshape(-1), axis=0, out=raw)
                if one_scale is not None:
                    scale = one_scale
                else:
                    scale = np.repeat(s.x_scale[experiment[start : start + len(rows) // C]], C)[:, None, None]
                decode_into(s.encoding, raw, rows, scale)

        self._share(fill, B, step, out.nbytes, threads)

    def _thread_pool(self, workers: int) -> ThreadPoolExecutor:
        """The gather threads, made again in a forked child (threads do not survive fork).

        A pool too small for ``workers`` is replaced, never shut down: another thread may
        be submitting to it at this moment; its idle threads end when it is collected.
        """
        with self._executor_lock:
            pid, size = self._executor_key
            if self._executor is None or pid != os.getpid() or size < workers:
                self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ptychodata-gather")
                self._executor_key = (os.getpid(), workers)
            return self._executor

    def close(self) -> None:
        with self._executor_lock:
            if self._executor is not None and self._executor_key[0] == os.getpid():
                self._executor.shutdown(wait=True)
            self._executor = None

    def _take(self, source: np.ndarray, index: np.ndarray, out: np.ndarray) -> None:
        """``out[:] = source[index]`` in one vectorised gather into an existing buffer.

        With ``sorted_reads`` the rows are read in ascending order into a scratch buffer
        and then put back in the requested order.
        """
        if not self.sorted_reads:
            np.take(source, index, axis=0, out=out)
            return
        order = np.argsort(index, kind="stable")
        scratch = self.pool.take({"scratch": (out.shape, out.dtype)})["scratch"]
        np.take(source, index[order], axis=0, out=scratch)
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
