"""The opened store: one grouping build and the frames build it was made from, read-only.

Opening maps files and reads only the manifests and ``.npy`` headers, so it takes
milliseconds whatever the size. A ``Store`` pickles as a recipe (path, build id, the
groups it serves), so a DataLoader worker re-opens exactly the build its parent has,
never a newer one; if that build is gone, it raises :class:`~ptychodata.errors.StoreError`.
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np

from ptychodata._runtime import sorted_unique
from ptychodata.errors import GroupIndexError, ParameterError, StoreClosedError, StoreError
from ptychodata.grouped import PtychoDataContainer, grouped_dict
from ptychodata.store._batch import BatchGatherer, check_batch_indices
from ptychodata.store._batch_schema import Layout, batch_schema
from ptychodata.store._cache_paths import FrameFile, GroupingFile, npy_name, object_stem
from ptychodata.store._frames import DecodedFrames, FramesEncoding, file_mapping
from ptychodata.store._manifest import FrameManifest, GroupingManifest
from ptychodata.store._open_build import OpenBuild
from ptychodata.store._ptycho_torch import PtychoTorchConstants, gather_ptycho_torch, ptycho_torch_constants
from ptychodata.store._split import split_groups
from ptychodata.store._threads import ReadAheadThread

__all__ = ["Store", "require_ground_truth"]

# Rows apart that still read as one run ahead: a few unused rows cost less than another request.
_READ_AHEAD_GAP = 64


class Store:
    """A prepared store, opened read-only: one grouping build and its frames build.

    ``len(store)`` is the number of groups it serves: all of the grouping's, or the
    subset of a :meth:`split`/:meth:`subset`, to which every method then applies.
    ``store.batch(indices)`` gathers groups into the channels-first layout of the
    contract (§7) as NumPy arrays. Use it as a context manager, or call :meth:`close`.

    Parameters
    ----------
    path : path
        A grouping directory (``store.path``).
    build_id : str, optional
        The grouping build to open; default the live one.
    groups : array of int, optional
        Indices of the grouping's groups this store serves (default all).
    sorted_reads, threads
        See :func:`open_store`.
    reader_locks : bool
        Hold reader locks on the builds (default), so that collection and removal skip them.
        False where a holder pins the builds instead (a dataset does): no descriptor is then
        held for locks.
    tables_in_memory : bool
        Read the small tables (positions, groups, scales: about 1 % of the patterns' bytes)
        into memory, so that only the patterns hold a file descriptor (a dataset of a
        thousand scans then opens under a limit of 1024 descriptors).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        build_id: str | None = None,
        groups: np.ndarray | None = None,
        sorted_reads: bool = False,
        threads: int | None = None,
        reader_locks: bool = True,
        tables_in_memory: bool = False,
    ):
        self.path = Path(path).expanduser().resolve()
        self._build: OpenBuild | None = OpenBuild(
            self.path, build_id, reader_locks=reader_locks, tables_in_memory=tables_in_memory
        )
        self._held = {"reader_locks": bool(reader_locks), "tables_in_memory": bool(tables_in_memory)}
        build = self._build
        self.build_id = build.grouping.build_id
        self.frames_build_id = build.frames.build_id
        self.grouping: GroupingManifest = build.grouping
        self.frames: FrameManifest = build.frames
        try:
            self._selection = _checked_selection(groups, build.grouping.n_groups)
        except GroupIndexError:
            build.close()  # no gatherer yet: release the build's locks and maps only
            self._build = None
            raise
        self._gatherer = BatchGatherer(build.batch_sources(), sorted_reads=sorted_reads, threads=threads)
        self._reading_ahead = ReadAheadThread()
        self.sorted_reads = sorted_reads
        self.threads = self._gatherer.threads

    @classmethod
    def open_build(cls, path: str | os.PathLike, build_id: str, **options: Any) -> Store:
        """Open grouping build ``build_id`` of the grouping at ``path`` (not necessarily the live one)."""
        return cls(path, build_id=build_id, **options)

    # ------------------------------------------------------------------ life cycle
    def close(self) -> None:
        """Release the build (memory maps, reader locks, gather threads). Idempotent."""
        if self._build is not None:
            self._reading_ahead.close()
            self._gatherer.close()
            self._build.close()
            self._build = None

    @property
    def closed(self) -> bool:
        return self._build is None

    def __enter__(self) -> Store:  # noqa: PYI034 - Self needs Python 3.11
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def _open(self) -> OpenBuild:
        if self._build is None:
            raise StoreClosedError(f"{self.path}: the store is closed; open it again with open_store()")
        return self._build

    # ------------------------------------------------------------------ pickling by recipe
    def __getstate__(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "build_id": self.build_id,
            "groups": self._selection,
            "sorted_reads": self.sorted_reads,
            "threads": self.threads,
            **self._held,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(
            state["path"],
            build_id=state["build_id"],
            groups=state["groups"],
            sorted_reads=state["sorted_reads"],
            threads=state["threads"],
            reader_locks=state.get("reader_locks", True),
            tables_in_memory=state.get("tables_in_memory", False),
        )

    # ------------------------------------------------------------------ sizes
    def __len__(self) -> int:
        self._open()
        return self.grouping.n_groups if self._selection is None else len(self._selection)

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
    def n_patterns(self) -> int:
        return self.frames.n_patterns

    @property
    def group_indices(self) -> np.ndarray:
        """Indices, in the whole grouping, of the groups this store serves, (B,) int64."""
        return np.arange(self.grouping.n_groups) if self._selection is None else self._selection.copy()

    @property
    def has_ground_truth(self) -> bool:
        """Whether Y can be served: stored patches, or an object for every experiment."""
        arrays = self._open().frame_arrays
        return FrameFile.Y in arrays or all(e.object_shape is not None for e in self.frames.experiments)

    # ------------------------------------------------------------------ per-pattern arrays (memory-mapped)
    @property
    def patterns(self) -> np.ndarray:
        """The stored patterns, (M, N, N), memory-mapped, unscaled, in the stored encoding:
        float32 amplitudes by default (see :attr:`frames_encoding`; :attr:`amplitudes` gives
        float32 amplitudes whatever the encoding)."""
        return self._open().frame_arrays[FrameFile.PATTERNS]

    @property
    def amplitudes(self) -> np.ndarray | DecodedFrames:
        """Unscaled float32 amplitudes (M, N, N): the stored array itself when it holds them
        (float32 amplitude stores), else a view converting the rows asked for
        (``store.amplitudes[indices]``)."""
        stored = self.patterns
        encoding = self.frames_encoding
        return stored if encoding.is_identity else DecodedFrames(stored, encoding)

    @property
    def frames_encoding(self) -> FramesEncoding:
        """How the patterns are stored (dtype and values: amplitude or counts)."""
        return FramesEncoding.of(self.frames.patterns)

    @property
    def zero_copy(self) -> bool:
        """Whether the patterns are read in place from the source file (``prepare(copy=False)``)."""
        return self.frames.patterns.is_reference

    @property
    def energies(self) -> np.ndarray:
        """Σ A² of each pattern, (M,) float64."""
        return self._open().frame_arrays[FrameFile.ENERGIES]

    @property
    def amplitude_sums(self) -> np.ndarray:
        """Σ A of each pattern, (M,) float64."""
        return self._open().frame_arrays[FrameFile.AMPLITUDE_SUMS]

    @property
    def positions(self) -> np.ndarray:
        """Scan positions of every pattern, (M, 2) float64, columns (x, y) in object pixels."""
        f = self._open().frame_arrays
        return np.stack([f[FrameFile.XCOORDS], f[FrameFile.YCOORDS]], axis=1)

    @property
    def positions_start(self) -> np.ndarray:
        """Nominal scan positions, (M, 2) float64, columns (x, y)."""
        f = self._open().frame_arrays
        return np.stack([f[FrameFile.XCOORDS_START], f[FrameFile.YCOORDS_START]], axis=1)

    @property
    def pattern_experiment(self) -> np.ndarray:
        """The experiment of each pattern, (M,) int64."""
        return self._open().frame_arrays[FrameFile.EXPERIMENT_ID]

    def object(self, experiment: int = 0) -> np.ndarray | None:
        """The (H, W) complex64 object of an experiment (memory-mapped), or None."""
        return self._open().frame_arrays.get(object_stem(experiment))

    @property
    def has_probe(self) -> bool:
        """Whether every experiment has a probe (then batches carry ``probe``)."""
        return FrameFile.PROBES in self._open().frame_arrays

    def mask(self, experiment: int = 0) -> np.ndarray | None:
        """The (N, N) bool bad-pixel mask of an experiment (True = usable), or None when no
        experiment of the store has one (then batches carry no ``mask``)."""
        masks = self._open().frame_arrays.get(FrameFile.MASKS)
        return None if masks is None else masks[experiment]

    def probe(self, experiment: int = 0) -> np.ndarray | None:
        """The (N, N) complex64 probe of an experiment, or None when the store has none."""
        probes = self._open().frame_arrays.get(FrameFile.PROBES)
        return None if probes is None else probes[experiment]

    # ------------------------------------------------------------------ per-group arrays (this store's groups)
    def _select(self, array: np.ndarray) -> np.ndarray:
        return array if self._selection is None else array[self._selection]

    @property
    def groups(self) -> np.ndarray:
        """Pattern indices of each group's members, (B, C) int64."""
        return self._select(self._open().group_arrays[GroupingFile.GROUPS])

    @property
    def group_experiment(self) -> np.ndarray:
        """The experiment of each group, (B,) int64."""
        return self._select(self._open().group_arrays[GroupingFile.GROUP_EXPERIMENT])

    @property
    def group_centres(self) -> np.ndarray:
        """Each group's centre (§3 ``coords_offsets``), (B, 2) float64, columns (x, y)."""
        return self._select(self._open().group_arrays[GroupingFile.COORDS_OFFSETS])

    @property
    def group_relative(self) -> np.ndarray:
        """Each member's §3 ``coords_relative`` −(p − centre), (B, C, 2) float64, columns (x, y)."""
        return self._select(self._open().group_arrays[GroupingFile.COORDS_RELATIVE])

    @property
    def group_start_centres(self) -> np.ndarray:
        """Deprecated: ``grouped_data()["coords_start_offsets"]`` holds the nominal centres,
        and ``batch(..., layout="ptycho_torch")`` carries them as ``coords_start_center``."""
        return self._deprecated_group_array("group_start_centres", GroupingFile.COORDS_START_OFFSETS)

    @property
    def group_start_relative(self) -> np.ndarray:
        """Deprecated: ``grouped_data()["coords_start_relative"]`` holds them, and
        ``batch(..., layout="ptycho_torch")`` carries them as ``coords_start_relative``."""
        return self._deprecated_group_array("group_start_relative", GroupingFile.COORDS_START_RELATIVE)

    def _deprecated_group_array(self, name: str, stem: str) -> np.ndarray:
        warnings.warn(
            f"Store.{name} is deprecated and will be removed; read the nominal group coordinates from "
            "grouped_data() or from batch(..., layout='ptycho_torch')",
            DeprecationWarning,
            stacklevel=3,
        )
        return self._select(self._open().group_arrays[stem])

    def ptycho_torch_constants(self, probe_scale: float = 4.0) -> PtychoTorchConstants:
        """ptycho_torch's per-experiment constants, from all of each experiment's patterns.

        Computed from the stored per-pattern sums (:attr:`energies`, :attr:`amplitude_sums`)
        of **every** pattern of each experiment, whatever groups this store serves (as
        ptycho_torch computes them over a whole scan file), and from each probe.

        Parameters
        ----------
        probe_scale : float
            ptycho_torch's ``DataConfig.probe_scale`` (default 4.0).

        Returns
        -------
        PtychoTorchConstants
            ``rms_scaling_constant`` and ``physics_scaling_constant`` (E,) float32,
            ``probe`` (E, N, N) complex64 normalised by ptycho_torch's rule, ``probe_scaling``
            (E,) float32 (1 / the probe's factor).
        """
        if not self.has_probe:
            raise StoreError(f"{self.path}: a source of this store has no probe; ptycho_torch's batch needs one")
        return ptycho_torch_constants(
            self.energies,
            self.amplitude_sums,
            self.pattern_experiment,
            [self.probe(e) for e in range(self.n_experiments)],
            N=self.N,
            probe_scale=probe_scale,
            where=f"{self.path}: ",
        )

    @property
    def materialized_X(self) -> np.ndarray | None:
        """The stored, already scaled X of each group, (B, C, N, N) float32, for a store
        prepared with materialized groups; None otherwise (X is gathered from ``patterns``)."""
        X = self._open().group_arrays.get(GroupingFile.X)
        return None if X is None else self._select(X)

    @property
    def stored_patches(self) -> np.ndarray | None:
        """Stored ground-truth patches of every pattern, (M, N, N) complex64, when the
        sources had them; None when ``Y`` is cut from the objects instead."""
        return self._open().frame_arrays.get(FrameFile.Y)

    @property
    def x_scale(self) -> list[float]:
        """The §5 scale factor of each experiment."""
        return list(self.grouping.x_scale)

    @property
    def intensity_scale(self) -> list[float | None]:
        """The §5 intensity scale of each experiment (None where nphotons is unknown)."""
        return list(self.grouping.intensity_scale)

    # ------------------------------------------------------------------ batches
    def batch(
        self,
        indices: Any,
        *,
        with_Y: bool = False,
        reuse: bool = True,
        out: dict[str, np.ndarray] | None = None,
        threads: int | None = None,
        layout: str = "default",
        constants: PtychoTorchConstants | None = None,
    ) -> dict[str, np.ndarray]:
        """Gather groups ``indices`` into a §7 batch (channels-first NumPy arrays).

        Parameters
        ----------
        indices : sequence of int, shape (B,)
            Positions in this store's groups (``0 <= i < len(store)``; negative counts
            from the end), in the order the batch should have.
        with_Y : bool
            Add ground-truth patches ``Y`` (B, C, N, N) complex64.
        reuse : bool
            Fill the arrays of an earlier batch that nothing refers to any more (see
            :class:`~ptychodata.store._buffers.BufferPool`); a batch still held is never
            overwritten. ``False`` always allocates.
        out : dict of ndarray, optional
            C-contiguous, writable arrays to fill instead (shapes and dtypes of
            :meth:`batch_layout`), e.g. views of shared-memory tensors; anything else is
            refused. ``reuse`` is then ignored.
        threads : int, optional
            Threads sharing the pattern gather (NumPy copies without the GIL); default
            the store's ``threads``. Pass 1 where processes already use every core.
        layout : {"default", "ptycho_torch"}
            ``"ptycho_torch"``: the arrays of ptycho_torch's batch instead (see
            :data:`~ptychodata.store.PTYCHO_TORCH_SCHEMA`): raw amplitudes
            ``images``, its coordinate keys, per-experiment constants and probe, and with Y
            ``label_amp`` = |Y| and ``label_phase`` = angle(Y).
        constants : PtychoTorchConstants, optional
            For ``layout="ptycho_torch"``: :meth:`ptycho_torch_constants`, computed once by
            the caller; default computed for this call.

        Returns
        -------
        dict
            ``X`` (B, C, N, N) float32 normalised; ``coords_relative`` (B, C, 1, 2) and
            ``coords_offsets`` (B, 1, 1, 2) float32 with last axis (x, y); ``nn_indices``
            (B, C) int64 (pattern indices in the store); ``group_index`` (B,) int64 (the
            group's index in the whole grouping); ``experiment_id`` (B,) int64; ``probe``
            (B, N, N) complex64; ``Y`` if asked. With ``layout="ptycho_torch"``, the keys
            of :meth:`batch_layout` for that layout.
        """
        self._open()
        schema = batch_schema(layout)
        index = self._check_indices(indices)
        if self._selection is not None:
            index = self._selection[index]
        if schema.layout == "ptycho_torch":
            if with_Y:
                require_ground_truth(self)
            if constants is None:
                constants = self.ptycho_torch_constants()
            return gather_ptycho_torch(
                self._gatherer, index, constants, with_Y=with_Y, reuse=reuse, out=out, threads=threads
            )
        return self._gatherer.gather(index, with_Y=with_Y, reuse=reuse, out=out, threads=threads)

    def batch_layout(self, batch_size: int, *, with_Y: bool = False, layout: str = "default") -> Layout:
        """Shape and dtype of each array of a batch of ``batch_size`` groups (§7, or
        ptycho_torch's arrays with ``layout="ptycho_torch"``): the fields of
        :func:`~ptychodata.store.batch_schema` of ``layout`` present for this store."""
        schema = batch_schema(layout)
        has_mask = FrameFile.MASKS in self._open().frame_arrays
        return schema.arrays(batch_size, self.C, self.N, with_Y=with_Y, probe=self.has_probe, mask=has_mask)

    def _check_indices(self, indices: Any) -> np.ndarray:
        return check_batch_indices(indices, len(self))

    def read_ahead(self, indices: Any, *, reader: ReadAheadThread | None = None) -> Future:
        """Read the patterns of groups ``indices`` (positions in this store) into the page cache,
        on a thread of this store's (or ``reader``, one several stores share), as long
        sequential reads of the runs of rows they span.

        Returns at once a future that is done when they are read; for an order that visits a
        region of the file at a time (``make_loader(..., block=...)``), which waits for a region
        before serving it while the next one is read. A store whose patterns are not a file's
        (nothing to read) returns a future that is done.
        """
        path, _, ranges = self._pattern_runs(indices)
        return (reader or self._reading_ahead).submit(path, ranges)

    def release(self, indices: Any, *, page_cache: bool = True, reader: ReadAheadThread | None = None) -> Future:
        """Drop the patterns of groups ``indices`` from memory, after the reads ahead asked
        before: unmapped from this process and, with ``page_cache``, dropped from the page
        cache (pages another process maps stay). For an order that is done with a region of a
        store larger than memory (block order): the pages served make room for the next
        region's instead of being reclaimed among them. Reading them again later reads the
        file again. ``page_cache=False`` where other processes on the machine read the same
        pages in step (ranks of one job): what one has served, another may not have.
        ``reader``: the thread that read them ahead, where it is not this store's.

        Returns at once a future that is done when they are dropped (a hint: nothing is raised
        if the system cannot drop them).
        """
        path, offset, ranges = self._pattern_runs(indices)
        mapping = file_mapping(self.patterns, offset) if ranges else None
        return (reader or self._reading_ahead).forget(path, ranges, mapping, page_cache)

    def _pattern_runs(self, indices: Any) -> tuple[str, int, list[tuple[int, int]]]:
        """The patterns file, the offset of its first row, and the ``(offset, nbytes)`` of the
        runs of its rows that the patterns of groups ``indices`` span (rows fewer than
        ``_READ_AHEAD_GAP`` apart joined)."""
        rows = sorted_unique(self.groups[self._check_indices(indices)])
        patterns = self.patterns
        if not len(rows) or not patterns.size:
            return "", 0, []
        entry = self.frames.patterns
        if entry.file is None:  # the build's own .npy: the data fill the file after its header
            path = str(self._open().frames_dir / npy_name(FrameFile.PATTERNS))
            offset = os.path.getsize(path) - patterns.nbytes
        else:  # a zero-copy build: the source's member, where the build recorded it
            path, offset = entry.file, entry.offset
        row_bytes = patterns[:1].nbytes
        breaks = np.flatnonzero(np.diff(rows) > _READ_AHEAD_GAP) + 1
        return path, offset, [(offset + int(run[0]) * row_bytes, (int(run[-1]) + 1 - int(run[0])) * row_bytes)
                              for run in np.split(rows, breaks)]

    # ------------------------------------------------------------------ whole-store views
    def grouped_data(self, experiment: int | None = None) -> dict[str, Any]:
        """The §6 grouped dict (channels-last) of this store's groups, or of one experiment's.

        Built by :func:`~ptychodata.grouped.grouped_dict` from the stored patterns, groups,
        coordinates and scales. ``x_scale`` and ``intensity_scale`` are scalars for one
        experiment and lists (one per experiment) otherwise; ``objectGuess`` is the
        experiment's object (None for several).
        """
        build = self._open()
        g = build.group_arrays
        keep = self.group_indices
        if experiment is not None:
            keep = keep[np.asarray(g[GroupingFile.GROUP_EXPERIMENT])[keep] == experiment]
        groups = np.asarray(g[GroupingFile.GROUPS][keep])
        group_experiment = np.asarray(g[GroupingFile.GROUP_EXPERIMENT][keep])
        Y = None
        if self.has_ground_truth:
            Y = np.empty((*groups.shape, self.N, self.N), np.complex64)
            self._gatherer.fill_Y(groups, Y)
            Y = np.ascontiguousarray(Y.transpose(0, 2, 3, 1))
        single = experiment if experiment is not None else (0 if self.n_experiments == 1 else None)
        positions, start = self.positions, self.positions_start
        return grouped_dict(
            self.amplitudes,
            groups,
            scale=np.asarray(self.grouping.x_scale, np.float32)[group_experiment],
            positions=(positions[:, 0], positions[:, 1]),
            positions_start=(start[:, 0], start[:, 1]),
            centres=(g[GroupingFile.COORDS_OFFSETS][keep], g[GroupingFile.COORDS_START_OFFSETS][keep]),
            relative=(g[GroupingFile.COORDS_RELATIVE][keep], g[GroupingFile.COORDS_START_RELATIVE][keep]),
            Y=Y,
            objectGuess=None if single is None else self.object(single),
            x_scale=self.x_scale if single is None else self.x_scale[single],
            intensity_scale=self.intensity_scale if single is None else self.intensity_scale[single],
        )

    def container(self, experiment: int | None = None, **kwargs: Any) -> PtychoDataContainer:
        """A :class:`~ptychodata.grouped.PtychoDataContainer` (§8) of one experiment."""
        if experiment is None:
            if self.n_experiments != 1:
                raise StoreError(f"{self.path}: {self.n_experiments} experiments; pass experiment=...")
            experiment = 0
        probe = self.probe(experiment)
        if probe is None:
            raise StoreError(f"{self.path}: experiment {experiment} has no probe; the §8 container needs one")
        return PtychoDataContainer.from_grouped(self.grouped_data(experiment), probe, **kwargs)

    def subset(self, indices: Any) -> Store:
        """A store serving this store's groups ``indices`` (positions in this store), with
        the whole API; it opens the same build again, so each can be closed on its own."""
        index = self._check_indices(indices)
        return Store(
            self.path,
            build_id=self.build_id,
            groups=self.group_indices[index],
            sorted_reads=self.sorted_reads,
            threads=self.threads,
            **self._held,
        )

    def split(
        self, val_fraction: float, *, by: str = "region", seed: int | None = 0, tiles: int = 4
    ) -> tuple[Store, Store]:
        """(train, val) stores over disjoint parts of this store's groups; ``by="region"``
        holds out whole tiles of each scan and drops training groups that share a pattern
        with validation (see :func:`~ptychodata.store._split.split_groups`)."""
        train, val = split_groups(
            self.group_centres,
            self.group_experiment,
            self.groups,
            val_fraction,
            by=by,
            seed=seed,
            tiles=tiles,
            n_patterns=self.n_patterns,
        )
        return self.subset(train), self.subset(val)

    def info(self) -> dict[str, Any]:
        """A JSON-ready summary: paths, build ids, sizes, config, per-experiment sources and scales."""
        build = self._open()
        sizes = [entry.bytes for entry in self.frames.files.values()]
        sizes += [entry.bytes for entry in self.grouping.files.values()]
        return {
            "path": str(self.path),
            "build_id": self.build_id,
            "build_path": str(build.grouping_dir),
            "frames_build_id": self.frames_build_id,
            "frames_path": str(build.frames_dir),
            "n_patterns": self.frames.n_patterns,
            "N": self.N,
            "n_groups": len(self),
            "n_groups_in_grouping": self.grouping.n_groups,
            "C": self.C,
            "materialized": self.grouping.materialized,
            "frames_dtype": self.frames.patterns.dtype,
            "frames_values": self.frames.patterns.values,
            "frames_conversion": self.frames.patterns.conversion,
            "zero_copy_source": self.frames.patterns.file,
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
                    "metadata": e.metadata,
                }
                for e in self.frames.experiments
            ],
        }

    def __repr__(self) -> str:
        if self.closed:
            return f"Store({str(self.path)!r}, closed)"
        return (
            f"Store({str(self.path)!r}, build={self.build_id[:8]}, groups={len(self)}, C={self.C}, N={self.N}, "
            f"experiments={self.n_experiments})"
        )


def _checked_selection(groups: Any, n_groups: int) -> np.ndarray | None:
    """The grouping's groups a store serves, as (B,) int64 in [0, n_groups), or None for all."""
    if groups is None:
        return None
    selection = np.asarray(groups)
    if selection.ndim != 1 or not (selection.size == 0 or selection.dtype.kind in "iu"):
        raise GroupIndexError(f"groups must be 1-D integers; got shape {selection.shape} {selection.dtype}")
    if selection.size and (selection.min() < 0 or selection.max() >= n_groups):
        raise GroupIndexError(f"groups must lie in [0, {n_groups}); got {selection.min()}..{selection.max()}")
    return selection.astype(np.int64)


def require_ground_truth(store: Store) -> None:
    """``ParameterError`` unless ``store`` can serve ground-truth patches Y (stored patches,
    or an object for every experiment)."""
    if not store.has_ground_truth:
        raise ParameterError(f"{store.path}: the store has no object or Y, so with_Y cannot be served")
