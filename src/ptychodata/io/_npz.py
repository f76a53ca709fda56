"""NumPy ``.npz`` archives, with uncompressed members memory-mapped in place.

An ``.npz`` is a zip of ``.npy`` files. A member stored without compression is a
plain ``.npy`` at some byte offset inside the zip, so it can be ``np.memmap``-ed there:
opening a multi-GB scan then costs milliseconds and almost no resident memory.
Compressed members have to be inflated and are read into memory.

A member of object dtype is never unpickled freely: the only one read is a 0-d object
array holding a string (how PtychoPINN's metadata manager stores its ``_metadata`` JSON),
through an unpickler that admits numpy's array reconstruction, ``ndarray`` and ``dtype``
and nothing else, so no code named by the file can run.
"""

from __future__ import annotations

import math
import os
import pickle
import struct
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib import format as npy_format

from ptychodata._runtime import iter_rows, rows_per_chunk
from ptychodata.errors import ScanDataError, ScanTooLargeError
from ptychodata.io._limits import check_fits, regular_file

__all__ = ["declared_bytes", "read_archive", "read_npz", "write_npz"]

_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # zip local file header, 30 bytes
_LOCAL_MAGIC = b"PK\x03\x04"
_STREAM_BYTES = 32 << 20

# What unpickling a 0-d object array needs, and nothing more; numpy 1.x pickles name
# ``numpy.core.multiarray``, numpy 2 ``numpy._core.multiarray``. The callables are taken
# from numpy itself, not imported by the names the file gives.
_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(()))[0]
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}
# What a malformed (not hostile: that is refused by name) pickle can raise while loading.
_MALFORMED_PICKLE = (
    pickle.UnpicklingError, AttributeError, EOFError, IndexError, KeyError, MemoryError, OverflowError,
    TypeError, ValueError,
)


def existing_file(path: str | os.PathLike, expected: str) -> Path:
    """``path`` as a Path when it is a regular file; ``ScanFileNotFoundError`` when nothing is there,
    ``ScanDataError`` for a directory, FIFO, socket, device or symlink loop (see :func:`regular_file`)."""
    return regular_file(path, expected)


def read_npz(path: str | os.PathLike, *, mmap: bool = True) -> dict[str, np.ndarray]:
    """Read every member of an ``.npz``; uncompressed members are read-only memmaps.

    Raises ``ScanDataError`` naming the file for anything that is not a readable
    archive of ``.npy`` members (missing, truncated, not a zip, pickled objects, a header that
    declares more data than its member holds), and ``ScanTooLargeError`` for a compressed member
    that would not fit in the memory available.
    """
    path = existing_file(path, "an .npz file")
    file_size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive, open(path, "rb") as raw:
            return read_archive(path, archive, raw if mmap else None, file_size)
    except zipfile.BadZipFile as exc:
        raise ScanDataError(
            f"{path}: not a readable .npz archive ({exc}); the file may be truncated or of another format"
        ) from exc
    except (EOFError, OSError, zipfile.LargeZipFile) as exc:
        raise ScanDataError(f"{path}: could not read the archive ({exc})") from exc


def read_archive(path: Path, archive: zipfile.ZipFile, raw: Any, file_size: int) -> dict[str, np.ndarray]:
    """The ``.npy`` members of an open zip ``archive`` of ``path``: stored members memory-mapped from
    ``raw`` (the file opened for reading, or None to read every member into memory)."""
    members = [info for info in archive.infolist() if info.filename.endswith(".npy")]
    return {
        info.filename[: -len(".npy")]: _read_member(path, raw, archive, info, file_size) for info in members
    }


def _read_member(path, raw, archive, info, file_size) -> np.ndarray:
    key = info.filename[: -len(".npy")]
    where = f"{path}: key {key!r}: "
    if info.compress_type == zipfile.ZIP_STORED and raw is not None:
        mapped = _memmap_member(path, raw, info, file_size, key)
        if mapped is not None:
            return mapped
    try:
        with archive.open(info) as member:
            shape, fortran_order, dtype = _read_header(member)
            if dtype.hasobject:
                return _read_string_object(member, path, key, shape, dtype)
            nbytes = declared_bytes(shape, dtype, where)
            _check_member_size(where, shape, dtype, nbytes, info.file_size - member.tell())
            check_fits(nbytes, where, f"shape {shape} {dtype}")
            return _read_data(member, shape, fortran_order, dtype, nbytes, where)
    except ScanDataError:
        raise
    except ValueError as exc:
        raise ScanDataError(f"{path}: key {key!r} could not be read ({exc})") from exc
    except (EOFError, zipfile.BadZipFile) as exc:
        raise ScanDataError(f"{path}: key {key!r} is truncated or corrupt ({exc})") from exc
    except MemoryError as exc:
        raise ScanTooLargeError(f"{where}ran out of memory while reading it ({exc})") from exc


def declared_bytes(shape: tuple[int, ...], dtype: np.dtype, where: str) -> int:
    """Bytes an array of ``shape`` and ``dtype`` (from a file's header) holds, in exact integers;
    ``ScanDataError`` for a shape or dtype that no array can have."""
    if any(not isinstance(n, int) or n < 0 for n in shape):
        raise ScanDataError(f"{where}header declares shape {shape}; expected non-negative integers")
    if dtype.itemsize == 0:
        raise ScanDataError(f"{where}header declares dtype {dtype.str!r} of 0 bytes per element")
    if math.prod(n for n in shape if n) * dtype.itemsize >= 1 << 62:
        raise ScanDataError(
            f"{where}header declares shape {shape} of {dtype}, more bytes than any array can hold; the file is "
            "damaged or forged"
        )
    return math.prod(shape) * dtype.itemsize


def _check_member_size(where: str, shape, dtype, nbytes: int, held: int) -> None:
    """The data a header declares must be exactly what the zip entry holds after the header."""
    name = where.rstrip(": ")
    if nbytes > held:
        raise ScanDataError(
            f"{name} is truncated or forged: its header declares shape {shape} {dtype}, {nbytes} bytes, but the "
            f"archive entry holds {max(held, 0)} bytes of data"
        )
    if nbytes < held:
        raise ScanDataError(
            f"{name} is damaged or forged: its header declares shape {shape} {dtype}, {nbytes} bytes, but the "
            f"archive entry holds {held} bytes of data, {held - nbytes} more than the array"
        )


def _read_data(stream, shape, fortran_order, dtype, nbytes, where) -> np.ndarray:
    """``nbytes`` from ``stream`` as an array, read into one buffer block by block."""
    buffer = np.empty(nbytes, np.uint8)
    view, done = memoryview(buffer), 0
    while done < nbytes:
        block = stream.read(min(_STREAM_BYTES, nbytes - done))
        if not block:
            raise ScanDataError(f"{where}truncated: {done} of the {nbytes} bytes its header declares")
        view[done : done + len(block)] = block
        done += len(block)
    return buffer.view(dtype).reshape(shape, order="F" if fortran_order else "C")


def _read_header(stream) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = npy_format.read_magic(stream)
    if version == (1, 0):
        return npy_format.read_array_header_1_0(stream)
    if version == (2, 0):
        return npy_format.read_array_header_2_0(stream)
    raise ValueError(f".npy format version {version} is not supported")


class _StringArrayUnpickler(pickle.Unpickler):
    """Admits only the globals a pickled 0-d object array needs; refuses every other one."""

    def __init__(self, stream, where: str) -> None:
        super().__init__(stream)
        self._where = where

    def find_class(self, module: str, name: str):
        found = _ALLOWED_GLOBALS.get((module, name))
        if found is None:
            raise ScanDataError(
                f"{self._where}the pickle asks for {module}.{name}; refused without running it: only a 0-d "
                "object array holding a string (numpy array reconstruction, ndarray, dtype, str) is read"
            )
        return found

    def persistent_load(self, pid):
        raise ScanDataError(f"{self._where}the pickle uses persistent id {pid!r}; refused")


def _read_string_object(stream, path, key, shape, dtype) -> np.ndarray:
    """A 0-d object array holding a str (PtychoPINN's ``_metadata``), read by a restricted unpickler."""
    where = f"{path}: key {key!r}: "
    if shape != () or dtype != np.dtype(object):
        raise ScanDataError(
            f"{where}holds Python objects (dtype {dtype}, shape {shape}); only a 0-d object array holding a "
            "string (e.g. PtychoPINN's _metadata JSON) is read, never other pickles"
        )
    try:
        value = _StringArrayUnpickler(stream, where).load()
    except ScanDataError:  # refused by find_class; it is a ValueError too, so let it through as is
        raise
    except _MALFORMED_PICKLE as exc:
        raise ScanDataError(
            f"{where}not a readable pickled 0-d object array ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(value, np.ndarray):
        raise ScanDataError(f"{where}the pickle holds a {type(value).__name__}; expected a 0-d object array")
    if value.shape != () or value.dtype != object or not isinstance(value.item(), str):
        held = type(value.item()).__name__ if value.size == 1 else "several values"
        raise ScanDataError(
            f"{where}the pickle holds an array of shape {value.shape}, dtype {value.dtype}, holding {held}; "
            "expected a 0-d object array holding a str"
        )
    return value


def _memmap_member(path, raw, info, file_size, key) -> np.ndarray | None:
    where = f"{path}: key {key!r}: "
    raw.seek(info.header_offset)
    header = raw.read(_LOCAL_HEADER.size)
    if len(header) < _LOCAL_HEADER.size or header[:4] != _LOCAL_MAGIC:
        raise ScanDataError(f"{path}: key {key!r} has a corrupt zip entry header")
    name_length, extra_length = _LOCAL_HEADER.unpack(header)[-2:]
    raw.seek(info.header_offset + _LOCAL_HEADER.size + name_length + extra_length)
    try:
        shape, fortran_order, dtype = _read_header(raw)
    except ValueError as exc:
        raise ScanDataError(f"{path}: key {key!r} is not a valid .npy member ({exc})") from exc
    if dtype.hasobject:
        return None  # read from the archive by the restricted unpickler instead
    offset = raw.tell()
    nbytes = declared_bytes(shape, dtype, where)
    data_start = info.header_offset + _LOCAL_HEADER.size + name_length + extra_length
    _check_member_size(where, shape, dtype, nbytes, info.file_size - (offset - data_start))
    if offset + nbytes > file_size:
        raise ScanDataError(
            f"{path}: key {key!r} is truncated: shape {shape} {dtype} needs {nbytes} bytes at offset "
            f"{offset}, but the file has {file_size} bytes"
        )
    if nbytes == 0:
        return np.zeros(shape, dtype=dtype)
    order = "F" if fortran_order else "C"
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order=order)


def _write_member(member, array: np.ndarray) -> None:
    """One ``.npy`` member; large arrays row-chunk by row-chunk, releasing memmap pages as they go."""
    if array.ndim == 0 or array.nbytes <= _STREAM_BYTES or array.dtype.hasobject:
        npy_format.write_array(member, array, allow_pickle=False)
        return
    header = {"descr": npy_format.dtype_to_descr(array.dtype), "fortran_order": False, "shape": array.shape}
    npy_format.write_array_header_2_0(member, header)
    rows = rows_per_chunk(array[:1].nbytes, _STREAM_BYTES)
    for _, chunk in iter_rows(array, rows):
        member.write(memoryview(np.ascontiguousarray(chunk)).cast("B"))


def _streamable(value) -> bool:
    """A lazy pattern source (``LazyPatterns``) too large to read whole: written row-chunk by row-chunk."""
    return hasattr(value, "detector") and value.nbytes > _STREAM_BYTES


def write_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> Path:
    """Write ``arrays`` as an uncompressed ``.npz``, atomically (temporary file, then rename).

    Uncompressed members can be memory-mapped by :func:`read_npz`. Memmapped inputs are
    streamed, not loaded whole.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            with zipfile.ZipFile(handle, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
                for key, value in arrays.items():
                    with zf.open(f"{key}.npy", mode="w", force_zip64=True) as member:
                        _write_member(member, value if _streamable(value) else np.asanyarray(value))
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o644)  # mkstemp makes 0600
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path

