"""One grouping build and the frames build it was made from, opened for reading: their
manifests, their files memory-mapped, reader locks held, and the arrays a batch is
gathered from."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ptychodata._runtime import rows_per_chunk
from ptychodata.errors import ParameterError, StoreError, StoreNotFoundError
from ptychodata.store._batch import BatchSources
from ptychodata.store._cache_paths import (
    FRAMES_PREFIX,
    MANIFEST,
    OBJECT_PREFIX,
    BuildSlot,
    FrameFile,
    GroupingFile,
    ReaderLock,
    npy_name,
    npy_stem,
    object_stem,
    open_current,
)
from ptychodata.store._files import check_npy, map_npy
from ptychodata.store._frames import FramesEncoding, map_patterns
from ptychodata.store._ids import not_a_link
from ptychodata.store._manifest import FrameManifest, GroupingManifest, read_manifest
from ptychodata.store._schema import corrupt

__all__ = ["OpenBuild"]


class OpenBuild:
    """The files of one grouping build and its frames build, mapped, with reader locks.

    Parameters
    ----------
    grouping_path : Path
        The grouping's slot directory.
    build_id : str, optional
        The grouping build to open; default the live one (``current``).
    reader_locks : bool
        Hold a reader lock on both builds (so that collection skips them). False where a
        holder pins them instead (a dataset's builds): no descriptor is held for a lock.
    tables_in_memory : bool
        Read the small tables into memory (see :func:`_map_files`).

    Raises
    ------
    StoreNotFoundError
        The build, or the frames build it names, is gone.
    StoreError
        A manifest or file does not match what the build records.
    """

    def __init__(self, grouping_path: Path, build_id: str | None, *, reader_locks: bool = True,
                 tables_in_memory: bool = False):
        slot = BuildSlot(grouping_path, grouping_path)  # lock unused: readers never build
        if build_id is None:
            build_id, grouping_lock = open_current(slot)
            if not reader_locks:
                grouping_lock.close()
        else:
            grouping_lock = ReaderLock(slot.build_dir(build_id)) if reader_locks else None
        self.reader_locks = reader_locks
        self.locks = [grouping_lock] if reader_locks else []
        try:
            self.grouping_dir = slot.build_dir(build_id)
            not_a_link(self.grouping_dir, f"{grouping_path}: build {build_id}")
            self.grouping: GroupingManifest = read_manifest(self.grouping_dir, GroupingManifest)
            self.frames_dir = BuildSlot(grouping_path.parent.parent, grouping_path).build_dir(
                self.grouping.frames_build_id
            )
            not_a_link(self.frames_dir, f"{grouping_path}: frames build")
            self.frames: FrameManifest = self._lock_frames()
            self._check_pair()
            self.frame_arrays = _map_files(self.frames_dir, self.frames, tables_in_memory)
            self.group_arrays = _map_files(self.grouping_dir, self.grouping, tables_in_memory)
            self._map_patterns()
            self._check_indices()
        except BaseException:
            self.close()
            raise

    def _check_pair(self) -> None:
        """``StoreCorruptError`` unless the grouping build belongs to this frames build: its
        frames key, one scale per experiment, and X of the frames' N."""
        where = str(self.grouping_dir / MANIFEST)
        frames, grouping = self.frames, self.grouping
        if grouping.frames_key != frames.key or self.frames_dir.parent.parent.name != f"{FRAMES_PREFIX}{frames.key}":
            raise corrupt(where, f"frames_key {grouping.frames_key}, but the frames build {self.frames_dir} has key "
                                 f"{frames.key}")
        E = len(frames.experiments)
        if len(grouping.x_scale) != E:
            raise corrupt(where, f"{len(grouping.x_scale)} x_scale values for a frames build of {E} experiment(s)")
        X = grouping.files.get(npy_name(GroupingFile.X))
        if X is not None and X.shape[2:] != [frames.N, frames.N]:
            raise corrupt(where, f"files.X.npy has shape {X.shape}; the frames are {frames.N}×{frames.N}")
        try:
            encoding = FramesEncoding.of(frames.patterns)
        except ParameterError as exc:
            raise corrupt(str(self.frames_dir / MANIFEST), f"patterns: {exc}") from None
        if encoding.storage.str != frames.patterns.storage:
            raise corrupt(str(self.frames_dir / MANIFEST), f"patterns.storage {frames.patterns.storage!r}; "
                                                            f"{encoding.dtype} {encoding.values} is stored as "
                                                            f"{encoding.storage.str!r}")

    def _check_indices(self) -> None:
        """``StoreCorruptError`` unless every index a batch follows stays in its table: group
        members in [0, M), experiments of groups and of patterns in [0, E) (one pass over the
        index tables, not over the patterns)."""
        M, E = self.frames.n_patterns, len(self.frames.experiments)
        for directory, arrays, stem, limit, what in (
            (self.grouping_dir, self.group_arrays, GroupingFile.GROUPS, M, "pattern"),
            (self.grouping_dir, self.group_arrays, GroupingFile.GROUP_EXPERIMENT, E, "experiment"),
            (self.frames_dir, self.frame_arrays, FrameFile.EXPERIMENT_ID, E, "experiment"),
        ):
            table = arrays[stem]
            low, high = _range(table)
            if table.size and (low < 0 or high >= limit):
                raise corrupt(str(directory / npy_name(stem)),
                              f"holds {what} indices in [{low}, {high}]; the build has {limit} {what}s (0..{limit - 1})")

    def _lock_frames(self) -> FrameManifest:
        """Hold the frames build this grouping was made from, and read its manifest."""
        try:
            if self.reader_locks:
                self.locks.append(ReaderLock(self.frames_dir))
            elif not (self.frames_dir / MANIFEST).is_file():
                raise StoreNotFoundError(str(self.frames_dir))
        except StoreNotFoundError:
            raise StoreNotFoundError(
                f"{self.grouping_dir}: its frames build {self.grouping.frames_build_id} was removed; "
                "prepare the store again"
            ) from None
        frames = read_manifest(self.frames_dir, FrameManifest)
        if frames.build_id != self.grouping.frames_build_id:
            raise StoreError(f"{self.frames_dir}: manifest names build {frames.build_id}, expected "
                             f"{self.grouping.frames_build_id}")
        return frames

    def _map_patterns(self) -> None:
        """The patterns of a zero-copy build from the source file it references (checked
        against its recorded size and mtime); a copy's checked against its manifest."""
        if self.frames.patterns.file is not None:
            self.frame_arrays[FrameFile.PATTERNS] = map_patterns(self.frames_dir, self.frames.patterns)
        elif self.frame_arrays[FrameFile.PATTERNS].dtype != np.dtype(self.frames.patterns.storage):
            raise StoreError(f"{self.frames_dir}: patterns.npy is not stored as its manifest says; prepare again")

    def batch_sources(self) -> BatchSources:
        """What a batch of this build is gathered from."""
        f, g = self.frame_arrays, self.group_arrays
        return BatchSources(
            patterns=f[FrameFile.PATTERNS],
            encoding=FramesEncoding.of(self.frames.patterns),
            groups=g[GroupingFile.GROUPS],
            group_experiment=g[GroupingFile.GROUP_EXPERIMENT],
            centres=g[GroupingFile.COORDS_OFFSETS],
            relative=g[GroupingFile.COORDS_RELATIVE],
            x_scale=np.asarray(self.grouping.x_scale, np.float32),
            probes=f.get(FrameFile.PROBES),
            masks=f.get(FrameFile.MASKS),
            X=g.get(GroupingFile.X),
            Y=f.get(FrameFile.Y),
            objects=LazyObjects(f, len(self.frames.experiments)),
            xcoords=f[FrameFile.XCOORDS],
            ycoords=f[FrameFile.YCOORDS],
            experiment_of_pattern=f[FrameFile.EXPERIMENT_ID],
            start_centres=g.get(GroupingFile.COORDS_START_OFFSETS),
            start_relative=g.get(GroupingFile.COORDS_START_RELATIVE),
        )

    def close(self) -> None:
        for lock in self.locks:
            lock.close()
        self.locks = []
        self.frame_arrays, self.group_arrays = BuildFiles(), BuildFiles()


def _range(table: np.ndarray) -> tuple[int, int]:
    """(min, max) of an index table, in row chunks (its pages released as it goes)."""
    if not table.size:
        return 0, 0
    flat = table.reshape(len(table), -1)
    rows = rows_per_chunk(max(1, flat[:1].nbytes), 16 << 20)
    low, high = None, None
    for start in range(0, len(flat), rows):
        chunk = flat[start : start + rows]
        chunk_low, chunk_high = int(chunk.min()), int(chunk.max())
        low = chunk_low if low is None else min(low, chunk_low)
        high = chunk_high if high is None else max(high, chunk_high)
    return low, high


# Files as large as the patterns, read row by row or in part: always mapped.
_LARGE = (FrameFile.PATTERNS, FrameFile.Y, GroupingFile.X)


class BuildFiles(dict):
    """A build's arrays by stem; an object entry may be a deferred mapping, made on first use."""

    def __getitem__(self, stem: str) -> np.ndarray:
        value = super().__getitem__(stem)
        if callable(value):
            value = value()
            self[stem] = value
        return value

    def get(self, stem: str, default: Any = None) -> Any:
        return self[stem] if stem in self else default


class LazyObjects(Sequence):
    """Each experiment's object (or None), from a build's files, mapped when first asked for."""

    def __init__(self, files: BuildFiles, n_experiments: int):
        self._files, self._n = files, n_experiments

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, experiment: int) -> np.ndarray | None:  # type: ignore[override]
        if not 0 <= int(experiment) < self._n:
            raise IndexError(experiment)
        return self._files.get(object_stem(int(experiment)))


def _map_files(
    directory: Path, manifest: FrameManifest | GroupingManifest, tables_in_memory: bool = False
) -> BuildFiles:
    """Each file of a build mapped as its manifest entry says (its size and header checked on
    the way), by stem. ``tables_in_memory``: the tables (positions, groups, scales; about 1 %
    of the patterns' bytes) are read into memory and their mappings closed, and objects are
    mapped only when first used, so that the build holds a file descriptor only for the files
    a batch reads."""
    arrays = BuildFiles()
    for name, entry in manifest.files.items():
        stem, path = npy_stem(name), directory / name
        if not tables_in_memory or stem in _LARGE:
            arrays[stem] = map_npy(path, entry)
        elif stem.startswith(OBJECT_PREFIX):
            check_npy(path, entry)
            arrays[stem] = functools.partial(map_npy, path, entry)
        else:
            arrays[stem] = np.array(map_npy(path, entry))
    return arrays
