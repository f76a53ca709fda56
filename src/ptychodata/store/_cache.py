"""The cache directory: list, verify, prune and remove stores.

A cache holds frames slots ``frames-<key>/`` (each with its builds and its groupings'
slots; directories named in :mod:`ptychodata.store._cache_paths`). ``prune`` deletes what no one can
use any more: builds that are not live and that no reader holds, and temporaries of
builds whose process died. ``remove`` deletes whole stores.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from ptychodata.errors import StoreCorruptError, StoreError
from ptychodata.store._cache_paths import (
    MANIFEST,
    TRASH_PREFIX,
    BuildSlot,
    CachePaths,
    file_lock,
    pinned_builds,
)
from ptychodata.store._files import check_npy, file_digest
from ptychodata.store._manifest import FrameManifest, GroupingManifest, check_files, read_manifest
from ptychodata.store._open_build import OpenBuild

__all__ = ["CachedStore", "list_stores", "prune_cache", "remove_store", "verify_store"]


@dataclass(frozen=True)
class CachedStore:
    """One frames slot of a cache: its live build's manifest, its groupings, its size."""

    slot: BuildSlot
    manifest: FrameManifest | None
    builds: list[str]
    groupings: list[tuple[BuildSlot, GroupingManifest | None]]
    bytes_on_disk: int
    problem: str | None

    @property
    def path(self) -> Path:
        return self.slot.path

    @property
    def key(self) -> str:
        return self.slot.key


def list_stores(cache_dir: Path) -> list[CachedStore]:
    """Every frames slot under ``cache_dir``, newest first."""
    stores = [_describe(slot) for slot in CachePaths(Path(cache_dir)).frame_slots()]
    return sorted(stores, key=lambda s: s.manifest.created if s.manifest else "", reverse=True)


def _live(slot: BuildSlot, kind: type) -> tuple[FrameManifest | GroupingManifest | None, str | None]:
    try:
        build_id = slot.current_id()
        if build_id is None:
            return None, f"{slot.path}: no live build (not a store of this ptychodata version, or never completed)"
        return read_manifest(slot.build_dir(build_id), kind), None
    except StoreError as exc:
        return None, str(exc)


def _describe(slot: BuildSlot) -> CachedStore:
    manifest, problem = _live(slot, FrameManifest)
    groupings = [(grouping, _live(grouping, GroupingManifest)[0]) for grouping in slot.groupings()]
    return CachedStore(slot, manifest, slot.build_ids(), groupings, _bytes_under(slot.path), problem)


def _bytes_under(root: Path) -> int:
    """Bytes of the regular files under ``root`` (symbolic links not followed; files removed meanwhile skipped)."""
    total = 0
    for directory, _, names in os.walk(root):
        for name in names:
            with contextlib.suppress(OSError):
                info = os.lstat(os.path.join(directory, name))
                if stat.S_ISREG(info.st_mode):
                    total += info.st_size
    return total


def verify_store(path: Path, *, content: bool = True) -> list[str]:
    """Problems of a frames slot's live build and its groupings' live builds; an empty
    list means all is well.

    Checks the manifests (every field, and that they agree with each other), each file's
    size and ``.npy`` header, the index tables (every group member and experiment in
    range), that each grouping's frames build exists, and that each source file is
    unchanged (size and modification time). With ``content=True`` it also re-hashes every
    file of the live builds against the SHA-256 recorded when it was written (a build of
    an older version records none: that is reported, never passed as verified) and each
    source against its content hash (zero-copy builds prepared without ``verify=True``
    record none: their sources are checked by size and modification time only).
    """
    slot = _frames_slot(Path(path))
    manifest, problem = _live(slot, FrameManifest)
    if manifest is None:
        return [problem]
    frames_dir = slot.build_dir(manifest.build_id)
    broken = _structure_problems(frames_dir, manifest)
    if broken:
        return broken
    problems = _content_problems(frames_dir, manifest) if content else []
    for experiment in manifest.experiments:
        source = experiment.source
        changed = source.changed()
        if changed:
            problems.append(changed)
        elif (
            content
            and source.path is not None
            and source.content_hash is not None  # a zero-copy build prepared without verify=True
            and file_digest(source.path) != source.content_hash
        ):
            problems.append(f"source {source.path}: content differs from the hash recorded in the store")
    for grouping in slot.groupings():
        grouping_manifest, problem = _live(grouping, GroupingManifest)
        if grouping_manifest is None:
            problems.append(problem)
            continue
        grouping_dir = grouping.build_dir(grouping_manifest.build_id)
        found = _structure_problems(grouping_dir, grouping_manifest)
        problems += found or (_content_problems(grouping_dir, grouping_manifest) if content else [])
        if not slot.build_dir(grouping_manifest.frames_build_id).is_dir():
            problems.append(f"{grouping.path}: its frames build {grouping_manifest.frames_build_id} is gone")
            continue
        if not found:
            try:  # the two manifests together, and the index tables
                OpenBuild(grouping.path, grouping_manifest.build_id).close()
            except StoreError as exc:
                problems.append(str(exc))
        if grouping_manifest.frames_build_id != manifest.build_id:
            problems.append(f"{grouping.path}: made from an older frames build (prepare rebuilds it)")
    return problems


def _structure_problems(directory: Path, manifest: FrameManifest | GroupingManifest) -> list[str]:
    """The first file of a build that is missing, of another size or another header, if any."""
    try:
        for name, entry in manifest.files.items():
            check_npy(directory / name, entry)
    except StoreError as exc:
        return [str(exc)]
    return []


def _content_problems(directory: Path, manifest: FrameManifest | GroupingManifest) -> list[str]:
    """Each file of a build whose bytes no longer hash to the SHA-256 recorded for it (or that
    the build records no hashes to check against)."""
    if any(entry.sha256 is None for entry in manifest.files.values()):
        return [
            f"{directory}: no content hashes recorded (built by an older ptychodata), so its files' content is "
            "NOT verified; remove the store ('ptychodata cache remove KEY') and prepare it again to record them"
        ]
    problems = []
    for name, entry in sorted(manifest.files.items()):
        if file_digest(directory / name) != entry.sha256:
            problems.append(
                f"{directory / name}: its content differs from the SHA-256 recorded when it was written (damaged "
                "or edited); remove the store ('ptychodata cache remove KEY') and prepare it again"
            )
    return problems


def _frames_slot(path: Path) -> BuildSlot:
    paths = CachePaths(path.parent)
    if not path.name.startswith("frames-") or not path.is_dir():
        raise StoreError(f"{path}: not a frames store directory (frames-<key>)")
    return paths.frames_slot(path.name[len("frames-") :])


@contextlib.contextmanager
def _all_locks(slot: BuildSlot):
    """Hold the frames slot's lock and every grouping slot's lock (frames first: the order
    prepare never inverts, since it holds at most one lock at a time)."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(file_lock(slot.lock))
        for grouping in slot.groupings():
            stack.enter_context(file_lock(grouping.lock))
        yield


def remove_store(path: Path, *, force: bool = False) -> None:
    """Delete one frames store with all its builds and groupings.

    Builds that a reader holds open are refused (``StoreError`` naming them) unless
    ``force``; forced, open readers keep the data they have mapped, and re-opening
    (e.g. in a new DataLoader worker) raises ``StoreError``. Lock files stay.
    """
    slot = _frames_slot(Path(path))
    with _all_locks(slot):
        if not force:
            in_use = [
                f"{s.path.name}/{build}"
                for s in (slot, *slot.groupings())
                for build in s.build_ids()
                if s.is_read(build)
            ]
            if in_use:
                raise StoreError(
                    f"{slot.path}: builds in use by a reader ({', '.join(in_use)}); close them, or remove with --force"
                )
            pinned = [f"{s.path.name}/{build}" for s in (slot, *slot.groupings()) for build in pinned_builds(s)]
            if pinned:
                raise StoreError(
                    f"{slot.path}: builds a dataset lists ({', '.join(pinned)}); remove the scans from the dataset "
                    "first, or remove with --force"
                )
        trash = slot.path.parent / f"{TRASH_PREFIX}{slot.path.name}-{os.getpid()}"
        os.rename(slot.path, trash)
        shutil.rmtree(trash, ignore_errors=True)


def prune_cache(cache_dir: Path, *, older_than_s: float | None = None) -> int:
    """Delete, in every store of the cache, builds that are not live, that no dataset lists and
    that no reader holds (and frames builds no live grouping was made from), temporaries of dead
    builds, and removals that were interrupted. With ``older_than_s``, only builds made longer
    ago than that (on a shared file system a reader on another host holds no lock this host
    sees: give it time). Returns how many directories were deleted."""
    cache_dir = Path(cache_dir)
    removed = 0
    for leftover in cache_dir.glob(f"{TRASH_PREFIX}frames-*") if cache_dir.is_dir() else []:
        shutil.rmtree(leftover, ignore_errors=True)
        removed += 1
    for slot in CachePaths(cache_dir).frame_slots():
        for grouping in slot.groupings():
            with file_lock(grouping.lock):
                before = len(grouping.build_ids())
                removed += grouping.remove_temporaries()
                with contextlib.suppress(StoreCorruptError):  # a damaged pointer: which build is live is unknown
                    collect_builds(grouping, keep={grouping.current_id()}, older_than_s=older_than_s)
                removed += before - len(grouping.build_ids())
        with file_lock(slot.lock):
            before = len(slot.build_ids())
            removed += slot.remove_temporaries()
            with contextlib.suppress(StoreCorruptError):
                collect_frames(slot, older_than_s=older_than_s)
            removed += before - len(slot.build_ids())
    return removed


def live_manifest(slot: BuildSlot, kind: type) -> FrameManifest | GroupingManifest | None:
    """The manifest of the slot's live build when it is complete, else None."""
    try:
        build_id = slot.current_id()
        if build_id is None:
            return None
        directory = slot.build_dir(build_id)
        manifest = read_manifest(directory, kind)
        check_files(directory, manifest.files)
    except StoreError:
        return None
    return manifest if manifest.build_id == build_id else None


def collect_builds(slot: BuildSlot, keep: set[str], *, older_than_s: float | None = None) -> None:
    """Delete the slot's builds that are not in ``keep``, not pinned (:func:`pinned_builds`),
    older than ``older_than_s`` when given, and that no reader holds."""
    keep = keep | pinned_builds(slot)
    for build_id in slot.build_ids():
        if build_id not in keep and _older(slot.build_dir(build_id), older_than_s):
            slot.remove_build_if_unread(build_id)


def _older(build: Path, seconds: float | None) -> bool:
    if seconds is None:
        return True
    try:
        return time.time() - (build / MANIFEST).stat().st_mtime > seconds
    except OSError:
        return False


def collect_frames(slot: BuildSlot, *, older_than_s: float | None = None) -> None:
    """Delete old frames builds that no reader holds and no live grouping was made from.
    Hold the frames slot's lock."""
    keep = {slot.current_id()}
    for grouping in slot.groupings():
        try:
            grouping.current_id()
        except StoreCorruptError:
            return  # which frames build that grouping was made from is unknown: keep them all
        manifest = live_manifest(grouping, GroupingManifest)
        if manifest is not None:
            keep.add(manifest.frames_build_id)
    collect_builds(slot, keep, older_than_s=older_than_s)
