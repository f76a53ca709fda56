"""Moving a dataset between machines: a self-contained directory, checked before it is used.

::

    DIR/
      ptychodata-export.json     written last: the dataset build's manifest, its spec, and
                                 every file below with its size and SHA-256
      cache/                     a cache holding that one build: open_dataset(name,
        datasets/<name>/...      cache_dir=DIR / "cache") reads it as it is
        frames-<key>/builds/<id>/...                    each scan's frames build
        frames-<key>/groupings/<gkey>/builds/<id>/...   and grouping build

Paths inside are relative, so the directory can be moved with ``rsync -aH`` or Globus.
Files are hard links to the cache's where the file system allows (builds are immutable),
copies otherwise. :func:`import_dataset` checks every file's size and hash, places the builds
the target cache lacks, and only then publishes the build there.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import json
import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from tqdm import tqdm

from ptychodata._runtime import __version__, create_exclusive, write_text_atomic
from ptychodata.dataset._manifest import DatasetManifest, DatasetPaths, check_name, write_json_atomic
from ptychodata.dataset._spec import DatasetSpec
from ptychodata.errors import ParameterError, StoreCorruptError, StoreError, StoreNotFoundError
from ptychodata.store import file_digest

__all__ = ["EXPORT_MANIFEST", "Export", "export_dataset", "import_export", "read_export"]

EXPORT_MANIFEST = "ptychodata-export.json"
FORMAT = "ptychodata-dataset-export"
VERSION = 1
CACHE = "cache"
_IMPORTS = ".imports"  # staging beside the datasets (a dataset name cannot start with ".")
_BLOCK = 1 << 20
_BUILD_MANIFEST = "manifest.json"  # a build directory is complete once it holds this


@dataclass(frozen=True)
class ExportedFile:
    """One file of an export: its path below the export's ``cache/``, size and SHA-256."""

    path: str
    bytes: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "bytes": self.bytes, "sha256": self.sha256}


@dataclass(frozen=True)
class Export:
    """What ``ptychodata-export.json`` records."""

    manifest: DatasetManifest
    spec: DatasetSpec
    files: tuple[ExportedFile, ...]

    def build_dirs(self) -> list[PurePosixPath]:
        """Every scan build directory the manifest needs, relative to a cache."""
        return sorted({d for entry in self.manifest.scans for d in entry.build.build_dirs()})


def export_dataset(
    manifest: DatasetManifest,
    spec: DatasetSpec,
    cache_dir: Path,
    directory: str | os.PathLike,
    *,
    link: bool = True,
    progress: bool = False,
) -> Path:
    """Write dataset build ``manifest`` (its scans' builds from ``cache_dir``) to ``directory``.

    ``directory`` must not exist or be empty. Each file is hashed as it is exported, and
    checked against the SHA-256 its build recorded when it was written (where it did).
    """
    if not spec.copy:
        raise ParameterError(
            f"dataset {manifest.name!r} was created with copy=False: its builds read the scan files where they are, "
            "so it cannot be moved without them; create a dataset with copy=True to export"
        )
    target = Path(directory).expanduser().resolve()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ParameterError(f"{target}: exists and is not an empty directory; export into a new directory")
    dirs = sorted({d for entry in manifest.scans for d in entry.build.build_dirs()})
    sources = []
    for build in dirs:
        folder = cache_dir / build
        if not (folder / _BUILD_MANIFEST).is_file():
            raise StoreNotFoundError(f"{folder}: a build dataset {manifest.name!r} lists is missing from the cache")
        sources += sorted(p for p in folder.iterdir() if p.is_file())
    total = sum(p.stat().st_size for p in sources)
    files = []
    with _bar(total, f"export {manifest.name}", progress) as bar:
        for source in sources:
            relative = source.relative_to(cache_dir).as_posix()
            destination = target / CACHE / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            digest = _place(source, destination, link=link, bar=bar)
            recorded = _recorded_digests(source.parent).get(source.name)
            if recorded is not None and recorded != digest:
                raise StoreCorruptError(
                    f"{source}: its SHA-256 is {digest}, but its build recorded {recorded} when it was written; "
                    "the cache file is damaged: run 'ptychodata cache verify' and prepare that scan again"
                )
            files.append(ExportedFile(relative, destination.stat().st_size, digest))
    for build in dirs:
        _adopt(target / CACHE, build)
    paths = DatasetPaths(target / CACHE, manifest.name)
    write_json_atomic(paths.spec, spec.to_dict())
    paths.publish((None, 0), manifest)
    for path in sorted(p for p in paths.root.rglob("*") if p.is_file()):
        files.append(ExportedFile(path.relative_to(target / CACHE).as_posix(), path.stat().st_size, file_digest(path)))
    record = {
        "format": FORMAT,
        "version": VERSION,
        "library_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "name": manifest.name,
        "build_id": manifest.build_id,
        "spec": spec.to_dict(),
        "manifest": manifest.to_dict(),
        "bytes": sum(f.bytes for f in files),
        "files": [f.to_dict() for f in files],
    }
    write_json_atomic(target / EXPORT_MANIFEST, record)  # last: its presence marks a whole export
    return target


def read_export(directory: str | os.PathLike) -> tuple[Path, Export]:
    """The export in ``directory`` and what it records (not yet checked against its files)."""
    root = Path(directory).expanduser().resolve()
    path = root / EXPORT_MANIFEST
    try:
        values = json.loads(path.read_text())
    except FileNotFoundError:
        raise StoreNotFoundError(
            f"{root}: no {EXPORT_MANIFEST}; expected a directory written by 'ptychodata dataset export' (the file is "
            "written last: without it the export is incomplete)"
        ) from None
    except (OSError, ValueError) as exc:
        raise StoreCorruptError(f"{path}: unreadable ({exc})") from None
    if not isinstance(values, dict) or values.get("format") != FORMAT or values.get("version") != VERSION:
        found = (values.get("format"), values.get("version")) if isinstance(values, dict) else type(values).__name__
        raise StoreCorruptError(f"{path}: format {found}; expected {FORMAT!r} version {VERSION}")
    try:
        manifest = DatasetManifest.from_dict(values["manifest"], where=f"{path}: manifest")
        spec = DatasetSpec.from_dict(values["spec"], where=f"{path}: ")
        files = tuple(
            ExportedFile(_relative(item["path"], path), int(item["bytes"]), str(item["sha256"]))
            for item in values["files"]
        )
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, StoreError):
            raise
        raise StoreCorruptError(f"{path}: malformed export record ({type(exc).__name__}: {exc})") from None
    if manifest.build_id != values.get("build_id"):
        raise StoreCorruptError(f"{path}: build_id {values.get('build_id')!r}, but its manifest is build "
                                f"{manifest.build_id}")
    export = Export(manifest, spec, files)
    listed = {PurePosixPath(f.path) for f in files}
    for build in export.build_dirs():
        if build / _BUILD_MANIFEST not in listed:
            raise StoreCorruptError(f"{path}: lists no file of build {build}, which its manifest needs")
    return root, export


def import_export(
    directory: str | os.PathLike,
    cache_dir: Path,
    *,
    name: str | None = None,
    link: bool = True,
    progress: bool = False,
) -> tuple[str, Export]:
    """Check an export and place the builds ``cache_dir`` lacks; the dataset's name and the export.

    Every file is checked (size, then SHA-256 as it is copied or linked into a staging
    directory) before any build is placed; builds already in the cache are used as they are
    once their files' sizes agree. Publishing is the caller's (:func:`import_dataset`).
    """
    root, export = read_export(directory)
    name = check_name(name if name is not None else export.manifest.name)
    for item in export.files:
        found = root / CACHE / item.path
        try:
            size = found.stat().st_size
        except FileNotFoundError:
            raise StoreNotFoundError(f"{found}: listed in the export but missing; copy the export again") from None
        if size != item.bytes:
            raise StoreCorruptError(f"{found}: {size} bytes, but the export lists {item.bytes}; copy the export again")
    by_dir: dict[PurePosixPath, list[ExportedFile]] = {}
    for item in export.files:
        by_dir.setdefault(PurePosixPath(item.path).parent, []).append(item)
    wanted = export.build_dirs()
    missing = []
    for build in wanted:
        present = cache_dir / build
        if (present / _BUILD_MANIFEST).is_file():
            _check_sizes(present, by_dir[build])
        else:
            missing.append(build)
    staging_root = cache_dir / "datasets" / _IMPORTS
    _remove_dead_stagings(staging_root)
    staging = staging_root / f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        total = sum(item.bytes for build in missing for item in by_dir[build])
        with _bar(total, f"import {name}", progress) as bar:
            for number, build in enumerate(missing):
                for item in by_dir[build]:
                    source = root / CACHE / item.path
                    destination = staging / str(number) / PurePosixPath(item.path).name
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    digest = _place(source, destination, link=link, bar=bar)
                    if digest != item.sha256:
                        raise StoreCorruptError(
                            f"{source}: SHA-256 {digest}, but the export lists {item.sha256}; the file was damaged "
                            "in transfer: copy the export again"
                        )
        for number, build in enumerate(missing):
            target = cache_dir / build
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(staging / str(number), target)
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise StoreError(f"{target}: cannot place the imported build ({exc.strerror})") from None
                # another process placed the same build (ids are deterministic): use theirs
            _adopt(cache_dir, build)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return name, export


def _adopt(cache: Path, build: PurePosixPath) -> None:
    """Make a placed build its slot's live one where the slot has none (as a first prepare
    would), so the cache lists it as a store; a slot with a live build keeps it."""
    slot = cache / build.parent.parent
    temporary = slot / f".tmp-current-{build.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    write_text_atomic(temporary, f"{build.name}\n")
    try:
        os.link(temporary, slot / "current")  # whole when it appears; refused where one exists
    except FileExistsError:
        pass
    except OSError:  # no hard links here: created exclusively, then written
        create_exclusive(slot / "current", f"{build.name}\n")
    finally:
        temporary.unlink(missing_ok=True)


def _check_sizes(folder: Path, items: list[ExportedFile]) -> None:
    for item in items:
        path = folder / PurePosixPath(item.path).name
        size = path.stat().st_size if path.is_file() else None
        if size != item.bytes:
            raise StoreCorruptError(
                f"{path}: {'missing' if size is None else f'{size} bytes'}, but the same build in the export has "
                f"{item.bytes} bytes; the cache's copy is damaged: run 'ptychodata cache verify'"
            )


def _place(source: Path, destination: Path, *, link: bool, bar: Any) -> str:
    """Hard-link (where allowed) or copy ``source`` to ``destination``; the SHA-256 of what
    ``destination`` holds."""
    if link:
        try:
            os.link(source, destination)
        except OSError:
            pass  # another file system, or links refused: copy
        else:
            digest = file_digest(destination)
            bar.update(source.stat().st_size)
            return digest
    hasher = hashlib.sha256()
    with open(source, "rb") as reader, open(destination, "xb") as writer:
        while block := reader.read(_BLOCK):
            hasher.update(block)
            writer.write(block)
            bar.update(len(block))
    shutil.copystat(source, destination)
    return hasher.hexdigest()


def _recorded_digests(build: Path) -> dict[str, str]:
    """File name → SHA-256 its build's manifest recorded when writing it (builds of older
    versions record none)."""
    try:
        files = json.loads((build / _BUILD_MANIFEST).read_text()).get("files", {})
    except (OSError, ValueError, AttributeError):
        return {}
    if not isinstance(files, dict):
        return {}
    return {name: entry["sha256"] for name, entry in files.items() if isinstance(entry, dict) and entry.get("sha256")}


def _relative(path: Any, where: Path) -> str:
    """``path`` if it is a relative POSIX path that stays inside the export."""
    text = str(path)
    pure = PurePosixPath(text)
    if pure.is_absolute() or ".." in pure.parts or not pure.parts or "\\" in text:
        raise StoreCorruptError(f"{where}: file path {text!r}; expected a relative path inside the export")
    return pure.as_posix()


def _remove_dead_stagings(root: Path) -> None:
    """Remove staging directories of imports on this host whose process is gone."""
    if not root.is_dir():
        return
    host = socket.gethostname()
    for path in root.iterdir():
        owner, _, rest = path.name.rpartition("-")[0].rpartition("-")
        if owner != host or not rest.isdigit():
            continue
        try:
            os.kill(int(rest), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass


@contextlib.contextmanager
def _bar(total: int, label: str, enabled: bool) -> Iterator[Any]:
    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label, disable=not enabled)
    try:
        yield bar
    finally:
        bar.close()
