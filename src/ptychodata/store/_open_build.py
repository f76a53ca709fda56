"""One grouping build and the frames build it was made from, opened for reading: their
manifests, their files memory-mapped, reader locks held, and the arrays a batch is
gathered from."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ptychodata.errors import StoreError, StoreNotFoundError
from ptychodata.store._batch import BatchSources
from ptychodata.store._cache_paths import (
    BuildSlot,
    FrameFile,
    GroupingFile,
    ReaderLock,
    npy_stem,
    object_stem,
    open_current,
)
from ptychodata.store._files import map_npy
from ptychodata.store._frames import FramesEncoding, map_patterns
from ptychodata.store._manifest import FrameManifest, GroupingManifest, read_manifest

__all__ = ["OpenBuild"]


class OpenBuild:
    """The files of one grouping build and its frames build, mapped, with reader locks.

    Parameters
    ----------
    grouping_path : Path
        The grouping's slot directory.
    build_id : str, optional
        The grouping build to open; default the live one (``current``).

    Raises
    ------
    StoreNotFoundError
        The build, or the frames build it names, is gone.
    StoreError
        A manifest or file does not match what the build records.
    """

    def __init__(self, grouping_path: Path, build_id: str | None):
        slot = BuildSlot(grouping_path, grouping_path)  # lock unused: readers never build
        if build_id is None:
            build_id, grouping_lock = open_current(slot)
        else:
            grouping_lock = ReaderLock(slot.build_dir(build_id))
        self.locks = [grouping_lock]
        try:
            self.grouping_dir = slot.build_dir(build_id)
            self.grouping: GroupingManifest = read_manifest(self.grouping_dir, GroupingManifest)
            self.frames_dir = BuildSlot(grouping_path.parent.parent, grouping_path).build_dir(
                self.grouping.frames_build_id
            )
            self.frames: FrameManifest = self._lock_frames()
            self.frame_arrays = _map_files(self.frames_dir, self.frames)
            self.group_arrays = _map_files(self.grouping_dir, self.grouping)
            self._map_patterns()
        except BaseException:
            self.close()
            raise

    def _lock_frames(self) -> FrameManifest:
        """Hold the frames build this grouping was made from, and read its manifest."""
        try:
            self.locks.append(ReaderLock(self.frames_dir))
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
            objects=[f.get(object_stem(e)) for e in range(len(self.frames.experiments))],
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
        self.frame_arrays, self.group_arrays = {}, {}


def _map_files(directory: Path, manifest: FrameManifest | GroupingManifest) -> dict[str, np.ndarray]:
    """Each file of a build mapped as its manifest entry says (its size checked on the way),
    by stem."""
    return {npy_stem(name): map_npy(directory / name, entry) for name, entry in manifest.files.items()}
