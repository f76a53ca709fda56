"""What kind of container a file is, from its first bytes, and its members as arrays.

Recognition is by content, never by suffix: the HDF5 signature (at byte 0 or at a
user-block offset 512, 1024, ...), the zip local-header magic of an ``.npz``, and the
bz2 / gzip magic of a compressed ``.npz``. ``Container`` hides the difference between
an ``.npz`` (members are NumPy arrays or read-only memmaps) and an HDF5 file (members
are datasets, read when asked) behind ``keys()``, ``shape()``, ``read()`` and
``lazy()``.
"""

from __future__ import annotations

import bz2
import gzip
import io
import os
import stat
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ptychodata._runtime import describe_bytes
from ptychodata.errors import PtychodataError, ScanDataError, ScanFormatError, ScanTooLargeError
from ptychodata.io._limits import memory_budget, regular_file
from ptychodata.io._raw import real_numbers

__all__ = ["Container", "open_container", "sniff"]

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_ZIP_MAGIC = b"PK\x03\x04"
_BZ2_MAGIC = b"BZh"
_GZIP_MAGIC = b"\x1f\x8b"
_NPY_MAGIC = b"\x93NUMPY"
_EXPECTED = "a scan file (.npz, .h5, .cxi, .npz.bz2)"
_INFLATE_BLOCK = 1 << 20


def _open_regular(path: Path):
    """``path`` opened for reading without blocking (a FIFO swapped in after the check would block
    ``open``), refused unless it is still a regular file."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ScanDataError(f"{path}: is not a regular file (it changed after it was checked); expected {_EXPECTED}")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def sniff(path: str | os.PathLike) -> str:
    """The container kind of ``path`` from its content.

    Returns
    -------
    {"hdf5", "zip", "bz2", "gzip", "npy", "unknown"}
    """
    path = regular_file(path, _EXPECTED)
    size = path.stat().st_size
    if size == 0:
        raise ScanFormatError(f"{path}: the file is empty (0 bytes); expected {_EXPECTED}")
    try:
        handle = _open_regular(path)
    except OSError as exc:
        raise ScanDataError(f"{path}: cannot be read ({exc.strerror or exc}); expected {_EXPECTED}") from exc
    with handle:
        head = handle.read(8)
        if head == _HDF5_MAGIC:
            return "hdf5"
        # HDF5 allows a user block: the signature then sits at 512, 1024, 2048, ...
        offset = 512
        while offset + 8 <= size and offset <= (1 << 20):
            handle.seek(offset)
            if handle.read(8) == _HDF5_MAGIC:
                return "hdf5"
            offset *= 2
    if head.startswith((_ZIP_MAGIC, b"PK\x05\x06")):
        return "zip"
    if head.startswith(_BZ2_MAGIC):
        return "bz2"
    if head.startswith(_GZIP_MAGIC):
        return "gzip"
    if head.startswith(_NPY_MAGIC):
        return "npy"
    return "unknown"


class Container:
    """Named arrays of one file, NPZ or HDF5, read on demand.

    Attributes
    ----------
    path : Path
    kind : {"npz", "hdf5"}
    compression : str or None
        ``"bz2"``/``"gzip"`` when the ``.npz`` itself was compressed (then read into memory).
    """

    def __init__(
        self,
        path: Path,
        kind: str,
        members: dict[str, np.ndarray] | None = None,
        h5: Any = None,
        compression: str | None = None,
    ):
        self.path, self.kind, self.compression = path, kind, compression
        self._members = members
        self._h5 = h5

    # ------------------------------------------------------------------ access
    def keys(self) -> list[str]:
        """Every array's name: NPZ member names, or absolute HDF5 dataset paths (links followed)."""
        if self._members is not None:
            return list(self._members)
        from ptychodata.io._hdf5 import dataset_paths

        return dataset_paths(self._h5)

    def __iter__(self):
        return iter(self.keys())

    def __contains__(self, key: str) -> bool:
        if self._members is not None:
            return key in self._members
        from ptychodata.io._hdf5 import get_dataset

        return get_dataset(self._h5, key) is not None

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.raw(key).shape)

    def raw(self, key: str) -> Any:
        """The member as stored: an ndarray/memmap, or an ``h5py.Dataset`` (nothing read yet)."""
        if self._members is not None:
            if key not in self._members:
                raise self.missing(key)
            return self._members[key]
        from ptychodata.io._hdf5 import get_dataset

        dataset = get_dataset(self._h5, key)
        if dataset is None:
            raise self.missing(key)
        return dataset

    def read(self, key: str) -> np.ndarray:
        """The whole member as an ndarray (use only for small arrays)."""
        value = self.raw(key)
        if self._members is not None:
            return value
        from ptychodata.io._hdf5 import read_dataset

        return read_dataset(value, where=f"{self.path}: dataset {key!r}")

    def numbers(self, key: str) -> np.ndarray:
        """The member as a float64 array, or ``ScanFormatError`` naming it when it holds text, objects
        or complex values instead of real numbers (numeric text is not parsed: its meaning is unknown)."""
        return real_numbers(self.read(key), f"{self.path}: {'dataset' if self.kind == 'hdf5' else 'key'} {key!r}")

    def get(self, key: str, default: Any = None) -> np.ndarray | None:
        return self.read(key) if key in self else default

    def scalar(self, key: str) -> float | None:
        """A 0-d or one-element numeric member as float, or None when absent."""
        if key not in self:
            return None
        value = np.asarray(self.read(key))
        if value.size != 1 or not np.issubdtype(value.dtype, np.number):
            raise ScanFormatError(
                f"{self.path}: {key!r} holds shape {value.shape} dtype {value.dtype}; expected one number"
            )
        return float(value.reshape(-1)[0])

    def attr(self, key: str, name: str) -> float | None:
        """A numeric HDF5 attribute ``name`` of ``key`` ("/" for the file) as float, or None."""
        if self._h5 is None:
            return None
        try:
            value = self._h5[key].attrs.get(name)
        except (KeyError, OSError):
            return None
        if value is None:
            return None
        value = np.asarray(value)
        return (
            float(value.reshape(-1)[0]) if value.size == 1 and np.issubdtype(value.dtype, np.number) else None
        )

    def missing(self, key: str) -> ScanFormatError:
        what = "dataset" if self.kind == "hdf5" else "key"
        present = self.keys()
        shown = ", ".join(present[:20]) + (f", ... ({len(present)} in all)" if len(present) > 20 else "")
        return ScanFormatError(f"{self.path}: no {what} {key!r}; the file holds: {shown or 'nothing'}")

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()

    def __enter__(self) -> Container:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_container(path: str | os.PathLike) -> Container:
    """Open ``path`` by its content: HDF5, ``.npz`` (zip), or a bz2/gzip-compressed ``.npz``."""
    from ptychodata.io._npz import read_npz

    path = Path(path)
    kind = sniff(path)
    if kind == "hdf5":
        from ptychodata.io._hdf5 import open_h5

        return Container(path, "hdf5", h5=open_h5(path))
    if kind == "zip":
        return Container(path, "npz", members=read_npz(path))
    if kind in ("bz2", "gzip"):
        blob = _inflate(path, kind)
        return Container(path, "npz", members=_npz_from_bytes(path, blob, kind), compression=kind)
    if kind == "npy":
        raise ScanFormatError(
            f"{path}: a single .npy array, not a scan; save the patterns and positions together in an .npz "
            "or HDF5 file and pass keys={'diffraction': ..., 'xcoords': ..., 'ycoords': ...}"
        )
    raise ScanFormatError(
        f"{path}: not a readable .npz, HDF5 or bz2/gzip-compressed .npz file (the file may be truncated or of another format; "
        f"first bytes {_first_bytes(path)!r})"
    )


def _inflate(path: Path, kind: str) -> bytes:
    """The decompressed bytes of a bz2 or gzip file holding an ``.npz``, streamed: refused as soon
    as they do not start as a zip archive (``ScanFormatError``) or grow past half the memory
    budget (``ScanTooLargeError``: the archive's arrays are read from them next)."""
    opener = bz2.open if kind == "bz2" else gzip.open
    budget = memory_budget()
    cap = None if budget is None else budget // 2
    blocks: list[bytes] = []
    total, checked = 0, False
    try:
        with opener(path, "rb") as handle:
            while block := handle.read(_INFLATE_BLOCK):
                blocks.append(block)
                total += len(block)
                if not checked and total >= 4:
                    checked, head = True, b"".join(blocks)[:4]
                    if not head.startswith((_ZIP_MAGIC, b"PK\x05\x06")):
                        raise ScanFormatError(
                            f"{path}: the {kind} stream does not hold an .npz archive (it starts with {head!r}, "
                            "not a zip header)"
                        )
                if cap is not None and total > cap:
                    raise ScanTooLargeError(
                        f"{path}: the {kind} stream inflates to more than {describe_bytes(cap)}, more than this "
                        f"process can hold with its arrays (half its memory budget); decompress it on disk "
                        f"(`{'bunzip2' if kind == 'bz2' else 'gunzip'} -k`) and read the .npz, whose members are "
                        "then memory-mapped"
                    )
    except PtychodataError:
        raise
    except (OSError, EOFError, ValueError) as exc:
        raise ScanFormatError(f"{path}: {kind} stream could not be decompressed ({exc}); truncated?") from exc
    except MemoryError as exc:
        raise ScanTooLargeError(f"{path}: ran out of memory decompressing the {kind} stream ({exc})") from exc
    if total < 4:
        raise ScanFormatError(f"{path}: the {kind} stream holds {total} bytes, not an .npz archive")
    return b"".join(blocks)


def _npz_from_bytes(path: Path, blob: bytes, kind: str) -> dict[str, np.ndarray]:
    from ptychodata.io._npz import read_archive

    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as archive:
            return read_archive(path, archive, None, len(blob))
    except zipfile.BadZipFile as exc:
        raise ScanFormatError(f"{path}: the {kind} stream does not hold an .npz archive ({exc})") from exc
    except (EOFError, OSError, zipfile.LargeZipFile) as exc:
        raise ScanFormatError(f"{path}: the .npz in the {kind} stream could not be read ({exc})") from exc


def _first_bytes(path: Path) -> bytes:
    with _open_regular(path) as handle:
        return handle.read(8)
