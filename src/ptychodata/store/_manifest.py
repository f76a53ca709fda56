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
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ptychodata._runtime import __version__, canonical_json
from ptychodata.errors import StoreError, StoreNotFoundError
from ptychodata.store._cache_paths import MANIFEST, FrameFile, GroupingFile, npy_files, npy_name, object_stem
from ptychodata.store._ids import check_store_file_name
from ptychodata.store._schema import Fields, corrupt

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
    """One ``.npy`` file of a store: its shape, dtype, exact size on disk and the SHA-256 of
    its bytes (computed while it was written; None in builds of older versions)."""

    shape: list[int]
    dtype: str
    bytes: int
    sha256: str | None = None

    @classmethod
    def of(cls, path: Path, sha256: str | None = None) -> FileEntry:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        return cls(shape=[int(n) for n in array.shape], dtype=array.dtype.str, bytes=path.stat().st_size,
                   sha256=sha256)

    @classmethod
    def parse(cls, values: Any, where: str, prefix: str) -> FileEntry:
        fields = Fields(values, where, prefix, known=("shape", "dtype", "bytes", "sha256"))
        entry = cls(fields.shape("shape"), fields.dtype("dtype"), fields.integer("bytes"),
                    fields.hex_digest("sha256"))
        if entry.bytes < entry.data_bytes:
            raise corrupt(where, f"{prefix}bytes is {entry.bytes}, less than the {entry.data_bytes} bytes of "
                                 f"shape {entry.shape} {entry.dtype}")
        return entry

    @property
    def data_bytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class SourceEntry:
    """One source scan: its file identity (None for in-memory scans) and content hash."""

    path: str | None
    size: int | None
    mtime_ns: int | None
    content_hash: str | None  # None: a zero-copy build prepared without verify=True

    @classmethod
    def parse(cls, values: Any, where: str, prefix: str) -> SourceEntry:
        fields = Fields(values, where, prefix, known=("path", "size", "mtime_ns", "content_hash"))
        path = fields.text("path", optional=True)
        if path is not None and not os.path.isabs(path):
            raise fields.error("path", path, "an absolute path or null")
        file = path is not None
        return cls(
            path,
            fields.integer("size", optional=not file),
            fields.integer("mtime_ns", minimum=None, optional=not file),
            fields.hex_digest("content_hash", optional=file),
        )

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

    @classmethod
    def parse(cls, values: Any, where: str, prefix: str) -> PatternsEntry:
        fields = Fields(values, where, prefix, known=cls.__dataclass_fields__)
        file = fields.text("file", optional=True, default=None)
        if file is not None and not os.path.isabs(file):
            raise fields.error("file", file, "an absolute path or null")
        return cls(
            dtype=fields.text("dtype"),
            values=fields.text("values"),
            storage=fields.dtype("storage"),
            conversion=fields.text("conversion"),
            shape=fields.shape("shape", dims=3),
            file=file,
            offset=fields.integer("offset", default=0),
            size=fields.integer("size", optional=file is None, default=None),
            mtime_ns=fields.integer("mtime_ns", minimum=None, optional=file is None, default=None),
        )

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

    @classmethod
    def parse(cls, values: Any, where: str, prefix: str) -> ExperimentEntry:
        fields = Fields(values, where, prefix, known=cls.__dataclass_fields__)
        return cls(
            experiment_id=fields.integer("experiment_id"),
            source=SourceEntry.parse(fields.raw("source"), where, f"{prefix}source."),
            start=fields.integer("start"),
            stop=fields.integer("stop"),
            object_shape=fields.shape("object_shape", optional=True, dims=2),
            nphotons=fields.number("nphotons", positive=True, optional=True),
            has_Y=fields.boolean("has_Y"),
            has_probe=fields.boolean("has_probe", default=True),
            has_mask=fields.boolean("has_mask", default=False),
            metadata=fields.mapping("metadata", default={}),
        )

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
    def from_dict(cls, values: dict[str, Any], where: str = MANIFEST) -> FrameManifest:
        """The manifest of ``values`` (read from file ``where``), every field checked for its
        type and the whole for consistency (:meth:`check`); ``StoreCorruptError`` otherwise."""
        fields = Fields(values, where, known=cls.__dataclass_fields__)
        manifest = cls(
            key=fields.key("key"),
            build_id=fields.build_id("build_id"),
            N=fields.integer("N", minimum=1),
            n_patterns=fields.integer("n_patterns", minimum=1),
            intensity=fields.boolean("intensity", optional=True),
            load_options=fields.mapping("load_options"),
            experiments=fields.items("experiments", lambda v, p: ExperimentEntry.parse(v, where, p), minimum=1),
            patterns=PatternsEntry.parse(fields.raw("patterns"), where, "patterns."),
            files=_file_entries(fields, where),
            created=fields.text("created"),
            library_version=fields.text("library_version"),
            schema_version=fields.integer("schema_version"),
            format=fields.text("format"),
        )
        manifest.check(where)
        return manifest

    def check(self, where: str) -> None:
        """``StoreCorruptError`` unless the experiments tile [0, n_patterns) in order, the
        patterns are (n_patterns, N, N), and the files are exactly those such a build holds,
        each of its shape and dtype."""
        M, N, E = self.n_patterns, self.N, len(self.experiments)
        position = 0
        for index, experiment in enumerate(self.experiments):
            if experiment.experiment_id != index or experiment.start != position or experiment.stop <= experiment.start:
                raise corrupt(
                    where,
                    f"experiments[{index}]: id {experiment.experiment_id}, patterns [{experiment.start}, "
                    f"{experiment.stop}); expected id {index} starting at {position} with at least one pattern",
                )
            position = experiment.stop
        if position != M:
            raise corrupt(where, f"the experiments hold {position} patterns; n_patterns says {M}")
        if self.patterns.shape != [M, N, N]:
            raise corrupt(where, f"patterns.shape is {self.patterns.shape}; expected [{M}, {N}, {N}] (n_patterns, N, N)")
        if self.patterns.is_reference and (E != 1 or self.patterns.file != self.experiments[0].source.path):
            raise corrupt(
                where,
                f"patterns.file {self.patterns.file!r} is not the build's one source file "
                f"({self.experiments[0].source.path!r}); a zero-copy build reads only its source",
            )
        expected = {stem: ([M], "<f8") for stem in _POSITION_FILES}
        expected[FrameFile.EXPERIMENT_ID] = ([M], "<i8")
        expected[FrameFile.SCAN_INDEX] = ([M], "<i8")
        if not self.patterns.is_reference:
            expected[FrameFile.PATTERNS] = ([M, N, N], self.patterns.storage)
        if all(e.has_probe for e in self.experiments):
            expected[FrameFile.PROBES] = ([E, N, N], "<c8")
        if any(e.has_mask for e in self.experiments):
            expected[FrameFile.MASKS] = ([E, N, N], "|b1")
        if all(e.has_Y for e in self.experiments):
            expected[FrameFile.Y] = ([M, N, N], "<c8")
        for e in self.experiments:
            if e.object_shape is not None:
                expected[object_stem(e.experiment_id)] = (e.object_shape, "<c8")
        _check_file_set(where, self.files, expected)


_POSITION_FILES = (
    FrameFile.ENERGIES, FrameFile.AMPLITUDE_SUMS, FrameFile.XCOORDS, FrameFile.YCOORDS,
    FrameFile.XCOORDS_START, FrameFile.YCOORDS_START,
)


def _file_entries(fields: Fields, where: str) -> dict[str, FileEntry]:
    listed = fields.mapping("files")
    return {
        check_store_file_name(name, f"{where}: files"): FileEntry.parse(entry, where, f"files.{name}.")
        for name, entry in listed.items()
    }


def _check_file_set(where: str, files: dict[str, FileEntry], expected: dict[str, tuple[list[int], str | None]]) -> None:
    """``StoreCorruptError`` unless ``files`` are exactly ``expected`` (stem -> (shape, dtype);
    a None dtype or a None in the shape: any)."""
    wanted = {npy_name(stem): spec for stem, spec in expected.items()}
    missing, extra = sorted(set(wanted) - set(files)), sorted(set(files) - set(wanted))
    if missing or extra:
        found = ", ".join(f"{name} (not expected)" for name in extra) or "none extra"
        raise corrupt(where, f"files: missing {', '.join(missing) or 'none'}; {found}")
    for name, (shape, dtype) in wanted.items():
        entry = files[name]
        same_shape = len(entry.shape) == len(shape) and all(a is None or a == b for a, b in zip(shape, entry.shape))
        if not same_shape or (dtype is not None and entry.dtype != dtype):
            expected_shape = [("any" if n is None else n) for n in shape]
            raise corrupt(
                where,
                f"files.{name}: shape {entry.shape}, dtype {entry.dtype}; expected shape {expected_shape}, "
                f"dtype {dtype or 'any'}",
            )


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
    def from_dict(cls, values: dict[str, Any], where: str = MANIFEST) -> GroupingManifest:
        """The manifest of ``values`` (read from file ``where``), every field checked for its
        type and the whole for consistency (:meth:`check`); ``StoreCorruptError`` otherwise."""
        fields = Fields(values, where, known=cls.__dataclass_fields__)
        manifest = cls(
            key=fields.key("key"),
            build_id=fields.build_id("build_id"),
            frames_key=fields.key("frames_key"),
            frames_build_id=fields.build_id("frames_build_id"),
            config=fields.mapping("config"),
            n_groups=fields.integer("n_groups", minimum=1),
            C=fields.integer("C", minimum=1),
            x_scale=fields.numbers("x_scale", positive=True),
            intensity_scale=fields.numbers("intensity_scale", positive=True, optional_items=True),
            materialized=fields.boolean("materialized"),
            files=_file_entries(fields, where),
            created=fields.text("created"),
            library_version=fields.text("library_version"),
            schema_version=fields.integer("schema_version"),
            format=fields.text("format"),
            extra=fields.mapping("extra", default={}),
        )
        manifest.check(where)
        return manifest

    def check(self, where: str) -> None:
        """``StoreCorruptError`` unless the scales are one per experiment and the files are
        exactly those of a grouping of n_groups groups of C, each of its shape and dtype."""
        B, C = self.n_groups, self.C
        if not self.x_scale or len(self.intensity_scale) != len(self.x_scale):
            raise corrupt(
                where,
                f"x_scale has {len(self.x_scale)} and intensity_scale {len(self.intensity_scale)} values; "
                "expected one of each per experiment",
            )
        expected: dict[str, tuple[list[Any], str | None]] = {
            GroupingFile.GROUPS: ([B, C], "<i8"),
            GroupingFile.GROUP_EXPERIMENT: ([B], "<i8"),
            GroupingFile.COORDS_OFFSETS: ([B, 2], "<f8"),
            GroupingFile.COORDS_RELATIVE: ([B, C, 2], "<f8"),
            GroupingFile.COORDS_START_OFFSETS: ([B, 2], "<f8"),
            GroupingFile.COORDS_START_RELATIVE: ([B, C, 2], "<f8"),
        }
        if self.materialized:
            expected[GroupingFile.X] = ([B, C, None, None], "<f4")
        _check_file_set(where, self.files, expected)


def write_manifest(directory: Path, manifest: FrameManifest | GroupingManifest) -> None:
    """Write ``manifest.json`` (last): its presence marks a complete directory."""
    path = Path(directory) / MANIFEST
    with open(path, "w") as handle:
        json.dump(manifest.to_dict(), handle, indent=1)


def read_manifest(directory: Path, kind: type[FrameManifest | GroupingManifest]):
    """Read and parse a manifest, or raise ``StoreError`` naming the file and what is wrong."""
    path = Path(directory) / MANIFEST
    try:
        with open(path, "rb") as handle:
            data = handle.read(MANIFEST_MAX_BYTES + 1)
    except FileNotFoundError:
        raise StoreNotFoundError(f"{directory}: not a ptychodata store build ({MANIFEST} is missing)") from None
    except IsADirectoryError:
        raise corrupt(str(path), "a directory where the manifest file should be") from None
    except OSError as exc:
        raise StoreError(f"{path}: unreadable manifest ({exc.strerror or exc})") from exc
    if len(data) > MANIFEST_MAX_BYTES:
        raise corrupt(str(path), f"larger than {MANIFEST_MAX_BYTES >> 20} MiB; not a manifest this library wrote")
    try:
        values = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise corrupt(str(path), f"unreadable manifest, not JSON ({type(exc).__name__}: {_one_line(exc)})") from None
    if not isinstance(values, dict):
        raise corrupt(str(path), f"the manifest holds a JSON {type(values).__name__}; expected an object")
    expected_format = kind.__dataclass_fields__["format"].default
    if values.get("format") != expected_format:
        raise corrupt(str(path), f"format {values.get('format')!r}; expected {expected_format!r}")
    if values.get("schema_version") != SCHEMA_VERSION:
        raise StoreError(
            f"{path}: schema version {values.get('schema_version')!r}; this ptychodata reads version "
            f"{SCHEMA_VERSION}. Prepare the store again."
        )
    return kind.from_dict(values, str(path))


# A manifest of 10⁴ experiments is well under this; a larger file is not read.
MANIFEST_MAX_BYTES = 64 << 20


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 200 else text[:197] + "..."


def check_files(directory: Path, files: dict[str, FileEntry]) -> None:
    """Raise ``StoreError`` naming the first file that is missing or whose size differs."""
    for name, entry in files.items():
        path = Path(directory) / name
        try:
            size = path.lstat().st_size
        except FileNotFoundError:
            raise StoreError(f"{path}: missing from the store (listed in its manifest)") from None
        except OSError as exc:
            raise StoreError(f"{path}: unreadable store file ({exc.strerror or exc})") from None
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


def write_manifest_last(directory: Path, kind: type, *, digests: dict[str, str], **fields: Any) -> None:
    """Write the manifest of a finished build (its files with the SHA-256 of each, computed
    while it was written, the time): last, so its presence marks the build complete."""
    files = {}
    for path in npy_files(directory):
        if path.name not in digests:
            raise StoreError(f"{path}: written without its content hash; a store file must be written by NpyWriter")
        files[path.name] = FileEntry.of(path, digests[path.name])
    manifest = kind(**fields, files=files, created=_now(), library_version=__version__)
    manifest.check(str(Path(directory) / MANIFEST))
    write_manifest(directory, manifest)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
