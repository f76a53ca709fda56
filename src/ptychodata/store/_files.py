"""File plumbing for the store: streamed ``.npy`` writing, bounded-RSS reading, atomic
directory builds and an OS file lock.

A store directory is built under a temporary name beside its target, every file is
fsync-ed, the manifest is written last, and the directory is renamed into place. A
rename is atomic, so a reader sees either no store or a complete one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import mmap
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

from ptychodata.errors import StoreError
from ptychodata.io._memory import iter_rows, release_pages

__all__ = [
    "NpyWriter",
    "atomic_directory",
    "file_lock",
    "iter_rows",
    "new_hasher",
    "release_pages",
    "remove_stale_temporaries",
    "write_npy",
]

TEMP_PREFIX = ".tmp-"
_PAGE = mmap.PAGESIZE


def new_hasher():
    """The content hash used for sources (BLAKE2b, 128-bit digest)."""
    return hashlib.blake2b(digest_size=16)


class NpyWriter:
    """Write an ``.npy`` of known shape and dtype row-chunk by row-chunk, with plain file writes.

    Plain writes (not a writable memmap) keep the data out of this process's resident
    memory: it goes to the page cache only.
    """

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: np.dtype | type):
        self.path = Path(path)
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self.rows_written = 0
        self._handle = open(self.path, "wb")  # noqa: SIM115 - owned by the writer, closed by close()
        header = {"descr": npy_format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": self.shape}
        npy_format.write_array_header_2_0(self._handle, header)

    def write(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.shape[1:] or self.rows_written + len(rows) > self.shape[0]:
            raise ValueError(f"{self.path.name}: rows of shape {rows.shape} do not fit {self.shape}")
        self._handle.write(memoryview(rows).cast("B"))
        self.rows_written += len(rows)

    def close(self) -> None:
        if self._handle.closed:
            return
        if self.rows_written != self.shape[0]:
            self._handle.close()
            raise ValueError(f"{self.path.name}: wrote {self.rows_written} of {self.shape[0]} rows")
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()

    def __enter__(self) -> NpyWriter:  # noqa: PYI034 - Self needs Python 3.11
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self._handle.close()


def write_npy(path: Path, array: np.ndarray) -> None:
    """Write a whole array as ``.npy`` and fsync it."""
    array = np.asarray(array)
    with NpyWriter(path, array.shape, array.dtype) as writer:
        if array.ndim == 0:
            writer._handle.write(array.tobytes())
            writer.rows_written = 0
            writer.shape = (0,)
        else:
            writer.write(array)


@contextlib.contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Build a directory under a temporary name beside ``target``, then rename it into place.

    The temporary directory is removed if the block raises. Files written inside must be
    fsync-ed by the writer; the parent directory is fsync-ed after the rename.
    """
    target = Path(target)
    temporary = target.parent / f"{TEMP_PREFIX}{target.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    temporary.mkdir(parents=True)
    try:
        yield temporary
        _fsync_directory(temporary)
        if target.exists():  # a stale or invalid store: replace it
            shutil.rmtree(target)
        os.rename(temporary, target)
        _fsync_directory(target.parent)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if needed) for the block.

    Other processes asking for the same lock wait. The OS drops the lock when the holder
    dies, even by SIGKILL, so a crashed build never blocks the next one.
    """
    path = Path(path)
    try:
        handle = open(path, "a+b")  # noqa: SIM115 - held for the lock's lifetime
    except OSError as exc:
        raise StoreError(f"{path.parent}: cannot create a lock file there ({exc.strerror})") from exc
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        handle.close()


def remove_stale_temporaries(directory: Path, name: str) -> int:
    """Remove leftover ``.tmp-<name>-*`` build directories; call while holding ``name``'s lock.

    Builds of ``name`` happen only under its lock, so with the lock held any temporary of
    that name belongs to a build that died. Returns how many were removed.
    """
    removed = 0
    for leftover in Path(directory).glob(f"{TEMP_PREFIX}{name}-*"):
        shutil.rmtree(leftover, ignore_errors=True)
        removed += 1
    return removed


def ensure_writable_directory(path: Path) -> Path:
    """Create ``path`` if needed and check it can be written, or raise ``StoreError``."""
    path = Path(path).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"{path}: cannot create the cache directory ({exc.strerror})") from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise StoreError(
            f"{path}: the cache directory is not writable; pass cache_dir=... or set PTYCHODATA_CACHE "
            "to a writable directory"
        )
    return path


def is_no_space(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)
