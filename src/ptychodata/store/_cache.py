"""The cache directory: list, verify and remove stores.

A cache holds frame stores ``frames-<key>/`` (each with ``groupings/<key>/``), their lock
files, and possibly ``.tmp-*`` directories left by builds that died; those are never
opened as stores and are removed by the next build of the same key or by ``remove``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from ptychodata.errors import StoreError
from ptychodata.store._files import TEMP_PREFIX, file_lock
from ptychodata.store._manifest import FrameManifest, GroupingManifest, check_files, read_manifest

__all__ = ["CachedStore", "list_stores", "remove_store", "verify_store"]


@dataclass(frozen=True)
class CachedStore:
    """One frame store in a cache, with its groupings and size on disk."""

    path: Path
    manifest: FrameManifest | None
    groupings: list[tuple[Path, GroupingManifest | None]]
    bytes_on_disk: int
    problem: str | None

    @property
    def key(self) -> str:
        return self.path.name.removeprefix("frames-")


def list_stores(cache_dir: Path) -> list[CachedStore]:
    """Every frame store under ``cache_dir`` (temporaries excluded), newest first."""
    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        return []
    stores = [_describe(path) for path in cache_dir.glob("frames-*") if path.is_dir()]
    return sorted(stores, key=lambda s: s.manifest.created if s.manifest else "", reverse=True)


def _describe(path: Path) -> CachedStore:
    problem = None
    try:
        manifest = read_manifest(path, FrameManifest)
    except StoreError as exc:
        manifest, problem = None, str(exc)
    groupings = []
    for grouping in sorted((path / "groupings").glob("*")):
        if grouping.is_dir() and not grouping.name.startswith(TEMP_PREFIX):
            try:
                groupings.append((grouping, read_manifest(grouping, GroupingManifest)))
            except StoreError:
                groupings.append((grouping, None))
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return CachedStore(path, manifest, groupings, size, problem)


def verify_store(path: Path, *, content: bool = True) -> list[str]:
    """Problems of a frame store and its groupings; an empty list means all is well.

    Checks manifests and file sizes, that each source file is unchanged (size and
    modification time) and, with ``content=True``, that its content hash still matches.
    """
    from ptychodata.scan import ScanData
    from ptychodata.store._prepare import content_hash

    path = Path(path)
    try:
        manifest = read_manifest(path, FrameManifest)
        check_files(path, manifest.files)
    except StoreError as exc:
        return [str(exc)]
    problems = []
    for experiment in manifest.experiments:
        source = experiment.source
        changed = source.changed()
        if changed:
            problems.append(changed)
        elif (
            content
            and source.path is not None
            and content_hash(ScanData.load(source.path, check_values=False)) != source.content_hash
        ):
            problems.append(f"source {source.path}: content differs from the hash recorded in the store")
    for grouping, grouping_manifest in _describe(path).groupings:
        if grouping_manifest is None:
            problems.append(f"{grouping}: unreadable grouping manifest")
            continue
        try:
            check_files(grouping, grouping_manifest.files)
        except StoreError as exc:
            problems.append(str(exc))
    return problems


def remove_store(path: Path) -> None:
    """Delete one frame store (with its groupings) under its build lock."""
    path = Path(path)
    if not path.name.startswith("frames-") or not path.is_dir():
        raise StoreError(f"{path}: not a frame store directory (frames-<key>)")
    with file_lock(path.parent / f"{path.name}.lock"):
        shutil.rmtree(path)
    (path.parent / f"{path.name}.lock").unlink(missing_ok=True)


def remove_temporaries(cache_dir: Path) -> int:
    """Remove ``.tmp-*`` build directories whose build is not running (its lock is free)."""
    removed = 0
    for temporary in Path(cache_dir).glob(f"{TEMP_PREFIX}frames-*"):
        name = temporary.name[len(TEMP_PREFIX) :].rsplit("-", 2)[0]
        with file_lock(Path(cache_dir) / f"{name}.lock"):
            if temporary.exists():
                shutil.rmtree(temporary, ignore_errors=True)
                removed += 1
    return removed
