"""A dataset's scans read as one store of many experiments: what a :class:`~ptychodata.torch.DeviceStore`
and the resident shards read of a :class:`~ptychodata.dataset.DatasetStore`.

Experiment ``k`` is scan ``k`` (a batch's ``experiment_id``), pattern indices count across the
dataset (:attr:`~ptychodata.dataset.DatasetStore.pattern_offsets`), and the groups are the
view's, in its order, with their dataset-wide indices (``group_index``). The per-group tables
(B rows) are read into memory; the frames, stored patches and materialized X stay in each
scan's memory maps and are read by rows, a slice or a list of rows at a time, so no host copy
of every frame exists.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ptychodata.dataset import DatasetStore
from ptychodata.errors import ParameterError, StoreError
from ptychodata.store import FramesEncoding, Layout

__all__ = ["JoinedRows", "JoinedScans"]


class JoinedScans:
    """The scans of ``dataset`` as one store whose experiment ``k`` is scan ``k``.

    It has the attributes of :class:`~ptychodata.store.Store` that a
    :class:`~ptychodata.torch.DeviceStore` reads; its batches (what a DeviceStore makes of
    it) are :meth:`DatasetStore.batch`'s. The scans share one frames encoding and are all
    materialized or none (a dataset's spec fixes both); anything else is refused by name.

    Parameters
    ----------
    dataset : DatasetStore
        A dataset build, or a split or subset of one.
    """

    def __init__(self, dataset: DatasetStore):
        self.dataset = dataset
        stores = dataset.stores
        names = self.scan_names
        several = [names[k] for k, store in enumerate(stores) if store.n_experiments != 1]
        if several:
            raise StoreError(f"dataset {dataset.name!r}: scan(s) {', '.join(several)} hold several experiments; "
                             "a dataset's scan holds one")
        encodings = [store.frames_encoding for store in stores]
        if any(encoding != encodings[0] for encoding in encodings):
            found = ", ".join(f"{name}: {_label(encoding)}" for name, encoding in zip(names, encodings))
            raise ParameterError(f"dataset {dataset.name!r}: its scans store their frames in different encodings "
                                 f"({found}); a device holds one encoding for every scan")
        self.frames_encoding: FramesEncoding = encodings[0]
        materialized = [store.materialized_X is not None for store in stores]
        if any(materialized) and not all(materialized):
            plain = [name for name, flag in zip(names, materialized) if not flag]
            raise ParameterError(f"dataset {dataset.name!r}: scan(s) {', '.join(plain)} are not materialized, the "
                                 "others are; a device holds X materialized for every scan or for none")
        self._materialized = all(materialized)
        self._any_mask = any(store.mask(0) is not None for store in stores)
        self._group_offsets = dataset.group_offsets
        self._pattern_offsets = dataset.pattern_offsets
        served = dataset.group_indices
        scan = np.searchsorted(self._group_offsets, served, side="right") - 1
        local = served - self._group_offsets[scan]
        self.group_indices = served
        self.group_experiment = scan.astype(np.int64)
        self.groups = np.empty((len(served), self.C), np.int64)
        self.group_centres = np.empty((len(served), 2), np.float64)
        self.group_relative = np.empty((len(served), self.C, 2), np.float64)
        for k, rows in _rows_by_part(scan, len(stores)):
            store, chosen = stores[k], local[rows]
            self.groups[rows] = np.asarray(store.groups)[chosen] + self._pattern_offsets[k]
            self.group_centres[rows] = np.asarray(store.group_centres)[chosen]
            self.group_relative[rows] = np.asarray(store.group_relative)[chosen]
        sizes = np.diff(self._pattern_offsets)
        self.pattern_experiment = np.repeat(np.arange(len(stores), dtype=np.int64), sizes)

    # ------------------------------------------------------------------ identity and sizes
    @property
    def name(self) -> str:
        return self.dataset.name

    @property
    def path(self) -> Path:
        return self.dataset.path

    @property
    def scan_names(self) -> list[str]:
        """The scans' file names, in dataset order (``scan_names[k]`` is experiment ``k``)."""
        return [entry.build.name for entry in self.dataset.manifest.scans]

    def __len__(self) -> int:
        return len(self.group_indices)

    @property
    def N(self) -> int:
        return self.dataset.N

    @property
    def C(self) -> int:
        return self.dataset.C

    @property
    def n_experiments(self) -> int:
        return self.dataset.n_experiments

    @property
    def n_patterns(self) -> int:
        return self.dataset.n_patterns

    @property
    def x_scale(self) -> list[float]:
        return self.dataset.x_scale

    # ------------------------------------------------------------------ per experiment (scan)
    @property
    def has_probe(self) -> bool:
        return self.dataset.has_probe

    @property
    def scans_without_probe(self) -> list[str]:
        """The names of the scans that have no probe."""
        return [name for name, store in zip(self.scan_names, self.dataset.stores) if not store.has_probe]

    def probe(self, experiment: int = 0) -> np.ndarray | None:
        return self.dataset.probe(experiment)

    def mask(self, experiment: int = 0) -> np.ndarray | None:
        """Scan ``experiment``'s mask; every pixel usable for a scan without one where another
        scan has one (as a dataset's batches fill it); None where no scan has a mask."""
        if not self._any_mask:
            return None
        mask = self.dataset.mask(experiment)
        return np.ones((self.N, self.N), bool) if mask is None else mask

    def object(self, experiment: int = 0) -> np.ndarray | None:
        return self.dataset.object(experiment)

    # ------------------------------------------------------------------ rows read lazily
    @property
    def patterns(self) -> JoinedRows:
        """Every scan's stored patterns as one (M, N, N) array, in the stored encoding."""
        return JoinedRows([store.patterns for store in self.dataset.stores], self._pattern_offsets)

    @property
    def amplitudes(self) -> JoinedRows:
        """Every scan's patterns as float32 amplitudes (M, N, N), unscaled."""
        return JoinedRows([store.amplitudes for store in self.dataset.stores], self._pattern_offsets)

    @property
    def materialized_X(self) -> JoinedRows | None:
        """The stored, scaled X of the served groups, (B, C, N, N), or None."""
        if not self._materialized:
            return None
        parts = [store.materialized_X for store in self.dataset.stores]
        return JoinedRows(parts, self._group_offsets, select=self.group_indices)

    @property
    def stored_patches(self) -> JoinedRows | None:
        """Every scan's stored ground-truth patches (M, N, N) complex64 where every scan has
        them; None where none has (Y is then cut from the objects)."""
        stored = [store.stored_patches for store in self.dataset.stores]
        if all(part is None for part in stored):
            return None
        if any(part is None for part in stored):
            lacking = [name for name, part in zip(self.scan_names, stored) if part is None]
            raise ParameterError(
                f"dataset {self.name!r}: scan(s) {', '.join(lacking)} have no stored ground-truth patches and the "
                "others do; a device serves Y of one kind for every scan (load Y with the host loader)"
            )
        return JoinedRows(stored, self._pattern_offsets)

    @property
    def has_ground_truth(self) -> bool:
        return self.dataset.has_ground_truth

    @property
    def positions(self) -> np.ndarray:
        """Scan positions of every pattern, (M, 2) float64, columns (x, y)."""
        return np.concatenate([store.positions for store in self.dataset.stores])

    def batch_layout(self, batch_size: int, *, with_Y: bool = False, layout: str = "default") -> Layout:
        return self.dataset.batch_layout(batch_size, with_Y=with_Y, layout=layout)

    def __repr__(self) -> str:
        return f"JoinedScans({self.dataset!r})"


class JoinedRows:
    """Several arrays read as one along their first axis: row ``r`` is row
    ``r - offsets[k]`` of ``parts[k]``, and with ``select``, row ``i`` is that whole's
    row ``select[i]``. ``rows[a:b]`` and ``rows[index]`` (an int array) read only those rows.
    """

    def __init__(self, parts: list[Any], offsets: np.ndarray, *, select: np.ndarray | None = None):
        self.parts = parts
        self.offsets = np.asarray(offsets, np.int64)
        self.select = None if select is None else np.asarray(select, np.int64)
        n = int(self.offsets[-1]) if self.select is None else len(self.select)
        self.shape = (n, *parts[0].shape[1:])
        self.dtype = np.dtype(parts[0].dtype)
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> np.ndarray:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step == 1 and self.select is None:
                return self._span(start, stop)
            index = np.arange(start, stop, step, dtype=np.int64)
        index = np.asarray(index)
        if index.ndim != 1 or index.dtype.kind not in "iu":
            raise ParameterError(f"rows of shape {index.shape} {index.dtype}; expected a slice or a 1-D int array")
        index = index.astype(np.int64, copy=False)
        if index.size and (index.min() < 0 or index.max() >= len(self)):
            raise IndexError(f"row {int(index.min() if index.min() < 0 else index.max())} out of range for "
                             f"{len(self)} rows")
        whole = index if self.select is None else self.select[index]
        part = np.searchsorted(self.offsets, whole, side="right") - 1
        out = np.empty((len(index), *self.shape[1:]), self.dtype)
        for k, rows in _rows_by_part(part, len(self.parts)):
            local = whole[rows] - self.offsets[k]
            if np.all(local[1:] - local[:-1] == 1):  # a run of rows: one slice
                out[rows] = self.parts[k][local[0] : local[-1] + 1]
            else:
                out[rows] = self.parts[k][local]
        return out

    def _span(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((max(0, stop - start), *self.shape[1:]), self.dtype)
        k = int(np.searchsorted(self.offsets, start, side="right") - 1)
        at = start
        while at < stop:
            end = min(stop, int(self.offsets[k + 1]))
            out[at - start : end - start] = self.parts[k][at - self.offsets[k] : end - self.offsets[k]]
            at, k = end, k + 1
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self[:]
        return whole if dtype is None else whole.astype(dtype, copy=False)


def _rows_by_part(part: np.ndarray, n_parts: int):
    """(k, rows) for each part ``k`` that ``part`` names, ``rows`` in ascending order."""
    order = np.argsort(part, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(part, minlength=n_parts))])
    for k in np.flatnonzero(np.diff(bounds)):
        yield int(k), order[bounds[k] : bounds[k + 1]]


def _label(encoding: FramesEncoding) -> str:
    return f"{encoding.dtype} {encoding.values}"
