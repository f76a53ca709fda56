"""File plumbing for the store: streamed ``.npy`` writing and bounded-RSS reading (a build's files
are made durable together before it is renamed into place: :meth:`BuildSlot.new_build
<ptychodata.store._cache_paths.BuildSlot.new_build>`).

Where builds go and how they become live is :mod:`ptychodata.store._cache_paths`'s job.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import io
import math
import mmap
import os
import stat
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.lib import format as npy_format

from ptychodata._runtime import available_memory, iter_rows, rows_per_chunk
from ptychodata.errors import StoreCorruptError, StoreError
from ptychodata.store._ids import REPAIR

if TYPE_CHECKING:
    from ptychodata.store._manifest import FileEntry

__all__ = [
    "STREAM_CHUNK_BYTES",
    "NpyWriter",
    "check_npy",
    "ensure_writable_directory",
    "file_digest",
    "map_npy",
    "new_hasher",
    "stream_rows",
    "use_direct_io",
    "write_npy",
]


_WRITE_PIECE = 1 << 20
STREAM_CHUNK_BYTES = 32 << 20  # bytes of a streamed (read, hashed, converted, written) chunk of rows
_BLOCK = 4096  # O_DIRECT alignment of offsets, sizes and buffers
_DIRECT_STAGE = 8 << 20  # bytes staged per O_DIRECT write
_WRITEBACK_BYTES = 16 << 20  # buffered writes: start writeback every this many bytes


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
    memory. With ``direct=True`` the data also bypass the page cache where the file system
    allows it (Linux ``O_DIRECT``): bytes go from a page-aligned staging buffer to the disk,
    the header is padded to one 4 KiB block so the data stay block-aligned, and the last
    partial block is padded and then truncated away. Where ``O_DIRECT`` is refused (tmpfs,
    some FUSE and network mounts, other systems) the writer falls back to buffered writes.
    ``direct_io`` tells which way the bytes went.
    """

    def __init__(
        self,
        path: Path,
        shape: tuple[int, ...],
        dtype: np.dtype | type,
        *,
        direct: bool = False,
        digests: dict[str, str] | None = None,
    ):
        self.path = Path(path)
        self.shape = tuple(int(n) for n in shape)
        if not self.shape:
            raise ValueError(f"{self.path.name}: a store file holds rows; got shape () (a 0-d array)")
        self.dtype = np.dtype(dtype)
        self.rows_written = 0
        self._digests = digests
        self._hasher = _StreamHasher()
        header = {"descr": npy_format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": self.shape}
        self._sink = _DirectSink.open(self.path) if direct else None
        if self._sink is None:
            self._sink = _BufferedSink(self.path)
            text = io.BytesIO()
            npy_format.write_array_header_2_0(text, header)
            self._put(memoryview(text.getvalue()))
        else:
            self._put(_block_header(header))

    @property
    def sha256(self) -> str:
        """The SHA-256 of the file's bytes, once it is closed (what ``sha256sum`` prints)."""
        return self._hasher.hexdigest()

    def _put(self, data: memoryview) -> None:
        """Write ``data`` and hash it, the hash on a thread of its own while the bytes are written
        (both done when this returns, so the caller may reuse the buffer)."""
        hashing = self._hasher.start(data)
        try:
            self._sink.write(data)
        finally:
            self._hasher.finish(hashing)

    @property
    def direct_io(self) -> bool:
        """Whether the data went past the page cache (``O_DIRECT``)."""
        return isinstance(self._sink, _DirectSink) and self._sink.direct

    def write(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.shape[1:] or self.rows_written + len(rows) > self.shape[0]:
            raise ValueError(f"{self.path.name}: rows of shape {rows.shape} do not fit {self.shape}")
        self._put(memoryview(rows).cast("B"))
        self.rows_written += len(rows)

    def close(self) -> None:
        if self._sink.closed:
            return
        expected = self.shape[0]
        if self.rows_written != expected:
            self._abandon()
            raise ValueError(f"{self.path.name}: wrote {self.rows_written} of {expected} rows")
        try:
            self._sink.finish()
        finally:
            self._hasher.close()
        if self._digests is not None:
            self._digests[self.path.name] = self.sha256

    def _abandon(self) -> None:
        self._hasher.close()
        self._sink.abandon()

    def __enter__(self) -> NpyWriter:  # noqa: PYI034 - Self needs Python 3.11
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self._abandon()


# Writes at least this large are hashed on a thread of their own, beside the write.
_HASH_ASIDE_BYTES = 1 << 20


class _StreamHasher:
    """SHA-256 of the bytes of a file as they are written: large pieces hashed by one thread
    of its own while the writing thread writes them (hashlib releases the GIL), small ones
    in line."""

    def __init__(self):
        self._hasher = hashlib.sha256()
        self._thread: ThreadPoolExecutor | None = None

    def start(self, data: memoryview) -> Future | None:
        if len(data) < _HASH_ASIDE_BYTES:
            self._hasher.update(data)
            return None
        if self._thread is None:
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ptychodata-file-hash")
        return self._thread.submit(self._hasher.update, data)

    @staticmethod
    def finish(hashing: Future | None) -> None:
        if hashing is not None:
            hashing.result()

    def hexdigest(self) -> str:
        return self._hasher.hexdigest()

    def close(self) -> None:
        if self._thread is not None:
            self._thread.shutdown(wait=True)
            self._thread = None


class _BufferedSink:
    """Bytes to a file through the page cache, in 1 MiB writes.

    On Linux, writeback of what was written is started every ``_WRITEBACK_BYTES``
    (``sync_file_range(SYNC_FILE_RANGE_WRITE)``: asynchronous, the pages stay cached), so
    the disk writes while later chunks are produced and the build's final fsync waits for
    the last piece only.
    """

    def __init__(self, path: Path):
        self.handle = open(path, "wb")  # noqa: SIM115 - owned by the sink, closed by finish()/abandon()
        self._flushed = 0  # the file's first bytes whose writeback was started

    @property
    def closed(self) -> bool:
        return self.handle.closed

    def write(self, data: memoryview) -> None:
        # 1 MiB writes: one large write() costs several times more kernel time on this kind of
        # VM (ext4, page cache under memory pressure); 1 MiB pieces keep it at memcpy speed.
        for start in range(0, len(data), _WRITE_PIECE):
            self.handle.write(data[start : start + _WRITE_PIECE])
        if self.handle.tell() - self._flushed >= _WRITEBACK_BYTES:
            self._write_back()

    def finish(self) -> None:
        self._write_back()
        self.handle.close()

    def _write_back(self) -> None:
        """Hand what was written since the last call to the OS and start its writeback."""
        self.handle.flush()
        end = self.handle.tell()
        if _start_writeback is not None and end > self._flushed:
            _start_writeback(self.handle.fileno(), self._flushed, end - self._flushed)
        self._flushed = end

    def abandon(self) -> None:
        self.handle.close()


def _writeback_starter():
    """``start(fd, offset, nbytes)`` that starts writeback of a file range without waiting
    (Linux ``sync_file_range``), or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        call = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    call.restype = ctypes.c_int

    def start(fd: int, offset: int, nbytes: int) -> None:
        call(fd, offset, nbytes, _SYNC_FILE_RANGE_WRITE)  # advisory: a failure leaves it to fsync

    return start


_SYNC_FILE_RANGE_WRITE = 2
_start_writeback = _writeback_starter()


class _DirectSink:
    """Bytes to a file with ``O_DIRECT``: staged in a page-aligned buffer, written in whole
    blocks; the last block padded with zeros, then the file truncated to its true size."""

    def __init__(self, fd: int):
        self.fd = fd
        self.direct = True
        self.size = 0  # bytes accepted so far (the file's final size)
        self._stage = mmap.mmap(-1, _DIRECT_STAGE)  # anonymous: page-aligned, as O_DIRECT needs
        self._view = memoryview(self._stage)
        self._fill = 0

    @classmethod
    def open(cls, path: Path) -> _DirectSink | None:
        """A direct sink on a new file at ``path``, or None where ``O_DIRECT`` is unavailable."""
        flag = getattr(os, "O_DIRECT", 0)
        if not flag:
            return None
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | flag, 0o644)
        except OSError as exc:
            if exc.errno == errno.EINVAL:  # the file system refuses O_DIRECT (tmpfs, ...)
                return None
            raise
        return cls(fd)

    @property
    def closed(self) -> bool:
        return self.fd < 0

    def write(self, data: memoryview) -> None:
        position = 0
        while position < len(data):
            take = min(len(data) - position, _DIRECT_STAGE - self._fill)
            self._view[self._fill : self._fill + take] = data[position : position + take]
            self._fill += take
            position += take
            if self._fill == _DIRECT_STAGE:
                self._write_out(_DIRECT_STAGE)
                self._fill = 0
        self.size += len(data)

    def _write_out(self, nbytes: int) -> None:
        """Write the first ``nbytes`` of the stage (a multiple of the block size)."""
        done = 0
        while done < nbytes:
            try:
                done += os.write(self.fd, self._view[done:nbytes])
            except OSError as exc:
                if exc.errno != errno.EINVAL or not self.direct:
                    raise
                # Refused on the first write (alignment this device does not accept):
                # carry on through the page cache from the same offset.
                fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) & ~os.O_DIRECT)
                self.direct = False

    def finish(self) -> None:
        try:
            if self._fill:
                padded = -(-self._fill // _BLOCK) * _BLOCK
                self._view[self._fill : padded] = bytes(padded - self._fill)
                self._write_out(padded)
                os.ftruncate(self.fd, self.size)
        finally:
            self.abandon()

    def abandon(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            self._view.release()
            self._stage.close()


def _block_header(header: dict) -> memoryview:
    """An ``.npy`` (version 1.0) header padded to exactly one ``_BLOCK``: what ``np.load``
    reads like any other, with the data starting block-aligned."""
    text = repr(header).encode("latin1")
    fixed = len(npy_format.MAGIC_PREFIX) + 2 + 2  # magic, version (1, 0), uint16 header length
    padding = _BLOCK - fixed - len(text) - 1
    if padding < 0:
        raise ValueError(f".npy header of {len(text)} bytes does not fit one {_BLOCK}-byte block")
    body = text + b" " * padding + b"\n"
    return memoryview(npy_format.MAGIC_PREFIX + bytes([1, 0]) + len(body).to_bytes(2, "little") + body)


_WRITE_CHUNK_BYTES = 32 << 20


def write_npy(path: Path, array: np.ndarray, *, digests: dict[str, str] | None = None) -> None:
    """Write a whole array as ``.npy``; large arrays row chunk by row chunk
    (a memmap's pages are released as they go, so e.g. a multi-GB object read from a
    source does not stay in this process's resident memory). ``digests``: where the file's
    SHA-256 is recorded under its name."""
    array = np.asarray(array)
    with NpyWriter(path, array.shape, array.dtype, digests=digests) as writer:
        if array.nbytes <= _WRITE_CHUNK_BYTES:
            writer.write(array)
        else:
            for _, chunk in iter_rows(array, rows_per_chunk(array[:1].nbytes, _WRITE_CHUNK_BYTES)):
                writer.write(chunk)


def map_npy(path: Path, entry: FileEntry) -> np.ndarray:
    """Memory-map a store's ``.npy`` read-only as the manifest describes it (shape, dtype,
    size), after checking the file against it: its size, and its header (read with NumPy's
    literal parser, never unpickled) for the same shape and dtype in C order, the data
    filling the file exactly after it. A symbolic link is refused: a store's files are its own.

    Raises ``StoreError`` naming the file when it is missing or unreadable, and
    ``StoreCorruptError`` when it is of another size (truncated or replaced), not an
    ``.npy``, or of another shape or dtype than its manifest says.
    """
    dtype, shape = np.dtype(entry.dtype), tuple(entry.shape)
    nbytes = math.prod(shape) * dtype.itemsize
    fd = _open_store_file(path)
    try:
        with os.fdopen(fd, "rb") as handle:
            size = _checked_npy(path, handle, entry)
            if nbytes == 0:
                return np.empty(shape, dtype)
            mapping = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    except StoreError:
        raise
    except OSError as exc:
        raise StoreError(f"{path}: unreadable store file ({exc.strerror or exc})") from exc
    return np.frombuffer(mapping, dtype=dtype, count=math.prod(shape), offset=size - nbytes).reshape(shape)


def check_npy(path: Path, entry: FileEntry) -> None:
    """What :func:`map_npy` checks of a store file (its size and header against ``entry``),
    without mapping it; the same errors."""
    fd = _open_store_file(path)
    with os.fdopen(fd, "rb") as handle:
        _checked_npy(path, handle, entry)


def _open_store_file(path: Path) -> int:
    """A descriptor of store file ``path`` opened for reading, never through a symbolic link."""
    try:
        return os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise StoreError(f"{path}: missing from the store (listed in its manifest)") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _corrupt(path, "a symbolic link where a store file should be") from None
        raise StoreError(f"{path}: unreadable store file ({exc.strerror or exc})") from exc


def _checked_npy(path: Path, handle, entry: FileEntry) -> int:
    """The size of the open store file ``handle``, checked to be a regular file of
    ``entry``'s size whose header says ``entry``'s shape and dtype."""
    info = os.fstat(handle.fileno())
    if not stat.S_ISREG(info.st_mode):
        raise _corrupt(path, "not a regular file")
    if info.st_size != entry.bytes:
        raise _corrupt(
            path,
            f"{info.st_size} bytes on disk but the manifest says {entry.bytes} (shape {entry.shape}, dtype "
            f"{entry.dtype}): the file is truncated or was replaced",
        )
    _check_header(path, handle, entry, info.st_size - entry.data_bytes)
    return info.st_size


def _corrupt(path: Path, message: str) -> StoreCorruptError:
    return StoreCorruptError(f"{path}: {message}; {REPAIR}")


_MAX_HEADER_BYTES = 1 << 16


def _canonical_header(handle, entry: FileEntry, data_offset: int) -> bool:
    """Whether the file's header, which ends at ``data_offset``, is byte for byte one of the
    two texts a store writes for ``entry`` (NumPy's, or the block-padded one of a direct
    write): then no parsing is needed. Anything else is parsed and compared field by field."""
    if not 0 < data_offset <= _BLOCK + 16:
        return False
    head = handle.read(data_offset)
    if len(head) != data_offset or not head.startswith(npy_format.MAGIC_PREFIX):
        return False
    start = 10 if head[6] == 1 else 12
    text = head[start:].rstrip(b" \n")
    descr, shape = npy_format.dtype_to_descr(np.dtype(entry.dtype)), tuple(entry.shape)
    written = {"descr": descr, "fortran_order": False, "shape": shape}
    numpy_text = "{" + "".join(f"'{key}': {value!r}, " for key, value in written.items()) + "}"
    return text in (numpy_text.encode("latin1"), repr(written).encode("latin1"))


def _check_header(path: Path, handle, entry: FileEntry, data_offset: int) -> None:
    """``StoreCorruptError`` unless ``handle`` starts with an ``.npy`` header of ``entry``'s
    shape and dtype in C order whose data begin at ``data_offset``."""
    if _canonical_header(handle, entry, data_offset):
        return
    try:
        handle.seek(0)
        start = handle.read(12)
        if len(start) == 12 and start[6:7] in (b"\x02", b"\x03"):  # a 4-byte header length: bound it
            length = int.from_bytes(start[8:12], "little")
            if length > _MAX_HEADER_BYTES:
                raise ValueError(f"a header of {length} bytes; a store file's is at most {_MAX_HEADER_BYTES}")
        handle.seek(0)
        version = npy_format.read_magic(handle)
        if version == (1, 0):
            shape, fortran, dtype = npy_format.read_array_header_1_0(handle)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = npy_format.read_array_header_2_0(handle)
        else:
            raise ValueError(f"unknown .npy version {version}")
    except (ValueError, OSError, SyntaxError, TypeError) as exc:
        raise _corrupt(path, f"not an .npy file ({' '.join(str(exc).split())[:160]})") from None
    if list(shape) != list(entry.shape) or dtype.str != entry.dtype or fortran:
        order = ", Fortran order" if fortran else ""
        raise _corrupt(
            path,
            f"holds shape {list(shape)}, dtype {dtype.str}{order}; the manifest says shape {entry.shape}, "
            f"dtype {entry.dtype}",
        )
    if handle.tell() != data_offset:
        raise _corrupt(path, f"its data start at byte {handle.tell()}, not {data_offset} as its size says")


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


def stream_rows(array: np.ndarray) -> int:
    """Rows of ``array`` per streamed (and hashed) chunk: fixed by the row size alone."""
    return rows_per_chunk(array[:1].nbytes if array.ndim else array.nbytes, STREAM_CHUNK_BYTES)


def use_direct_io(requested: bool | None, nbytes: int) -> bool:
    """Whether a file of ``nbytes`` is written past the page cache: as ``requested``, or
    (None) when it is larger than half the memory available now, so that the cache could
    not keep it anyway (:func:`available_memory`; never where that is unknown)."""
    if requested is not None:
        return bool(requested)
    available = available_memory()
    return available is not None and nbytes > available // 2


