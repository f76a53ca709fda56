"""File plumbing for the store: streamed, fsync-ed ``.npy`` writing and bounded-RSS reading.

Where builds go and how they become live is :mod:`ptychodata.store._layout`'s job.
"""

from __future__ import annotations

import hashlib
import math
import mmap
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.lib import format as npy_format

from ptychodata.errors import StoreError
from ptychodata.io._memory import iter_rows, release_pages, rows_per_chunk

if TYPE_CHECKING:
    from ptychodata.store._manifest import FileEntry

__all__ = [
    "NpyWriter",
    "ensure_writable_directory",
    "file_digest",
    "iter_rows",
    "map_npy",
    "new_hasher",
    "release_pages",
    "rows_per_chunk",
    "write_npy",
]


_WRITE_PIECE = 1 << 20


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes as they are on disk, read 1 MiB at a time: how a file
    source is identified by content (``verify=True``), whatever its compression."""
    hasher = hashlib.sha256()
    buffer = bytearray(1 << 20)
    view = memoryview(buffer)
    with open(path, "rb") as handle:
        while True:
            n = handle.readinto(buffer)
            if not n:
                break
            hasher.update(view[:n])
    return hasher.hexdigest()


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
        data = memoryview(rows).cast("B")
        # 1 MiB writes: one large write() costs several times more kernel time on this kind of
        # VM (ext4, page cache under memory pressure); 1 MiB pieces keep it at memcpy speed.
        for start in range(0, len(data), _WRITE_PIECE):
            self._handle.write(data[start : start + _WRITE_PIECE])
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


_WRITE_CHUNK_BYTES = 32 << 20


def write_npy(path: Path, array: np.ndarray) -> None:
    """Write a whole array as ``.npy`` and fsync it; large arrays row chunk by row chunk
    (a memmap's pages are released as they go, so e.g. a multi-GB object read from a
    source does not stay in this process's resident memory)."""
    array = np.asarray(array)
    with NpyWriter(path, array.shape, array.dtype) as writer:
        if array.ndim == 0:
            writer._handle.write(array.tobytes())
            writer.rows_written = 0
            writer.shape = (0,)
        elif array.nbytes <= _WRITE_CHUNK_BYTES:
            writer.write(array)
        else:
            for _, chunk in iter_rows(array, rows_per_chunk(array[:1].nbytes, _WRITE_CHUNK_BYTES)):
                writer.write(chunk)


_NPY_MAGIC = b"\x93NUMPY"


def map_npy(path: Path, entry: FileEntry) -> np.ndarray:
    """Memory-map a store's ``.npy`` read-only as the manifest describes it (shape, dtype,
    size), checking the size and the format's magic: one open, one ``mmap``, no header
    parsing (the data are the file's last bytes; store files are C-ordered).

    Raises ``StoreError`` naming the file when it is missing, of another size (truncated
    or replaced) or not an ``.npy``.
    """
    dtype, shape = np.dtype(entry.dtype), tuple(entry.shape)
    nbytes = math.prod(shape) * dtype.itemsize
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            magic = handle.read(len(_NPY_MAGIC))
            if size != entry.bytes:
                raise StoreError(
                    f"{path}: {size} bytes on disk but the manifest says {entry.bytes} (shape {entry.shape}, "
                    f"dtype {entry.dtype}); the file is truncated or was replaced. Prepare the store again."
                )
            if magic != _NPY_MAGIC or nbytes > size:
                raise StoreError(f"{path}: not the .npy file the manifest lists; prepare the store again")
            if nbytes == 0:
                return np.empty(shape, dtype)
            mapping = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    except StoreError:
        raise
    except FileNotFoundError:
        raise StoreError(f"{path}: missing from the store (listed in its manifest)") from None
    except OSError as exc:
        raise StoreError(f"{path}: unreadable store file ({exc.strerror or exc})") from exc
    return np.frombuffer(mapping, dtype=dtype, count=math.prod(shape), offset=size - nbytes).reshape(shape)


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
