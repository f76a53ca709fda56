"""The directory structure of a store cache: the one module that spells its paths.

::

    <cache>/
      locks/                          OS file locks; never inside a directory that is deleted
        frames-<fkey>.lock            held while frames of <fkey> are built, collected or removed
        frames-<fkey>.<gkey>.lock     held while grouping <gkey> of those frames is built or collected
      frames-<fkey>/                  a *slot*: immutable builds plus a pointer to the live one
        current                       the live build's id (replaced atomically with os.replace)
        builds/<build-id>/            manifest.json + patterns.npy, energies.npy, ... (never modified)
        builds/.tmp-<build-id>/       a build in progress (or one whose process died)
        groupings/<gkey>/             a slot of its own: current + builds/<build-id>/
                                      each grouping build names the frames build it was made from

A reader resolves ``current`` once, then opens that build and holds a shared lock on its
manifest for as long as it is open; an old build is deleted only by a process that gets
the exclusive lock on that manifest without waiting, i.e. when no reader holds it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
import socket
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptychodata._runtime import __version__, canonical_json, write_text_atomic
from ptychodata.errors import DiskFullError, StoreCorruptError, StoreError, StoreNotFoundError
from ptychodata.store._ids import REPAIR, check_build_id, is_build_id, is_key

__all__ = [
    "BuildSlot",
    "CachePaths",
    "FrameFile",
    "GroupingFile",
    "ReaderLock",
    "file_lock",
    "npy_files",
    "npy_name",
    "npy_stem",
    "object_stem",
]

MANIFEST = "manifest.json"
CURRENT = "current"
BUILDS = "builds"
GROUPINGS = "groupings"
LOCKS = "locks"
FRAMES_PREFIX = "frames-"
TEMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"
# A temporary of another host (or of a process not known dead) is a leftover after this long.
TEMPORARY_EXPIRY_S = 24 * 3600
# Bumped when what a build id is computed from changes meaning.
BUILD_ID_SCHEMA = 1
OBJECT_PREFIX = "object_"


class FrameFile:
    """File stems of a frames build (``<stem>.npy``)."""

    PATTERNS = "patterns"  # (M, N, N) float32 amplitudes
    ENERGIES = "energies"  # (M,) float64 Σ A²
    AMPLITUDE_SUMS = "amplitude_sums"  # (M,) float64 Σ A
    XCOORDS = "xcoords"
    YCOORDS = "ycoords"
    XCOORDS_START = "xcoords_start"
    YCOORDS_START = "ycoords_start"
    SCAN_INDEX = "scan_index"
    EXPERIMENT_ID = "experiment_id"
    PROBES = "probes"  # (E, N, N) complex64, when every source has a probe
    MASKS = "masks"  # (E, N, N) bool, True = usable, when any source has a bad-pixel mask
    Y = "Y"  # (M, N, N) complex64, when every source has patches


class GroupingFile:
    """File stems of a grouping build (``<stem>.npy``)."""

    GROUPS = "groups"  # (B, C) int64 pattern indices
    GROUP_EXPERIMENT = "group_experiment"  # (B,) int64
    COORDS_OFFSETS = "coords_offsets"  # (B, 2) float64 centres (x, y)
    COORDS_RELATIVE = "coords_relative"  # (B, C, 2) float64
    COORDS_START_OFFSETS = "coords_start_offsets"
    COORDS_START_RELATIVE = "coords_start_relative"
    X = "X"  # (B, C, N, N) float32, materialized stores only


def object_stem(experiment: int) -> str:
    """Stem of experiment ``experiment``'s object in a frames build."""
    return f"{OBJECT_PREFIX}{int(experiment)}"


_NPY = ".npy"


def npy_name(stem: str) -> str:
    return f"{stem}{_NPY}"


def npy_stem(name: str) -> str:
    """The stem of a store file name (``"patterns.npy"`` -> ``"patterns"``)."""
    return name[: -len(_NPY)] if name.endswith(_NPY) else name


def npy_files(directory: Path) -> list[Path]:
    """The ``.npy`` files of a build directory, sorted by name."""
    return sorted(directory.glob(f"*{_NPY}"))


PINS = "pins"
# File systems shared between hosts: no build is deleted implicitly there (a reader on another host
# holds no lock this host can see); 'ptychodata cache prune' deletes what is old and unreferenced.
NETWORK_FILE_SYSTEMS = ("nfs", "nfs4", "lustre", "gpfs", "beegfs", "cifs", "smb3", "fuse", "ceph", "glusterfs")


def file_system_type(path: Path, *, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """The type of the file system holding ``path`` (the longest mount point above it), or None."""
    return mount_of(path, mountinfo=mountinfo)[1]


def mount_of(path: Path, *, mountinfo: str = "/proc/self/mountinfo") -> tuple[str, str | None]:
    """The mount point holding ``path`` (the longest one above it) and its file system type;
    ``("", None)`` where the mount table cannot be read."""
    target = str(Path(path).resolve())
    best, kind = "", None
    try:
        with open(mountinfo) as handle:
            lines = handle.read().splitlines()
    except OSError:
        return best, kind
    for line in lines:
        fields = line.split()
        if "-" not in fields:
            continue
        mount_point = fields[4].replace("\\040", " ")
        fstype = fields[fields.index("-") + 1]
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best):
            best, kind = mount_point, fstype
    return best, kind


def collects_implicitly(root: Path) -> bool:
    """Whether unused builds under cache ``root`` may be deleted as a side effect of ``prepare``:
    not on a network file system, and not without locks."""
    kind = file_system_type(root) or ""
    network = kind.split(".")[0] in NETWORK_FILE_SYSTEMS or kind.startswith("fuse")
    return locks_enabled() and not network


def write_pins(root: Path, holder: str, builds: list[Path]) -> None:
    """Pin ``builds`` (build directories under cache ``root``) for ``holder``: collection skips them
    until the holder writes its pins again without them. Replaces the holder's pins atomically."""
    lines = sorted({build.resolve().relative_to(root.resolve()).as_posix() for build in builds})
    write_text_atomic(root / PINS / f"{holder}.pins", "".join(line + "\n" for line in lines))


def pinned_builds(slot: BuildSlot) -> set[str]:
    """Ids of the slot's builds that some holder (a dataset) pins."""
    root = slot.cache_root
    prefix = slot.path.relative_to(root).as_posix() + f"/{BUILDS}/"
    pinned = set()
    for pins in sorted((root / PINS).glob("*.pins")) if (root / PINS).is_dir() else []:
        try:
            lines = pins.read_text().splitlines()
        except OSError:
            continue
        pinned.update(line[len(prefix) :] for line in lines if line.startswith(prefix) and "/" not in line[len(prefix) :])
    return pinned


def build_id_of(slot_key: str, identity: Any) -> str:
    """The id of the build of slot ``slot_key`` made from ``identity`` (the sources as they are,
    or the frames build a grouping is made of), with this schema and library version.

    Deterministic: two processes that build the same thing make the same directory, and the
    first rename wins (see :meth:`BuildSlot.new_build`).
    """
    text = canonical_json(["build", slot_key, identity, BUILD_ID_SCHEMA, __version__])
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _temporary_name(build_id: str) -> str:
    """A build in progress: named by its id, host and process, so concurrent builders never share one."""
    return f"{TEMP_PREFIX}{build_id}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class CachePaths:
    """Paths of one cache directory."""

    root: Path

    def frames_slot(self, frames_key: str) -> BuildSlot:
        return BuildSlot(self.root / f"{FRAMES_PREFIX}{frames_key}", self.root / LOCKS / f"{FRAMES_PREFIX}{frames_key}.lock")

    def grouping_slot(self, frames_key: str, grouping_key: str) -> BuildSlot:
        frames = self.root / f"{FRAMES_PREFIX}{frames_key}"
        lock = self.root / LOCKS / f"{FRAMES_PREFIX}{frames_key}.{grouping_key}.lock"
        return BuildSlot(frames / GROUPINGS / grouping_key, lock)

    def frame_slots(self) -> list[BuildSlot]:
        """Every frames slot of the cache (directories named ``frames-*``)."""
        if not self.root.is_dir():
            return []
        return [
            self.frames_slot(path.name[len(FRAMES_PREFIX) :])
            for path in sorted(self.root.glob(f"{FRAMES_PREFIX}*"))
            if is_key(path.name[len(FRAMES_PREFIX) :]) and path.is_dir()
        ]


@dataclass(frozen=True)
class BuildSlot:
    """A directory of immutable builds and a ``current`` pointer to the live one.

    Frames stores and groupings are both slots; ``lock`` is the slot's build lock, kept
    in the cache's ``locks/`` directory so it survives the slot's removal.
    """

    path: Path
    lock: Path

    @property
    def key(self) -> str:
        name = self.path.name
        return name[len(FRAMES_PREFIX) :] if name.startswith(FRAMES_PREFIX) else name

    @property
    def frames_key(self) -> str:
        """The key of the frames slot this slot is (or belongs to)."""
        frames = self.path if self.path.parent.name != GROUPINGS else self.path.parent.parent
        return frames.name[len(FRAMES_PREFIX) :]

    @property
    def cache_root(self) -> Path:
        """The cache directory this slot is in."""
        return self.path.parent if self.path.parent.name != GROUPINGS else self.path.parent.parent.parent

    def build_dir(self, build_id: str) -> Path:
        """The directory of build ``build_id``; ``StoreCorruptError`` for anything but a build id
        (an id read from a file never leads outside ``builds/``)."""
        return self.path / BUILDS / check_build_id(build_id, f"{self.path}: build")

    def groupings(self) -> list[BuildSlot]:
        """Grouping slots inside a frames slot."""
        root = self.path / GROUPINGS
        if not root.is_dir():
            return []
        frames_key = self.frames_key
        return [
            BuildSlot(path, self.lock.parent / f"{FRAMES_PREFIX}{frames_key}.{path.name}.lock")
            for path in sorted(root.iterdir())
            if is_key(path.name) and path.is_dir()
        ]

    def current_id(self) -> str | None:
        """The live build's id, or None when the slot has none (yet); ``StoreCorruptError`` when
        ``current`` holds anything but one build id."""
        path = self.path / CURRENT
        try:
            with open(path, "rb") as handle:
                data = handle.read(_POINTER_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"{path}: unreadable ({exc.strerror})") from exc
        text = data.decode("ascii", errors="replace").strip()
        if not text:
            return None
        return check_build_id(text if len(data) <= _POINTER_BYTES else text[:_POINTER_BYTES] + "...", str(path))

    def build_ids(self) -> list[str]:
        """Ids of the builds present (temporaries, trash and names that are no build id excluded)."""
        root = self.path / BUILDS
        if not root.is_dir():
            return []
        return sorted(p.name for p in root.iterdir() if is_build_id(p.name))

    def temporaries(self) -> list[Path]:
        root = self.path / BUILDS
        if not root.is_dir():
            return []
        return [p for p in root.iterdir() if p.name.startswith((TEMP_PREFIX, TRASH_PREFIX))]

    def has_build(self, build_id: str) -> bool:
        """Whether the complete build ``build_id`` is present (its manifest is written last)."""
        return (self.build_dir(build_id) / MANIFEST).is_file()

    @contextlib.contextmanager
    def new_build(
        self, identity: Any, *, sound: Callable[[Path], bool], needs: int = 0
    ) -> Iterator[tuple[str, Path]]:
        """A temporary directory for the build of ``identity``; on success it is renamed to
        ``builds/<id>`` (not yet current: call :meth:`publish`). Removed if the block raises.

        The id is :func:`build_id_of` the slot and ``identity``. Where another process
        finished the same build first and ``sound(directory)`` says its files are whole, its
        directory stays and this one's temporary is discarded: both then name the same build.
        An earlier build of the id that is not sound (damaged, of an older schema) is retired
        and replaced.

        ``needs``: the bytes the build will write, where known: ``DiskFullError`` before
        anything is written when the file system has less free; a disk that fills during the
        build (``ENOSPC``, ``EDQUOT``) is the same error, its temporary removed."""
        build_id = build_id_of(self.key, identity)
        check_free_space(self.path, needs)
        temporary = self.path / BUILDS / _temporary_name(build_id)
        try:
            temporary.mkdir(parents=True)
        except OSError as exc:
            raise _disk_full(exc, self.path, needs) or exc
        try:
            yield build_id, temporary
            fsync_build(temporary)
            self._rename_unless_built(temporary, build_id, sound)
            fsync_path(self.path / BUILDS)
        except OSError as exc:
            shutil.rmtree(temporary, ignore_errors=True)
            if not temporary.parent.is_dir():
                raise StoreNotFoundError(f"{self.path}: the store was removed during the build") from exc
            full = _disk_full(exc, self.path, needs)
            if full is not None:
                raise full from exc
            raise
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise

    def _rename_unless_built(self, temporary: Path, build_id: str, sound: Callable[[Path], bool]) -> None:
        """Rename a finished temporary to its build directory; where a sound build of that id
        exists already (finished by another process first), discard the temporary instead."""
        build = self.build_dir(build_id)
        for _ in range(3):
            try:
                os.rename(temporary, build)
                return
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
            if sound(build):
                shutil.rmtree(temporary, ignore_errors=True)
                return
            self._retire(build_id)
        raise StoreError(f"{build}: another process keeps replacing this build; try again")

    def _retire(self, build_id: str) -> None:
        """Move an earlier build of this id out of the way: one is rebuilt only when the earlier
        one is not current (damaged, or of an older schema). It is deleted unless a reader holds
        it; then its trash is deleted by a later clean-up."""
        build = self.build_dir(build_id)
        if not build.exists():
            return
        trash = self.path / BUILDS / f"{TRASH_PREFIX}{build_id}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(build, trash)
        except FileNotFoundError:
            return
        with _exclusive(trash) as acquired:
            if acquired is not False:
                shutil.rmtree(trash, ignore_errors=True)

    def publish(self, build_id: str) -> None:
        """Make ``build_id`` the live build: write ``current`` beside itself and replace it
        atomically. Hold the slot's lock."""
        temporary = self.path / f"{TEMP_PREFIX}{CURRENT}-{build_id}"
        try:
            with open(temporary, "w") as handle:
                handle.write(build_id + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.path / CURRENT)
            fsync_path(self.path)
        except FileNotFoundError as exc:
            raise StoreNotFoundError(f"{self.path}: the store was removed before its build was published") from exc
        except OSError as exc:
            temporary.unlink(missing_ok=True)
            full = _disk_full(exc, self.path, len(build_id) + 1)
            if full is not None:
                raise full from exc
            raise

    def remove_temporaries(self) -> int:
        """Delete leftovers of builds whose process died: temporaries of this host's dead
        processes, and any older than :data:`TEMPORARY_EXPIRY_S` (another host's builder is
        never presumed dead sooner); trash of retired builds no reader holds."""
        leftovers = [path for path in self.temporaries() if _abandoned(path)]
        for path in leftovers:
            if path.name.startswith(TRASH_PREFIX):
                with _exclusive(path) as acquired:
                    if acquired is False:
                        continue
            shutil.rmtree(path, ignore_errors=True)
        for path in self.path.glob(f"{TEMP_PREFIX}{CURRENT}-*"):
            if _abandoned(path):
                path.unlink(missing_ok=True)
        return len(leftovers)

    def is_read(self, build_id: str) -> bool:
        """Whether a reader holds build ``build_id`` open now."""
        with _exclusive(self.build_dir(build_id)) as acquired:
            return acquired is False

    def remove_build_if_unread(self, build_id: str) -> bool:
        """Delete build ``build_id`` unless a reader holds it open; True if it was deleted.

        A reader holds a shared ``flock`` on the build's manifest; the exclusive lock is
        asked without waiting, so a build in use is left alone. The directory is renamed
        away first, so no reader can open it once deletion starts. Hold the slot's lock.
        """
        build = self.build_dir(build_id)
        with _exclusive(build) as acquired:
            if acquired is False:
                return False
            trash = self.path / BUILDS / f"{TRASH_PREFIX}{build_id}"
            try:
                os.rename(build, trash)
            except FileNotFoundError:
                return False
            shutil.rmtree(trash, ignore_errors=True)
            return True


# A pointer holds one build id and a newline; more than this is not a pointer.
_POINTER_BYTES = 64
# Free space kept beyond a build's own bytes (its directory entries, the manifest, other writers).
SPACE_MARGIN = 16 << 20
_FULL = (errno.ENOSPC, errno.EDQUOT)


def check_free_space(path: Path, needs: int) -> None:
    """``DiskFullError`` naming ``path`` and the bytes needed and free when the file system
    holding ``path`` (or its nearest existing parent) has less than ``needs`` plus a margin
    free; nothing when ``needs`` is 0 or the free space cannot be read."""
    if needs <= 0:
        return
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return
    if free < needs + SPACE_MARGIN:
        raise _full_error(
            errno.ENOSPC,
            f"{path}: the build needs about {_size(needs)} ({needs} bytes) but only {_size(free)} is free there; "
            "free some space ('ptychodata cache prune' deletes unused builds) or pass cache_dir=... on another disk",
        )


def _disk_full(exc: OSError, path: Path, needs: int) -> DiskFullError | None:
    """The ``DiskFullError`` of an ``ENOSPC``/``EDQUOT`` raised while building under ``path``, else None."""
    if exc.errno not in _FULL:
        return None
    what = f"about {_size(needs)} ({needs} bytes)" if needs > 0 else "more space than was free"
    written = f" writing {exc.filename}" if exc.filename else ""
    return _full_error(
        exc.errno,
        f"{path}: the disk filled{written} ({exc.strerror}); the build needs {what}. The partial build was "
        "removed and earlier builds are unchanged; free some space or pass cache_dir=... on another disk",
    )


def _full_error(code: int, message: str) -> DiskFullError:
    error = DiskFullError(message)
    error.errno = code  # the message stays the text (setting strerror too would replace it)
    return error


def _size(nbytes: int) -> str:
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{nbytes} B"


def _abandoned(path: Path) -> bool:
    """Whether a temporary (``.tmp-<id>-<host>-<pid>-<tag>``) or a trash directory is a leftover:
    trash always is; a temporary when its process on this host is gone, or when it is older than
    :data:`TEMPORARY_EXPIRY_S`."""
    if path.name.startswith(TRASH_PREFIX):
        return True
    owner = path.name[len(TEMP_PREFIX) :].split("-", 1)[-1].rsplit("-", 2)  # [host, pid, tag]
    if len(owner) == 3 and owner[0] == socket.gethostname() and owner[1].isdigit():
        return not _process_alive(int(owner[1]))
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return False
    return age > TEMPORARY_EXPIRY_S


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process holds the slot's lock: nothing of its own is in progress
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def locks_enabled() -> bool:
    """False when ``PTYCHODATA_LOCKS=off``: builds and readers then take no OS lock at all."""
    return os.environ.get("PTYCHODATA_LOCKS", "").strip().lower() not in ("off", "0", "no", "false")


_NO_LOCKS = (errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK, errno.EINVAL)
# Mount points this process has warned about: one warning per file system, not one per lock
# (warnings' own once-per-location memory is reset by every catch_warnings). Only messages depend on it.
_WARNED_NO_LOCKS: set[str] = set()


def _flock(fd: int, operation: int, path: Path) -> bool:
    """``flock(fd, operation)``; False (with one warning) where the file system has no working
    ``flock`` (some NFS, Lustre or GPFS mounts): the caller then goes on without the lock, as
    correctness rests on immutable builds, deterministic ids and atomic renames."""
    if not locks_enabled():
        return False
    try:
        fcntl.flock(fd, operation)
    except BlockingIOError:
        raise
    except OSError as exc:
        if exc.errno not in _NO_LOCKS:
            raise
        mount = mount_of(path)[0] or str(path.parent)
        if mount in _WARNED_NO_LOCKS:
            return False
        _WARNED_NO_LOCKS.add(mount)
        warnings.warn(
            f"{mount}: the file system refuses flock ({exc.strerror}); going on without locks: builds "
            "stay correct (immutable, renamed into place), but unused builds are then never collected "
            "implicitly (use 'ptychodata cache prune'). Set PTYCHODATA_LOCKS=off to skip the attempt.",
            RuntimeWarning,
            stacklevel=3,
        )
        return False
    return True


@contextlib.contextmanager
def _exclusive(build: Path) -> Iterator[bool | None]:
    """Try the exclusive lock on a build's manifest without waiting: yields True (held
    for the block), False (a reader holds the build), or None (no manifest, or one that is
    not a readable file: no reader can have opened the build)."""
    try:
        handle = open(build / MANIFEST, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        yield None
        return
    except OSError:  # a manifest that is no readable file: a damaged build, which no reader can hold
        yield None
        return
    with handle:
        try:
            locked = _flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB, build / MANIFEST)
        except BlockingIOError:
            yield False
            return
        yield True if locked else False  # without locks no reader is seen: presume one


class ReaderLock:
    """A shared ``flock`` on a build's manifest, held while the build is open.

    While any process holds one, :meth:`BuildSlot.remove_build_if_unread` leaves the build
    alone. Forked children share the lock with their parent (same open file).
    """

    def __init__(self, build: Path):
        self.build = build
        try:
            self._handle = open(build / MANIFEST, "rb")  # noqa: SIM115 - closed by close()
        except FileNotFoundError:
            raise StoreNotFoundError(f"{build}: no such store build (removed, or never completed)") from None
        except IsADirectoryError:
            raise StoreCorruptError(f"{build / MANIFEST}: a directory where the manifest file should be; {REPAIR}") from None
        except OSError as exc:
            raise StoreError(f"{build / MANIFEST}: unreadable ({exc.strerror or exc})") from None
        _flock(self._handle.fileno(), fcntl.LOCK_SH, build / MANIFEST)
        if os.fstat(self._handle.fileno()).st_nlink == 0:  # deleted while we waited for the lock
            self.close()
            raise StoreNotFoundError(f"{build}: the store build was removed while it was being opened")

    def close(self) -> None:
        self._handle.close()


def open_current(slot: BuildSlot, attempts: int = 5) -> tuple[str, ReaderLock]:
    """Resolve ``current`` and lock that build for reading, retrying if it is replaced
    and deleted in between."""
    for _ in range(attempts):
        build_id = slot.current_id()
        if build_id is None:
            break
        try:
            return build_id, ReaderLock(slot.build_dir(build_id))
        except StoreNotFoundError:
            continue
    raise StoreNotFoundError(f"{slot.path}: not a prepared store (no live build); run prepare")


def fsync_build(directory: Path) -> None:
    """Make a finished build's files and names durable: each file, then the directory. One pass
    at the end, not one per file as it is closed: the first fsync commits the file system's
    journal for all of them, and the data of each was sent to the disk while it was written."""
    for path in sorted(directory.iterdir()):
        fsync_path(path, os.O_NOFOLLOW)  # a build holds its own files, never links
    fsync_path(directory)


def fsync_path(path: Path, flags: int = 0) -> None:
    """fsync the file or directory at ``path`` (its name entries, for a directory)."""
    fd = os.open(path, os.O_RDONLY | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created, with its directory, if needed).

    Other processes asking for the same lock wait. The OS drops the lock when the holder
    dies, even by SIGKILL, so a crashed build never blocks the next one. Lock files are
    never deleted: a waiter and a newcomer must always lock the same file.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+b")  # noqa: SIM115 - held for the lock's lifetime
    except OSError as exc:
        raise StoreError(f"{path.parent}: cannot create a lock file there ({exc.strerror})") from exc
    locked = False
    try:
        locked = _flock(handle.fileno(), fcntl.LOCK_EX, path)
        yield
    finally:
        if locked:
            with contextlib.suppress(OSError):
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        handle.close()
