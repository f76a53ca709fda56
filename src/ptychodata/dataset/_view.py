"""An opened dataset build: its scans' stores read as one, with the :class:`~ptychodata.store.Store`
API the loaders use (batches, splits, grouped data, containers)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import resource
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ptychodata._runtime import CACHE_BYTES, rows_per_chunk, take_into
from ptychodata.dataset._manifest import DatasetManifest
from ptychodata.dataset._order import GroupKeys
from ptychodata.dataset._spec import scan_seed
from ptychodata.dataset._weights import Weights
from ptychodata.errors import ParameterError, StoreError
from ptychodata.grouped import PtychoDataContainer
from ptychodata.store import (
    BufferPool,
    GatherThreads,
    Layout,
    PtychoTorchConstants,
    ReadAheadThread,
    Store,
    batch_schema,
    check_batch_indices,
    default_threads,
)

__all__ = ["DatasetStore"]


class DatasetStore:
    """The groups of every scan of one dataset build, in manifest order (scans sorted by uid).

    Group ``i`` of the dataset is group ``i - offset[k]`` of scan ``k``; a batch's
    ``experiment_id`` is ``k``, its ``nn_indices`` count patterns across the dataset, and its
    ``group_index`` counts groups across the dataset. Tensors hold no strings: the scan of
    row ``b`` is ``uids[experiment_id[b]]`` (:attr:`uids`, the same table in every view of one
    build). Each scan's store is the exact build the manifest names, held open (so it is not
    collected) until :meth:`close`.

    Parameters
    ----------
    manifest : DatasetManifest
    cache_dir : path
    selection : ndarray of shape (B,), optional
        Dataset group indices served (a subset or split); default all.
    weighted : bool
        Whether the epochs of loaders over this view follow the build's mixing weights.
    """

    def __init__(
        self, manifest: DatasetManifest, cache_dir: str | os.PathLike, *, selection: Any = None, weighted: bool = True
    ):
        if not manifest.scans:
            raise StoreError(f"dataset {manifest.name!r} build {manifest.build_id} holds no scan; add scans first")
        self.manifest = manifest
        self.cache_dir = Path(cache_dir)
        self.weighted = bool(weighted)
        self.stores: list[Store] = []
        self._threads, self._thread_count = GatherThreads(), default_threads()
        self._reading_ahead = ReadAheadThread()  # one thread reads ahead for every scan: one read at a time
        try:
            for entry in manifest.scans:
                # the dataset's pins keep its builds (no reader locks); only patterns hold a descriptor
                self.stores.append(entry.build.open(self.cache_dir, reader_locks=False, tables_in_memory=True))
        except BaseException as exc:
            self.close()
            if _out_of_descriptors(exc):
                raise StoreError(_descriptor_advice(manifest, len(self.stores))) from exc
            raise
        sizes = np.array([len(store) for store in self.stores], np.int64)
        self._group_offsets = np.concatenate([[0], np.cumsum(sizes)])
        patterns = np.array([store.n_patterns for store in self.stores], np.int64)
        self._pattern_offsets = np.concatenate([[0], np.cumsum(patterns)])
        total = int(self._group_offsets[-1])
        self._selection = None if selection is None else check_batch_indices(selection, total)
        self._tables = [_ScanTables.of(store) for store in self.stores]
        self._has_probe = all(table.probe is not None for table in self._tables)
        self._layouts: dict[tuple, Layout] = {}
        self._joined_tables: _JoinedTables | None = None
        self._all_fast = all(table.fast for table in self._tables)
        self._pool = BufferPool()

    # ------------------------------------------------------------------ identity and sizes
    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def path(self) -> Path:
        """The dataset's directory in the cache."""
        return self.cache_dir / "datasets" / self.manifest.name

    @property
    def fingerprint(self) -> str:
        """The dataset build's id: equal for equal compositions."""
        return self.manifest.build_id

    build_id = fingerprint

    def __len__(self) -> int:
        return int(self._group_offsets[-1]) if self._selection is None else len(self._selection)

    @property
    def N(self) -> int:
        return self.stores[0].N

    @property
    def C(self) -> int:
        return self.stores[0].C

    @property
    def n_experiments(self) -> int:
        return len(self.stores)

    @property
    def n_patterns(self) -> int:
        return int(self._pattern_offsets[-1])

    @property
    def group_offsets(self) -> np.ndarray:
        """(S + 1,) int64: scan ``k``'s group ``g`` is the build's group ``group_offsets[k] + g``
        (what :attr:`group_indices` and a batch's ``group_index`` count)."""
        return self._group_offsets.copy()

    @property
    def pattern_offsets(self) -> np.ndarray:
        """(S + 1,) int64: scan ``k``'s pattern ``p`` is the dataset's pattern
        ``pattern_offsets[k] + p`` (what a batch's ``nn_indices`` count)."""
        return self._pattern_offsets.copy()

    @property
    def uids(self) -> list[str]:
        """The scans' uids in dataset order: ``uids[k]`` is the scan of ``experiment_id == k``."""
        return self.manifest.uids()

    @property
    def weights(self) -> Weights | None:
        """The mixing weights loaders over this view follow (None: every group once an epoch)."""
        return self.manifest.weights if self.weighted else None

    def without_weights(self) -> DatasetStore:
        """This view with every group once an epoch (for validation, say); it opens the builds again."""
        return DatasetStore(self.manifest, self.cache_dir, selection=self._selection, weighted=False)

    @property
    def has_probe(self) -> bool:
        return self._has_probe

    @property
    def has_ground_truth(self) -> bool:
        return all(store.has_ground_truth for store in self.stores)

    @property
    def x_scale(self) -> list[float]:
        return [store.x_scale[0] for store in self.stores]

    @property
    def intensity_scale(self) -> list[float | None]:
        return [store.intensity_scale[0] for store in self.stores]

    @property
    def group_indices(self) -> np.ndarray:
        total = int(self._group_offsets[-1])
        return np.arange(total, dtype=np.int64) if self._selection is None else self._selection.copy()

    def group_keys(self) -> GroupKeys:
        """The identities of the groups this view serves, in its order, for epoch orders that
        stay put when scans are added or removed, with the groups of each scan an epoch under
        the build's weights (counted over the groups this view serves)."""
        total = int(self._group_offsets[-1])
        served = np.arange(total, dtype=np.int64) if self._selection is None else self._selection
        scan = np.searchsorted(self._group_offsets, served, side="right") - 1
        mixing = None
        if self.weights is not None:
            sizes = np.bincount(scan, minlength=self.n_experiments)
            mixing = self.weights.plan(self.uids, [e.tags for e in self.manifest.scans], sizes).check()
        return GroupKeys.of(self.uids, scan, served - self._group_offsets[scan], self.fingerprint, mixing=mixing,
                            names=[entry.build.name for entry in self.manifest.scans])

    def probe(self, experiment: int = 0) -> np.ndarray | None:
        return self.stores[self._experiment(experiment)].probe(0)

    def mask(self, experiment: int = 0) -> np.ndarray | None:
        return self.stores[self._experiment(experiment)].mask(0)

    def object(self, experiment: int = 0) -> np.ndarray | None:
        return self.stores[self._experiment(experiment)].object(0)

    # ------------------------------------------------------------------ batches
    def batch(
        self,
        indices: Any,
        *,
        with_Y: bool = False,
        reuse: bool = True,  # noqa: ARG002 - each batch is new memory; kept for the Store API
        out: dict[str, np.ndarray] | None = None,
        threads: int | None = None,
        layout: str = "default",
        constants: Any = None,
    ) -> dict[str, np.ndarray]:
        """Gather dataset groups ``indices`` into one batch, as :meth:`Store.batch` does.

        With ``layout="ptycho_torch"`` each scan's rows carry that scan's constants
        (``constants``: what :meth:`ptycho_torch_constants` returned; computed when None);
        ``out`` arrays are filled where given.
        """
        schema = batch_schema(layout)
        groups = self._positions(indices)
        scan = np.searchsorted(self._group_offsets, groups, side="right") - 1
        arrays = out if out is not None else self._empty(len(groups), with_Y, schema.layout)
        if schema.layout == "ptycho_torch" and constants is None:
            constants = self.ptycho_torch_constants()
        if schema.layout == "default" and not with_Y and self._all_fast:
            self._gather_joined(groups, arrays, self._thread_count if threads is None else max(1, int(threads)))
            return arrays
        order = np.argsort(scan, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(np.bincount(scan, minlength=self.n_experiments))])
        for k in np.flatnonzero(np.diff(bounds)):
            rows = order[bounds[k] : bounds[k + 1]]
            local = groups[rows] - self._group_offsets[k]
            if schema.layout == "ptycho_torch":
                self._fill_from_store(k, rows, local, arrays, with_Y, threads, layout=schema.layout,
                                      constants=constants[k])
            else:  # Y, or frames that need decoding (a dataset's scans share one encoding)
                self._fill_from_store(k, rows, local, arrays, with_Y, threads)
            if "group_index" in arrays:
                arrays["group_index"][rows] = groups[rows]
            arrays["experiment_id"][rows] = k
        return arrays

    def _gather_joined(self, groups: np.ndarray, arrays: dict[str, np.ndarray], threads: int) -> None:
        """A default-layout batch of float32-amplitude scans, the tables of every scan joined in
        memory once. A group's members all belong to its scan: the batch's groups are taken
        scan by scan, each scan's run of them one take from its patterns into a pooled buffer
        (straight into X where the batch is one scan's), in cache-sized pieces shared among the
        gather threads; each piece is scaled and put back in the batch's order while still in
        cache. The same float32 products as each scan's own gather. Each scan's probe (and mask)
        is copied to its rows."""
        joined = self._joined()
        members = take_into(joined.groups, groups, arrays["nn_indices"])
        scan = take_into(joined.group_scan, groups, arrays["experiment_id"])
        arrays["group_index"][:] = groups
        arrays["coords_relative"][:, :, 0, :] = joined.relative[groups]
        arrays["coords_offsets"][:, 0, 0, :] = joined.centres[groups]
        local = members - self._pattern_offsets[scan][:, None]
        patterns = [table.patterns for table in self._tables]
        scales, X = joined.scales, arrays["X"]
        step = rows_per_chunk(X[:1].nbytes, CACHE_BYTES)
        by_scan = np.argsort(scan, kind="stable")  # the batch's rows scan by scan
        scan_of, local_of = scan[by_scan], local[by_scan]
        scale_of = scales[scan_of][:, None, None, None]
        single = bool(np.all(scan_of == scan_of[0])) if len(scan_of) else True
        target = X if single else self._pool.take({"X": (X.shape, X.dtype)}, key=("by scan", X.shape))["X"]

        def fill(first: int, stop: int) -> None:
            for start in range(first, stop, step):
                end = min(start + step, stop)
                edges = [start, *(np.flatnonzero(np.diff(scan_of[start:end])) + start + 1).tolist(), end]
                for a, b in zip(edges[:-1], edges[1:]):  # runs of one scan's rows
                    take_into(patterns[scan_of[a]], local_of[a:b], target[a:b])
                target[start:end] *= scale_of[start:end]
                if not single:  # back in the batch's order while still in cache
                    X[by_scan[start:end]] = target[start:end]

        self._threads.share(fill, len(groups), step, X.nbytes, threads)
        for key, per_scan in (("probe", joined.probes), ("mask", joined.masks)):
            if key in arrays and per_scan is not None:
                take_into(per_scan, scan, arrays[key])

    def _joined(self) -> _JoinedTables:
        if self._joined_tables is None:
            self._joined_tables = _JoinedTables.of(self._tables, self._pattern_offsets, self.N)
        return self._joined_tables

    def _fill_from_store(self, k, rows, local, arrays, with_Y, threads, layout="default", constants=None) -> None:
        """Rows ``rows`` of a batch through scan ``k``'s own gather (compact encodings, Y, the
        ptycho_torch layout with that scan's constants)."""
        part = self.stores[k].batch(
            local, with_Y=with_Y, reuse=False, threads=threads, layout=layout, constants=constants
        )
        for key, value in part.items():
            if key in arrays:  # a probe only where every scan has one
                arrays[key][rows] = value
        arrays["nn_indices"][rows] += self._pattern_offsets[k]

    def batch_layout(self, batch_size: int, *, with_Y: bool = False, layout: str = "default") -> Layout:
        key = (batch_size, with_Y, layout)
        if key not in self._layouts:
            has_mask = any(table.mask is not None for table in self._tables)
            self._layouts[key] = batch_schema(layout).arrays(
                batch_size, self.C, self.N, with_Y=with_Y, probe=self.has_probe, mask=has_mask
            )
        return self._layouts[key]

    def ptycho_torch_constants(self, probe_scale: float = 4.0) -> tuple[PtychoTorchConstants, ...]:
        """ptycho_torch's constants of each scan (:meth:`Store.ptycho_torch_constants`), in scan order."""
        return tuple(store.ptycho_torch_constants(probe_scale) for store in self.stores)

    def _empty(self, batch_size: int, with_Y: bool, layout: str = "default") -> dict[str, np.ndarray]:
        """Arrays for a batch: recycled from an earlier batch nothing refers to any more (fresh
        memory is slow on its first touch), as a store's own batches are."""
        shapes = self.batch_layout(batch_size, with_Y=with_Y, layout=layout)
        arrays = self._pool.take(shapes, key=("batch", batch_size, with_Y, layout))
        if "mask" in arrays:
            arrays["mask"][:] = True  # scans without a mask: every pixel usable
        return arrays

    def _positions(self, indices: Any) -> np.ndarray:
        index = check_batch_indices(indices, len(self))
        return index if self._selection is None else self._selection[index]

    def _experiment(self, experiment: int) -> int:
        if not 0 <= int(experiment) < self.n_experiments:
            raise ParameterError(f"experiment={experiment}; expected 0 <= experiment < {self.n_experiments}")
        return int(experiment)

    # ------------------------------------------------------------------ reading the disk in order
    def read_ahead(self, indices: Any) -> Future:
        """Read the patterns of groups ``indices`` (positions in this view) into the page cache,
        scan by scan, on one thread of this dataset's, as long sequential reads
        (:meth:`Store.read_ahead <ptychodata.store.Store.read_ahead>`); returns at once a future
        that is done when all are read."""
        return self._per_scan(indices, lambda store, local: store.read_ahead(local, reader=self._reading_ahead))

    def release(self, indices: Any, *, page_cache: bool = True) -> Future:
        """Drop the patterns of groups ``indices`` from memory once the reads ahead asked before
        are done (:meth:`Store.release <ptychodata.store.Store.release>`)."""
        return self._per_scan(
            indices, lambda store, local: store.release(local, page_cache=page_cache, reader=self._reading_ahead)
        )

    def _per_scan(self, indices: Any, job: Any) -> Future:
        """``job(store, local)`` for each scan that groups ``indices`` are in, with their positions
        in its store; one future for them all (:func:`_all_of`)."""
        positions = np.sort(self._positions(indices))
        scan = np.searchsorted(self._group_offsets, positions, side="right") - 1
        starts = np.flatnonzero(np.diff(scan, prepend=-1))  # where each scan's positions begin
        parts = []
        for start, stop in zip(starts.tolist(), [*starts[1:].tolist(), len(positions)]):
            k = int(scan[start])
            parts.append(job(self.stores[k], positions[start:stop] - self._group_offsets[k]))
        return _all_of(parts)

    # ------------------------------------------------------------------ subsets and splits
    def subset(self, indices: Any) -> DatasetStore:
        """A dataset view serving these groups (positions in this view); it opens the builds again."""
        return DatasetStore(self.manifest, self.cache_dir, selection=self._positions(indices), weighted=self.weighted)

    def split(
        self, val_fraction: float, *, by: str = "region", seed: int = 0, tiles: int = 4
    ) -> tuple[DatasetStore, DatasetStore]:
        """(train, val) views that stay put when scans are added or removed.

        ``by="region"``: each scan's tiles are held out as :meth:`Store.split` does, drawn
        from a generator keyed by the scan's uid. ``by="scan"``: whole scans are held out,
        each scan independently when a seeded hash of its uid falls below ``val_fraction``.
        """
        if not 0 < val_fraction < 1:
            raise ParameterError(f"val_fraction={val_fraction}; expected a number in (0, 1)")
        if by == "scan":
            held = [_hash_fraction(seed, uid) < val_fraction for uid in self.uids]
            train = [self._scan_groups(k) for k, h in enumerate(held) if not h]
            val = [self._scan_groups(k) for k, h in enumerate(held) if h]
        elif by == "region":
            train, val = [], []
            for k, store in enumerate(self.stores):
                local_train, local_val = store.split(
                    val_fraction, by="region", seed=scan_seed(seed, self.uids[k]), tiles=tiles
                )
                train.append(local_train.group_indices + self._group_offsets[k])
                val.append(local_val.group_indices + self._group_offsets[k])
                local_train.close()
                local_val.close()
        else:
            raise ParameterError(f"by={by!r}; expected one of {{'region', 'scan'}}")
        if not any(len(part) for part in train) or not any(len(part) for part in val):
            raise ParameterError(
                f"split by={by!r} of {self.n_experiments} scan(s) with val_fraction={val_fraction} leaves one side "
                "empty; use more scans or by='region'"
            )
        return self._restricted(train), self._restricted(val)

    def _scan_groups(self, k: int) -> np.ndarray:
        return np.arange(self._group_offsets[k], self._group_offsets[k + 1], dtype=np.int64)

    def _restricted(self, parts: list[np.ndarray]) -> DatasetStore:
        chosen = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        if self._selection is not None:
            chosen = chosen[np.isin(chosen, self._selection)]
        return DatasetStore(self.manifest, self.cache_dir, selection=np.sort(chosen), weighted=self.weighted)

    # ------------------------------------------------------------------ whole-scan views
    def grouped_data(self, experiment: int | None = None) -> dict[str, Any]:
        """The §6 grouped dict of one scan (``experiment`` = its position in the dataset)."""
        if experiment is None:
            if self.n_experiments != 1:
                raise ParameterError(f"dataset of {self.n_experiments} scans; pass experiment=k (0 <= k < n)")
            experiment = 0
        return self.stores[self._experiment(experiment)].grouped_data()

    def container(self, experiment: int | None = None, **kwargs: Any) -> PtychoDataContainer:
        """The §8 container of one scan."""
        if experiment is None:
            if self.n_experiments != 1:
                raise ParameterError(f"dataset of {self.n_experiments} scans; pass experiment=k (0 <= k < n)")
            experiment = 0
        return self.stores[self._experiment(experiment)].container(**kwargs)

    # ------------------------------------------------------------------ life cycle
    def close(self) -> None:
        self._reading_ahead.close()
        self._threads.close()
        for store in self.stores:
            store.close()

    def __enter__(self) -> DatasetStore:  # noqa: PYI034
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        return {"manifest": self.manifest, "cache_dir": self.cache_dir, "selection": self._selection,
                "weighted": self.weighted}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["manifest"], state["cache_dir"], selection=state["selection"],
                      weighted=state.get("weighted", True))

    def __repr__(self) -> str:
        return (
            f"DatasetStore({self.name!r}, build {self.fingerprint[:12]}, {self.n_experiments} scans, "
            f"{len(self)} groups, N={self.N}, C={self.C})"
        )


@dataclass(frozen=True, eq=False)
class _ScanTables:
    """What a batch reads of one scan's store: memory-mapped tables and per-scan constants."""

    fast: bool  # float32 amplitudes stored as they are: gathered here, not through the store
    patterns: np.ndarray
    groups: np.ndarray
    centres: np.ndarray
    relative: np.ndarray
    scale: np.float32
    probe: np.ndarray | None
    mask: np.ndarray | None

    @classmethod
    def of(cls, store: Store) -> _ScanTables:
        return cls(
            fast=store.frames_encoding.is_identity and store.materialized_X is None,
            patterns=_plain(store.patterns),
            groups=_plain(store.groups),
            centres=_plain(store.group_centres),
            relative=_plain(store.group_relative),
            scale=np.float32(store.x_scale[0]),
            probe=store.probe(0),
            mask=store.mask(0),
        )


@dataclass(frozen=True, eq=False)
class _JoinedTables:
    """Every scan's group tables in one array each (pattern indices counted across the dataset)."""

    groups: np.ndarray  # (B, C) int64
    group_scan: np.ndarray  # (B,) int64
    centres: np.ndarray  # (B, 2) float64
    relative: np.ndarray  # (B, C, 2) float64
    scales: np.ndarray  # (S,) float32
    probes: np.ndarray | None  # (S, N, N) complex64, where every scan has a probe
    masks: np.ndarray | None  # (S, N, N) bool, where any scan has a mask

    @classmethod
    def of(cls, tables: list[_ScanTables], pattern_offsets: np.ndarray, N: int) -> _JoinedTables:
        probes = None
        if all(t.probe is not None for t in tables):
            probes = np.stack([t.probe for t in tables]).astype(np.complex64)
        masks = None
        if any(t.mask is not None for t in tables):
            masks = np.stack([np.ones((N, N), bool) if t.mask is None else t.mask for t in tables])
        return cls(
            groups=np.concatenate([t.groups + pattern_offsets[k] for k, t in enumerate(tables)]),
            group_scan=np.concatenate([np.full(len(t.groups), k, np.int64) for k, t in enumerate(tables)]),
            centres=np.concatenate([t.centres for t in tables]),
            relative=np.concatenate([t.relative for t in tables]),
            scales=np.array([t.scale for t in tables], np.float32),
            probes=probes,
            masks=masks,
        )


def _all_of(parts: list[Future]) -> Future:
    """A future done when the last of ``parts`` (jobs queued in order on one thread) is done;
    cancelling it cancels the parts not yet started."""
    combined: Future = Future()
    if not parts:
        combined.set_result(None)
        return combined

    def finish(last: Future) -> None:
        with contextlib.suppress(InvalidStateError):  # cancelled meanwhile
            if last.cancelled():
                combined.cancel()
            else:
                combined.set_result(None)

    def cancel_parts(done: Future) -> None:
        if done.cancelled():
            for part in parts:
                part.cancel()

    combined.add_done_callback(cancel_parts)
    parts[-1].add_done_callback(finish)
    return combined


def _out_of_descriptors(exc: BaseException) -> bool:
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno == errno.EMFILE:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _descriptor_advice(manifest: DatasetManifest, opened: int) -> str:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return (
        f"dataset {manifest.name!r}: ran out of file descriptors after opening {opened} of its "
        f"{len(manifest.scans)} scans (each open scan holds one, for its patterns); the limit is {soft} "
        f"(ulimit -n; at most {hard}): raise it, e.g. ulimit -n {min(hard, max(4096, 2 * len(manifest.scans)))}"
    )


def _plain(array: np.ndarray) -> np.ndarray:
    """A plain ndarray view of a memory map: the same pages, without np.memmap's per-index cost."""
    return array.view(np.ndarray)


def _hash_fraction(seed: int, uid: str) -> float:
    digest = hashlib.blake2b(f"split:{int(seed)}:{uid}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64
