"""An opened store: memory-mapped frames plus one grouping, served as batches.

Opening maps files and reads only the manifests and ``.npy`` headers, so it takes
milliseconds whatever the size. A ``Store`` pickles by path (a recipe, not its data),
so a DataLoader worker re-opens the memmaps instead of receiving copies.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ptychodata.coords import grouped_coords
from ptychodata.errors import StoreError
from ptychodata.grouped import PtychoDataContainer, gather_channels_last
from ptychodata.patches import extract_patches
from ptychodata.store._buffers import BufferPool
from ptychodata.store._manifest import FrameManifest, GroupingManifest, check_files, read_manifest
from ptychodata.store._split import StoreView, split_groups

__all__ = ["Store", "open_store"]

_CACHE_BYTES = 512 << 10
_MIN_THREAD_BYTES = 1 << 20  # less per thread and the hand-off costs what the thread saves


def open_store(path: str | os.PathLike, *, sorted_reads: bool = False, threads: int | None = None) -> Store:
    """Open a prepared store: a grouping directory, or a frame store holding exactly one grouping.

    ``sorted_reads=True`` makes batches read patterns in ascending file order (then put
    them back in the requested order): better on spinning disks and network file systems,
    about 10-40 % slower from the page cache, where the plain gather is at the in-RAM bound.
    ``threads`` (default: the usable cores, at most 4) share each batch's gather.
    """
    path = Path(path).expanduser()
    if (path / "groupings").is_dir():
        candidates = sorted(p for p in (path / "groupings").iterdir() if (p / "manifest.json").exists())
        if len(candidates) != 1:
            names = ", ".join(p.name for p in candidates) or "none"
            raise StoreError(
                f"{path}: a frame store with {len(candidates)} groupings ({names}); open one of them"
            )
        path = candidates[0]
    return Store(path, sorted_reads=sorted_reads, threads=threads)


def _default_threads() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(4, cores))


class Store:
    """A prepared store (frames + one grouping), opened read-only.

    ``len(store)`` is the number of groups B. ``store.batch(indices)`` gathers groups into
    the channels-first torch-batch layout of the contract (§7) as NumPy arrays.
    """

    def __init__(self, path: str | os.PathLike, *, sorted_reads: bool = False, threads: int | None = None):
        self.path = Path(path).expanduser().resolve()
        self.sorted_reads = sorted_reads
        self.threads = _default_threads() if threads is None else max(1, int(threads))
        self.grouping = read_manifest(self.path, GroupingManifest)
        self.frames_path = self.path.parent.parent
        self.frames = read_manifest(self.frames_path, FrameManifest)
        if self.grouping.frames_key != self.frames.key:
            raise StoreError(
                f"{self.path}: grouping belongs to frames {self.grouping.frames_key}, "
                f"not to {self.frames_path} ({self.frames.key})"
            )
        check_files(self.frames_path, self.frames.files)
        check_files(self.path, self.grouping.files)
        self._frames = {name[:-4]: self._map(self.frames_path / name) for name in self.frames.files}
        self._groups = {name[:-4]: self._map(self.path / name) for name in self.grouping.files}
        self._x_scale = np.asarray(self.grouping.x_scale, np.float32)
        self._pool = BufferPool()
        self._executor: ThreadPoolExecutor | None = None
        self._executor_key = (0, 0)  # (process id, threads) it was made for
        self._executor_lock = threading.Lock()

    def _map(self, path: Path) -> np.ndarray:
        # A plain ndarray view of the memmap: same pages, without np.memmap's per-call overhead.
        try:
            return np.load(path, mmap_mode="r").view(np.ndarray)
        except (ValueError, OSError) as exc:
            raise StoreError(f"{path}: unreadable store file ({exc}); prepare the store again") from exc

    # ------------------------------------------------------------------ pickling by recipe
    def __getstate__(self) -> dict[str, Any]:
        return {"path": str(self.path), "sorted_reads": self.sorted_reads, "threads": self.threads}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], sorted_reads=state["sorted_reads"], threads=state.get("threads"))

    # ------------------------------------------------------------------ sizes
    def __len__(self) -> int:
        return self.grouping.n_groups

    @property
    def N(self) -> int:
        return self.frames.N

    @property
    def C(self) -> int:
        return self.grouping.C

    @property
    def n_experiments(self) -> int:
        return len(self.frames.experiments)

    @property
    def has_ground_truth(self) -> bool:
        """Whether Y can be served: stored patches, or an object for every experiment."""
        return "Y" in self._frames or all(e.object_shape is not None for e in self.frames.experiments)

    def object(self, experiment: int = 0) -> np.ndarray | None:
        """The (H, W) complex64 object of an experiment (memory-mapped), or None."""
        return self._frames.get(f"object_{experiment}")

    def probe(self, experiment: int = 0) -> np.ndarray:
        """The (N, N) complex64 probe of an experiment."""
        return self._frames["probes"][experiment]

    @property
    def positions(self) -> np.ndarray:
        """Scan positions of every pattern, (M_total, 2) float64, columns (x, y) in object pixels."""
        return np.stack([self._frames["xcoords"], self._frames["ycoords"]], axis=1)

    @property
    def x_scale(self) -> list[float]:
        """The §5 scale factor of each experiment."""
        return list(self.grouping.x_scale)

    def array(self, name: str) -> np.ndarray:
        """A stored array by file stem (e.g. ``"patterns"``, ``"groups"``), memory-mapped."""
        if name in self._groups:
            return self._groups[name]
        return self._frames[name]

    # ------------------------------------------------------------------ batches
    def batch(
        self,
        indices: Any,
        *,
        with_Y: bool = False,
        reuse: bool = True,
        out: dict[str, np.ndarray] | None = None,
        threads: int | None = None,
    ) -> dict[str, np.ndarray]:
        """Gather groups ``indices`` into a §7 batch (channels-first NumPy arrays).

        Parameters
        ----------
        indices : sequence of int, shape (B,)
            Group indices, in the order the batch should have.
        with_Y : bool
            Add ground-truth patches ``Y`` (B, C, N, N) complex64.
        reuse : bool
            Fill the arrays of an earlier batch that nothing refers to any more (no array,
            view, dict or ``torch.from_numpy`` tensor of it is alive), which skips the
            page faults of fresh memory; a batch still held is never overwritten.
            ``False`` always allocates.
        out : dict of ndarray, optional
            Arrays to fill instead (shapes and dtypes of :meth:`batch_layout`), e.g. views
            of shared-memory tensors; ``reuse`` is then ignored.
        threads : int, optional
            Threads sharing the pattern gather (NumPy copies without the GIL); default
            the store's ``threads``. Pass 1 where processes already use every core.

        Returns
        -------
        dict
            ``X`` (B, C, N, N) float32 normalised; ``coords_relative`` (B, C, 1, 2) and
            ``coords_offsets`` (B, 1, 1, 2) float32 with last axis (x, y); ``nn_indices``
            (B, C) int64 (pattern indices in the store); ``group_index``,
            ``experiment_id`` (B,) int64; ``probe`` (B, N, N) complex64; ``Y`` if asked.
        """
        index = self._check_indices(indices)
        B = len(index)
        layout = self.batch_layout(B, with_Y=with_Y)
        if out is None:
            if reuse:
                out = self._pool.take(layout, key=("batch", B, with_Y))
            else:
                out = {key: np.empty(shape, dtype) for key, (shape, dtype) in layout.items()}
        else:
            for key, (shape, dtype) in layout.items():
                if key not in out or out[key].shape != shape or out[key].dtype != dtype:
                    raise ValueError(f"out[{key!r}] must be an array of shape {shape} and dtype {np.dtype(dtype)}")
        experiment = np.take(self._groups["group_experiment"], index, out=out["experiment_id"])
        members = np.take(self._groups["groups"], index, axis=0, out=out["nn_indices"])
        threads = self.threads if threads is None else max(1, int(threads))
        if "X" in self._groups:  # materialized: already scaled
            self._take(self._groups["X"], index, out["X"])
        else:
            self._gather_scaled(members, experiment, out["X"], threads)
        out["coords_relative"][:, :, 0, :] = self._groups["coords_relative"][index]
        out["coords_offsets"][:, 0, 0, :] = self._groups["coords_offsets"][index]
        out["group_index"][:] = index
        self._fill_probes(experiment, out["probe"])
        if with_Y:
            self._fill_Y(members, out["Y"])
        return out

    def _gather_scaled(self, members: np.ndarray, experiment: np.ndarray, out: np.ndarray, threads: int) -> None:
        """X = patterns[members] · x_scale[experiment], in cache-sized runs of groups so the
        scaling pass finds the rows it multiplies still in cache; the runs are shared
        among ``threads`` threads (one core alone does not reach the memory bandwidth)."""
        B, C, N = out.shape[0], self.C, self.N
        patterns = self._frames["patterns"]
        if self.sorted_reads:
            self._take(patterns, members.reshape(-1), out.reshape(B * C, N, N))
        step = max(1, _CACHE_BYTES // (C * N * N * 4))

        def fill(first: int, stop: int) -> None:
            for start in range(first, stop, step):
                rows = out[start : min(start + step, stop)]
                if not self.sorted_reads:
                    np.take(patterns, members[start : start + len(rows)].reshape(-1), axis=0,
                            out=rows.reshape(-1, N, N))
                if self.n_experiments == 1:
                    rows *= self._x_scale[0]
                else:
                    rows *= self._x_scale[experiment[start : start + len(rows)]][:, None, None, None]

        parts = min(threads, -(-B // step), max(1, out.nbytes // _MIN_THREAD_BYTES))
        if parts <= 1:
            fill(0, B)
            return
        bounds = [round(B * part / parts / step) * step for part in range(parts)] + [B]
        executor = self._thread_pool(parts - 1)
        pending = [executor.submit(fill, bounds[part], bounds[part + 1]) for part in range(1, parts)]
        fill(bounds[0], bounds[1])
        for future in pending:
            future.result()

    def _thread_pool(self, workers: int) -> ThreadPoolExecutor:
        """The store's gather threads, made again in a forked child (threads do not survive fork)."""
        with self._executor_lock:
            pid, size = self._executor_key
            if self._executor is None or pid != os.getpid() or size < workers:
                if self._executor is not None and pid == os.getpid():
                    self._executor.shutdown(wait=False)
                self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ptychodata-gather")
                self._executor_key = (os.getpid(), workers)
            return self._executor

    def _fill_probes(self, experiment: np.ndarray, out: np.ndarray) -> None:
        """Each group's experiment probe, (B, N, N) contiguous (no stride-0 views, §7)."""
        if self.n_experiments == 1:
            out[:] = self._frames["probes"][0]
        else:
            np.take(self._frames["probes"], experiment, axis=0, out=out)

    def _take(self, source: np.ndarray, index: np.ndarray, out: np.ndarray) -> None:
        """``out[:] = source[index]`` in one vectorised gather into an existing buffer.

        With ``sorted_reads`` the rows are read in ascending order into a scratch buffer
        and then put back in the requested order.
        """
        if not self.sorted_reads:
            np.take(source, index, axis=0, out=out)
            return
        order = np.argsort(index, kind="stable")
        scratch = self._pool.take({"scratch": (out.shape, out.dtype)})["scratch"]
        np.take(source, index[order], axis=0, out=scratch)
        out[order] = scratch

    def _check_indices(self, indices: Any) -> np.ndarray:
        index = np.asarray(indices)
        if index.ndim != 1 or not (index.size == 0 or index.dtype.kind in "iu"):
            raise IndexError(
                f"batch indices must be a 1-D sequence of ints; got shape {index.shape} {index.dtype}"
            )
        index = index.astype(np.int64, copy=False)
        if not index.size:
            return index
        low, high = index.min(), index.max()
        if low < -len(self) or high >= len(self):
            raise IndexError(f"group index out of range for a store of {len(self)} groups")
        return index if low >= 0 else np.where(index < 0, index + len(self), index)

    def batch_layout(self, batch_size: int, *, with_Y: bool = False) -> dict[str, tuple[tuple[int, ...], type]]:
        """Shape and dtype of each array of a batch of ``batch_size`` groups (§7)."""
        B, C, N = batch_size, self.C, self.N
        layout = {
            "X": ((B, C, N, N), np.float32),
            "coords_relative": ((B, C, 1, 2), np.float32),
            "coords_offsets": ((B, 1, 1, 2), np.float32),
            "nn_indices": ((B, C), np.int64),
            "group_index": ((B,), np.int64),
            "experiment_id": ((B,), np.int64),
            "probe": ((B, N, N), np.complex64),
        }
        if with_Y:
            layout["Y"] = ((B, C, N, N), np.complex64)
        return layout

    def _fill_Y(self, members: np.ndarray, out: np.ndarray) -> None:
        B, C, N = out.shape[0], self.C, self.N
        flat_members = members.reshape(-1)
        flat_out = out.reshape(B * C, N, N)
        if "Y" in self._frames:
            self._take(self._frames["Y"], flat_members, flat_out)
            return
        experiment_of = self._frames["experiment_id"][flat_members]
        for experiment in np.unique(experiment_of):
            obj = self._frames.get(f"object_{experiment}")
            if obj is None:
                raise StoreError(f"{self.path}: experiment {experiment} has no object, so no ground-truth Y")
            rows = np.flatnonzero(experiment_of == experiment)
            points = flat_members[rows]
            flat_out[rows] = extract_patches(
                obj, self._frames["xcoords"][points], self._frames["ycoords"][points], N
            )

    # ------------------------------------------------------------------ whole-store views
    def grouped_data(self, experiment: int | None = None) -> dict[str, Any]:
        """The §6 grouped dict (channels-last) of all groups, or of one experiment's groups.

        ``x_scale`` and ``intensity_scale`` are scalars for one experiment and lists (one per
        experiment) otherwise; ``objectGuess`` is the experiment's object (None for several).
        """
        groups = np.asarray(self._groups["groups"])
        group_experiment = np.asarray(self._groups["group_experiment"])
        if experiment is not None:
            keep = group_experiment == experiment
            groups, group_experiment = groups[keep], group_experiment[keep]
        (diffraction,) = gather_channels_last(self._frames["patterns"], groups)
        X_full = diffraction * self._x_scale[group_experiment][:, None, None, None]
        Y = None
        if self.has_ground_truth:
            Y = np.empty((len(groups), self.C, self.N, self.N), np.complex64)
            self._fill_Y(groups, Y)
            Y = np.ascontiguousarray(Y.transpose(0, 2, 3, 1))
        f = self._frames
        single = experiment if experiment is not None else (0 if self.n_experiments == 1 else None)
        return {
            "diffraction": diffraction,
            "X_full": X_full,
            "Y": Y,
            **grouped_coords(f["xcoords"], f["ycoords"], f["xcoords_start"], f["ycoords_start"], groups),
            "nn_indices": groups,
            "objectGuess": None if single is None else self.object(single),
            "x_scale": self.grouping.x_scale if single is None else self.grouping.x_scale[single],
            "intensity_scale": self.grouping.intensity_scale
            if single is None
            else self.grouping.intensity_scale[single],
        }


    def container(self, experiment: int | None = None, **kwargs: Any) -> PtychoDataContainer:
        """A :class:`~ptychodata.grouped.PtychoDataContainer` (§8) of one experiment."""
        if experiment is None:
            if self.n_experiments != 1:
                raise StoreError(f"{self.path}: {self.n_experiments} experiments; pass experiment=...")
            experiment = 0
        grouped = self.grouped_data(experiment)
        return PtychoDataContainer.from_grouped(grouped, self.probe(experiment), **kwargs)

    def split(
        self, val_fraction: float, *, by: str = "region", seed: int | None = 0, tiles: int = 4
    ) -> tuple[StoreView, StoreView]:
        """(train, val) views; ``by="region"`` holds out whole tiles of each scan and drops
        training groups that share a pattern with validation (see
        :func:`~ptychodata.store._split.split_groups`)."""
        train, val = split_groups(self, val_fraction, by=by, seed=seed, tiles=tiles)
        return StoreView(self, train), StoreView(self, val)

    def info(self) -> dict[str, Any]:
        """A JSON-ready summary: paths, sizes, config, per-experiment sources and scales."""
        sizes = [(self.frames_path / n).stat().st_size for n in self.frames.files]
        sizes += [(self.path / n).stat().st_size for n in self.grouping.files]
        return {
            "path": str(self.path),
            "frames_path": str(self.frames_path),
            "n_patterns": self.frames.n_patterns,
            "N": self.N,
            "n_groups": len(self),
            "C": self.C,
            "materialized": self.grouping.materialized,
            "config": self.grouping.config,
            "bytes_on_disk": int(sum(sizes)),
            "created": self.grouping.created,
            "experiments": [
                {
                    "experiment_id": e.experiment_id,
                    "source": e.source.path or "in-memory scan",
                    "n_points": e.n_points,
                    "object_shape": e.object_shape,
                    "x_scale": self.grouping.x_scale[e.experiment_id],
                    "intensity_scale": self.grouping.intensity_scale[e.experiment_id],
                }
                for e in self.frames.experiments
            ],
        }

    def __repr__(self) -> str:
        return (
            f"Store({str(self.path)!r}, groups={len(self)}, C={self.C}, N={self.N}, "
            f"experiments={self.n_experiments})"
        )
