"""One scan, one immutable build: :func:`prepare_scan` and the record it returns.

A scan's identity is the SHA-256 of its file's bytes (its *uid* is a prefix of it); its
grouping is seeded from the dataset's seed and that uid, so the scan's groups, coordinates and
scales are the same alone and in any dataset with the same spec.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ptychodata.dataset._spec import DatasetSpec
from ptychodata.errors import StoreError
from ptychodata.grouping import GroupingConfig
from ptychodata.io import regular_file
from ptychodata.store import Store, default_cache_dir, file_digest, prepare

__all__ = ["ScanBuild", "SourceIdentity", "prepare_scan", "source_identity", "source_path"]

UID_LENGTH = 20  # hex digits of the SHA-256 that name a scan


@dataclass(frozen=True)
class SourceIdentity:
    """A source file as it was when built: where, how large, when modified, and its content hash."""

    path: str
    size: int
    mtime_ns: int
    sha256: str

    @property
    def uid(self) -> str:
        return self.sha256[:UID_LENGTH]

    def unchanged(self) -> bool:
        """Whether the file at :attr:`path` still has this size and modification time."""
        try:
            stat = os.stat(self.path)
        except OSError:
            return False
        return stat.st_size == self.size and stat.st_mtime_ns == self.mtime_ns


def source_path(source: str | os.PathLike) -> str:
    """The absolute path, links resolved, by which a dataset knows a source file; never an
    error (a loop of links or a missing file is reported when the file is read)."""
    return os.path.realpath(os.path.expanduser(os.fspath(source)))


def source_identity(source: str | os.PathLike, *, known: SourceIdentity | None = None) -> SourceIdentity:
    """The identity of file ``source``; its bytes are hashed unless ``known`` is the same file,
    unchanged (same path, size and modification time), whose hash is then reused."""
    path, stat = _stat_scan_file(source)
    if _is_known(known, path, stat):
        return known
    digest = file_digest(path)
    after = os.stat(path)
    if (after.st_size, after.st_mtime_ns) != (stat.st_size, stat.st_mtime_ns):
        raise StoreError(f"{path}: the file changed while it was hashed; try again once it is written")
    return SourceIdentity(path, stat.st_size, stat.st_mtime_ns, digest)


def _stat_scan_file(source: str | os.PathLike) -> tuple[str, os.stat_result]:
    """The absolute path of regular file ``source`` (:func:`source_path`) and its stat."""
    path = source_path(regular_file(Path(source).expanduser(), "a scan file"))
    try:
        return path, os.stat(path)
    except OSError as exc:  # gone or changed since regular_file looked
        raise StoreError(f"{path}: cannot read the scan file ({exc.strerror})") from None


def _is_known(known: SourceIdentity | None, path: str, stat: os.stat_result) -> bool:
    return known is not None and (known.path, known.size, known.mtime_ns) == (path, stat.st_size, stat.st_mtime_ns)


@dataclass(frozen=True)
class ScanBuild:
    """What :func:`prepare_scan` made of one scan: small, frozen and picklable.

    Attributes
    ----------
    uid : str
        The scan's identity: the first hex digits of the SHA-256 of its file.
    name : str
        The file's name.
    source : SourceIdentity
    frames_key, frames_build_id : str
        The frames slot and the immutable frames build in the cache.
    grouping_path : str
        The grouping slot, relative to the cache directory.
    grouping_build_id : str
    seed : int
        The scan's grouping seed (:func:`~ptychodata.dataset.scan_seed`).
    n_patterns, n_groups, N, C : int
    x_scale : float
    intensity_scale, nphotons : float or None
    frames_dtype : str
        How the patterns are stored: dtype and values (``"float32 amplitude"``, ``"uint16 counts"``).
    has_probe, has_Y, has_mask : bool
    bytes : int
        Bytes of the frames build's and the grouping build's files.
    seconds : float
        Time :func:`prepare_scan` took (0 when both builds were found).
    """

    uid: str
    name: str
    source: SourceIdentity
    frames_key: str
    frames_build_id: str
    grouping_path: str
    grouping_build_id: str
    seed: int
    n_patterns: int
    n_groups: int
    N: int
    C: int
    x_scale: float
    intensity_scale: float | None
    nphotons: float | None
    frames_dtype: str
    has_probe: bool
    has_Y: bool
    has_mask: bool
    bytes: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ScanBuild:
        values = dict(values)
        values["source"] = SourceIdentity(**values["source"])
        return cls(**values)

    def build_dirs(self) -> tuple[PurePosixPath, PurePosixPath]:
        """The directories of its grouping build and its frames build, relative to the cache."""
        slot = PurePosixPath(self.grouping_path)
        return slot / "builds" / self.grouping_build_id, slot.parent.parent / "builds" / self.frames_build_id

    def present(self, cache_dir: str | os.PathLike) -> bool:
        """Whether both builds this record names are still complete in ``cache_dir`` (a few stats)."""
        return all((Path(cache_dir) / build / "manifest.json").is_file() for build in self.build_dirs())

    def open(self, cache_dir: str | os.PathLike, **options: Any) -> Store:
        """Open this scan's grouping build (the exact build recorded, not the slot's live one)."""
        root = Path(cache_dir).resolve()
        slot = (root / self.grouping_path).resolve()
        if root not in slot.parents:
            raise StoreError(f"grouping path {self.grouping_path!r} leads outside the cache {root}")
        return Store.open_build(slot, self.grouping_build_id, **options)


def prepare_scan(
    source: str | os.PathLike,
    spec: DatasetSpec,
    *,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = False,
    known: SourceIdentity | None = None,
) -> ScanBuild:
    """Prepare (or find) the builds of one scan file with a dataset's ``spec``.

    Parameters
    ----------
    source : path
        A scan file in any format :meth:`ScanData.load <ptychodata.scan.ScanData.load>` reads.
    spec : DatasetSpec
    cache_dir : path, optional
        Where builds live; default :func:`~ptychodata.store.default_cache_dir`.
    progress : bool
        Show progress bars.
    known : SourceIdentity, optional
        This file's identity from an earlier build; its hash is reused while the file's
        size and modification time are unchanged.

    Returns
    -------
    ScanBuild
    """
    started = time.perf_counter()
    path, stat = _stat_scan_file(source)
    cache = Path(cache_dir if cache_dir is not None else default_cache_dir()).expanduser().resolve()
    # Seeded by the SHA-256 that the frames build computes while it copies the file, or (the
    # file hashed before and unchanged since) by the known hash, grouped while the frames stream.
    by_content = _GroupingByContent(spec)
    grouping = spec.config_for(known.uid) if _is_known(known, path, stat) else by_content
    with prepare(path, grouping, cache_dir=cache, progress=progress, **spec.prepare_kwargs()) as store:
        sha256 = by_content.sha256 if grouping is by_content else known.sha256
        identity = SourceIdentity(path, stat.st_size, stat.st_mtime_ns, sha256)
        recorded = store.frames.experiments[0].source
        if (recorded.size, recorded.mtime_ns) != (stat.st_size, stat.st_mtime_ns) or not identity.unchanged():
            raise StoreError(f"{path}: the file changed while it was prepared; prepare it again")
        seed = spec.config_for(identity.uid).seed
        return _record(identity, store, cache, seed, time.perf_counter() - started)


class _GroupingByContent:
    """A dataset's grouping of a scan from the SHA-256 of its file, as :func:`prepare` hands it
    over once the frames build has hashed the file (so the file is hashed once); the last hash
    given is kept for the scan's record."""

    def __init__(self, spec: DatasetSpec):
        self.spec, self.sha256 = spec, ""

    def __call__(self, sha256: str) -> GroupingConfig:
        self.sha256 = sha256
        return self.spec.config_for(sha256[:UID_LENGTH])


def _record(identity: SourceIdentity, store: Store, cache: Path, seed: int, seconds: float) -> ScanBuild:
    info = store.info()
    experiment = store.frames.experiments[0]
    return ScanBuild(
        uid=identity.uid,
        name=Path(identity.path).name,
        source=identity,
        frames_key=store.frames.key,
        frames_build_id=store.frames_build_id,
        grouping_path=store.path.relative_to(cache).as_posix(),
        grouping_build_id=store.build_id,
        seed=int(seed),
        n_patterns=int(store.n_patterns),
        n_groups=len(store),
        N=int(store.N),
        C=int(store.C),
        x_scale=float(store.x_scale[0]),
        intensity_scale=store.intensity_scale[0],
        nphotons=experiment.nphotons,
        frames_dtype=f"{store.frames.patterns.dtype} {store.frames.patterns.values}",
        has_probe=bool(store.has_probe),
        has_Y=bool(store.has_ground_truth),
        has_mask=bool(experiment.has_mask),
        bytes=int(info["bytes_on_disk"]),
        seconds=round(float(seconds), 3),
    )
