"""Store manifests: what a store holds, where it came from, and how to check its files.

Two levels. A *frames build* holds the patterns of its sources once and is keyed by those
sources; a *grouping build* holds one grouping config's index table, is keyed by the
frames key plus the config, and names the frames build it was made from. Both manifests
carry the schema version first, dtypes as ``np.dtype.str`` and shapes as int lists, and
are written last: a build directory is complete exactly when its manifest is there.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ptychodata._runtime import __version__, canonical_json
from ptychodata.errors import StoreError, StoreNotFoundError
from ptychodata.store._cache_paths import MANIFEST, npy_files

__all__ = [
    "SCHEMA_VERSION",
    "FileEntry",
    "FrameManifest",
    "GroupingManifest",
    "PatternsEntry",
    "SourceEntry",
    "stable_key",
]

# 3: patterns described by FrameManifest.patterns (stored dtype, conversion, or a reference to
#    the source file); content hashes made of per-chunk SHA-256 digests.
SCHEMA_VERSION = 3


def stable_key(*parts: Any) -> str:
    """A short hex key of JSON-serialisable parts (order-sensitive)."""
    return hashlib.blake2b(canonical_json(list(parts)).encode(), digest_size=10).hexdigest()


@dataclass(frozen=True)
class FileEntry:
    """One ``.npy`` file of a store: its shape, dtype and exact size on disk."""

    shape: list[int]
    dtype: str
    bytes: int

    @classmethod
    def of(cls, path: Path) -> FileEntry:
        array = np.load(path, mmap_mode="r")
        return cls(shape=[int(n) for n in array.shape], dtype=array.dtype.str, bytes=path.stat().st_size)


@dataclass(frozen=True)
class SourceEntry:
    """One source scan: its file identity (None for in-memory scans) and content hash."""

    path: str | None
    size: int | None
    mtime_ns: int | None
    content_hash: str | None  # None: a zero-copy build prepared without verify=True

    def identity(self) -> dict[str, Any]:
        """What the frame key depends on: the file's path, size and mtime, or the content hash."""
        if self.path is None:
            return {"content_hash": self.content_hash}
        return {"path": self.path, "size": self.size, "mtime_ns": self.mtime_ns}

    def changed(self) -> str | None:
        """Why the file on disk no longer matches this entry, or None."""
        if self.path is None:
            return None
        try:
            stat = os.stat(self.path)
        except OSError:
            return f"source {self.path} is gone"
        if stat.st_size != self.size or stat.st_mtime_ns != self.mtime_ns:
            return f"source {self.path} changed (size or modification time)"
        return None


@dataclass(frozen=True)
class PatternsEntry:
    """How a frames build holds its (M, N, N) patterns.

    ``dtype`` and ``values`` name the encoding (:class:`~ptychodata.store._frames.FramesEncoding`),
    ``storage`` the NumPy dtype on disk and ``conversion`` the formula back to float32
    amplitudes. A copy lives in the build (``file`` None); a zero-copy build references
    ``file`` (the source) at byte ``offset``, and records that file's ``size`` and
    ``mtime_ns`` so a store whose source changed is refused at open.
    """

    dtype: str
    values: str
    storage: str
    conversion: str
    shape: list[int]
    file: str | None = None
    offset: int = 0
    size: int | None = None
    mtime_ns: int | None = None

    @property
    def is_reference(self) -> bool:
        return self.file is not None

    def changed(self) -> str | None:
        """Why the referenced file no longer matches this entry, or None (copies: always None)."""
        if self.file is None:
            return None
        try:
            stat = os.stat(self.file)
        except OSError:
            return f"{self.file}: the source this zero-copy store reads its patterns from is gone"
        if stat.st_size != self.size or stat.st_mtime_ns != self.mtime_ns:
            return (
                f"{self.file}: the source this zero-copy store reads its patterns from changed (size "
                f"{stat.st_size}, mtime_ns {stat.st_mtime_ns}; recorded {self.size}, {self.mtime_ns})"
            )
        return None


@dataclass(frozen=True)
class ExperimentEntry:
    """One experiment of a frame store: its pattern range and what else it holds."""

    experiment_id: int
    source: SourceEntry
    start: int
    stop: int
    object_shape: list[int] | None
    nphotons: float | None
    has_Y: bool
    has_probe: bool = True
    has_mask: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def n_points(self) -> int:
        return self.stop - self.start


class _Manifest:
    """What both manifests share: JSON form with the schema version and format first."""

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        return {"schema_version": values.pop("schema_version"), "format": values.pop("format"), **values}


@dataclass(frozen=True)
class FrameManifest(_Manifest):
    """A frames build's record: sources, pattern count, files; ``build_id`` is new per build."""

    key: str
    build_id: str
    N: int
    n_patterns: int
    intensity: bool | None
    load_options: dict[str, Any]
    experiments: list[ExperimentEntry]
    patterns: PatternsEntry
    files: dict[str, FileEntry]
    created: str
    library_version: str
    schema_version: int = SCHEMA_VERSION
    format: str = "ptychodata-frames"

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FrameManifest:
        values = dict(values)
        values["experiments"] = [
            ExperimentEntry(**{**e, "source": SourceEntry(**e["source"])}) for e in values["experiments"]
        ]
        values["patterns"] = PatternsEntry(**values["patterns"])
        values["files"] = {name: FileEntry(**entry) for name, entry in values["files"].items()}
        return cls(**values)


@dataclass(frozen=True)
class GroupingManifest(_Manifest):
    """A grouping build's record: the frames build it was made from, its config, scale
    factors per experiment, files."""

    key: str
    build_id: str
    frames_key: str
    frames_build_id: str
    config: dict[str, Any]
    n_groups: int
    C: int
    x_scale: list[float]
    intensity_scale: list[float | None]
    materialized: bool
    files: dict[str, FileEntry]
    created: str
    library_version: str
    schema_version: int = SCHEMA_VERSION
    format: str = "ptychodata-grouping"
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> GroupingManifest:
        values = dict(values)
        values["files"] = {name: FileEntry(**entry) for name, entry in values["files"].items()}
        return cls(**values)


def write_manifest(directory: Path, manifest: FrameManifest | GroupingManifest) -> None:
    """Write ``manifest.json`` (last, fsync-ed): its presence marks a complete directory."""
    path = Path(directory) / MANIFEST
    with open(path, "w") as handle:
        json.dump(manifest.to_dict(), handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())


def read_manifest(directory: Path, kind: type[FrameManifest | GroupingManifest]):
    """Read and parse a manifest, or raise ``StoreError`` naming the file and what is wrong."""
    path = Path(directory) / MANIFEST
    try:
        with open(path) as handle:
            values = json.load(handle)
    except FileNotFoundError:
        raise StoreNotFoundError(f"{directory}: not a ptychodata store build ({MANIFEST} is missing)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise StoreError(f"{path}: unreadable manifest ({exc})") from exc
    expected_format = kind.__dataclass_fields__["format"].default
    if values.get("format") != expected_format:
        raise StoreError(f"{path}: format {values.get('format')!r}; expected {expected_format!r}")
    if values.get("schema_version") != SCHEMA_VERSION:
        raise StoreError(
            f"{path}: schema version {values.get('schema_version')}; this ptychodata reads version "
            f"{SCHEMA_VERSION}. Prepare the store again."
        )
    try:
        return kind.from_dict(values)
    except (TypeError, KeyError) as exc:
        raise StoreError(f"{path}: malformed manifest ({exc})") from exc


def check_files(directory: Path, files: dict[str, FileEntry]) -> None:
    """Raise ``StoreError`` naming the first file that is missing or whose size differs."""
    for name, entry in files.items():
        path = Path(directory) / name
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise StoreError(f"{path}: missing from the store (listed in its manifest)") from None
        if size != entry.bytes:
            raise StoreError(
                f"{path}: {size} bytes on disk but the manifest says {entry.bytes} (shape {entry.shape}, "
                f"dtype {entry.dtype}); the file is truncated or was replaced. Prepare the store again."
            )


def is_sound(directory: Path, kind: type[FrameManifest | GroupingManifest]) -> bool:
    """Whether ``directory`` holds a complete build of ``kind`` of this schema whose files have
    the sizes its manifest records."""
    try:
        manifest = read_manifest(directory, kind)
        check_files(directory, manifest.files)
    except (StoreError, OSError, ValueError, KeyError, TypeError):
        return False
    return True


def write_manifest_last(directory: Path, kind: type, **fields: Any) -> None:
    """Write the manifest of a finished build (its files, the time): last, so its presence
    marks the build complete."""
    manifest = kind(
        **fields,
        files={path.name: FileEntry.of(path) for path in npy_files(directory)},
        created=_now(),
        library_version=__version__,
    )
    write_manifest(directory, manifest)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
