"""HDF5 access through h5py (imported lazily): open, find datasets, read, check filters.

``import ptychodata`` never imports h5py; the first HDF5 file does. A dataset compressed
with a filter this h5py cannot decode (bitshuffle, LZ4, Blosc, ... without hdf5plugin) is
reported by the filter's name before any read, with the package that provides it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ptychodata._runtime import is_installed, optional_import
from ptychodata.errors import PtychodataError, ScanDataError, ScanFormatError, ScanTooLargeError
from ptychodata.io._limits import check_fits

__all__ = [
    "H5Dataset",
    "check_filters",
    "check_links",
    "check_patterns_dataset",
    "check_storage_files",
    "dataset_paths",
    "get_dataset",
    "open_h5",
    "read_dataset",
    "require_h5py",
]

# Filters h5py decodes without plugins.
_BUILTIN_FILTERS = {
    1: "gzip",
    2: "shuffle",
    3: "fletcher32",
    4: "szip",
    5: "nbit",
    6: "scaleoffset",
    32000: "lzf",
}
# A compressed patterns dataset storing less than 1/_MAX_RATIO of its bytes has its chunks counted:
# real detector data do not compress that well, unwritten chunks (fill values) take nothing.
_MAX_RATIO = 64

# Registered HDF5 filter ids that hdf5plugin provides, for error messages.
_PLUGIN_FILTERS = {
    307: "bzip2",
    32001: "blosc",
    32004: "lz4",
    32008: "bitshuffle",
    32013: "zfp",
    32015: "zstd",
    32017: "sz",
    32018: "fcidecomp",
    32023: "sz3",
    32026: "blosc2",
}


def require_h5py() -> Any:
    """Import h5py (and hdf5plugin when installed, which registers extra compression filters)."""
    h5py = optional_import("h5py", purpose="reading HDF5/CXI files")
    is_installed("hdf5plugin")  # registers bitshuffle, lz4, blosc, zstd, ... where installed
    return h5py


def open_h5(path: str | os.PathLike) -> Any:
    """Open an HDF5 file read-only, or raise ``ScanFormatError`` naming it."""
    h5py = require_h5py()
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise ScanFormatError(f"{path}: not a readable HDF5 file ({exc})") from exc


def get_dataset(h5: Any, key: str) -> Any:
    """The dataset at ``key`` (soft/external links followed), or None if absent or not a dataset.

    An external link is followed only to a regular file (``ScanDataError`` naming the link and its
    target otherwise: HDF5 would open a FIFO and block, or read a device).
    """
    h5py = require_h5py()
    try:
        check_links(h5, key)
        item = h5.get(key)
    except (KeyError, OSError, RuntimeError, ValueError) as exc:  # broken link, missing external file
        if isinstance(exc, PtychodataError):
            raise
        return None
    return item if isinstance(item, h5py.Dataset) else None


def check_links(h5: Any, key: str, depth: int = 0) -> None:
    """Refuse (``ScanDataError``) an external link on the way to ``key`` whose file exists but is not a
    regular file, before anything follows it (soft links resolved, at most 32 deep)."""
    h5py = require_h5py()
    if depth > 32:
        raise ScanFormatError(f"{h5.filename}: {key!r}: more than 32 soft links in a row (a loop?)")
    parts = [part for part in key.split("/") if part]
    for index in range(len(parts)):
        prefix = "/" + "/".join(parts[: index + 1])
        link = h5.get(prefix, getlink=True)
        if isinstance(link, h5py.SoftLink):
            target = link.path if link.path.startswith("/") else "/".join(parts[:index] + [link.path])
            check_links(h5, "/" + "/".join([target.strip("/"), *parts[index + 1 :]]).strip("/"), depth + 1)
            return
        if isinstance(link, h5py.ExternalLink):
            _check_external_file(h5.filename, link.filename, f"{h5.filename}: {prefix!r} (an external link)")
            return  # what lies beyond is in the other file, checked when it is opened there
        if link is None:
            return


def _check_external_file(parent: str, name: str, where: str) -> None:
    """Refuse an external file (link target, raw storage, virtual source) that exists but is not a
    regular file, wherever HDF5 may look for it: as named, beside the parent file, under HDF5_EXT_PREFIX."""
    from ptychodata.io._limits import regular_file

    if isinstance(name, bytes):
        name = name.decode(errors="replace")
    if name in ("", "."):  # the file itself (virtual datasets name it ".")
        return
    candidates = [name] if os.path.isabs(name) else [name, os.path.join(os.path.dirname(parent), name)]
    for prefix in os.environ.get("HDF5_EXT_PREFIX", "").split(":"):
        if prefix and not os.path.isabs(name):
            candidates.append(os.path.join(prefix, name))
    for candidate in candidates:
        if os.path.lexists(candidate):
            try:
                regular_file(candidate, "an HDF5 file")
            except ScanDataError as exc:
                raise ScanDataError(f"{where} points to {exc}") from None


def check_storage_files(dataset: Any, where: str) -> None:
    """Refuse a dataset whose data live in external raw files or virtual sources that are not regular files."""
    plist = dataset.id.get_create_plist()
    for index in range(plist.get_external_count()):
        _check_external_file(dataset.file.filename, plist.get_external(index)[0], f"{where}: external storage")
    h5py = require_h5py()
    if plist.get_layout() == getattr(h5py.h5d, "VIRTUAL", -1):
        for index in range(plist.get_virtual_count()):
            _check_external_file(dataset.file.filename, plist.get_virtual_filename(index), f"{where}: virtual source")


def dataset_paths(h5: Any) -> list[str]:
    """Absolute paths of every dataset reachable from the root, links followed, each once."""
    h5py = require_h5py()
    found: list[str] = []
    seen: set[Any] = set()

    def walk(group: Any, prefix: str) -> None:
        for name in group:
            path = f"{prefix}/{name}"
            try:
                link = group.get(name, getlink=True)
                if isinstance(link, h5py.ExternalLink):
                    _check_external_file(h5.filename, link.filename, f"{h5.filename}: {path!r} (an external link)")
                item = group[name]
            except (KeyError, OSError, RuntimeError, ValueError) as exc:
                if isinstance(exc, PtychodataError):
                    raise
                continue
            if isinstance(item, h5py.Dataset):
                found.append(path)
            elif isinstance(item, h5py.Group) and item.id not in seen:
                seen.add(item.id)
                walk(item, path)

    walk(h5, "")
    return found


def filters_of(dataset: Any) -> list[tuple[int, str]]:
    """(filter id, name) of each filter in the dataset's pipeline."""
    plist = dataset.id.get_create_plist()
    result = []
    for index in range(plist.get_nfilters()):
        code, _flags, _values, name = plist.get_filter(index)
        label = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
        result.append((int(code), _PLUGIN_FILTERS.get(int(code)) or _BUILTIN_FILTERS.get(int(code)) or label))
    return result


def check_filters(dataset: Any, where: str) -> None:
    """Raise ``ScanFormatError`` naming a compression filter this h5py cannot decode."""
    h5py = require_h5py()
    for code, name in filters_of(dataset):
        if not h5py.h5z.filter_avail(code):
            raise ScanFormatError(
                f"{where}: compressed with HDF5 filter {code} ({name}), which is not available here; "
                "install the filter plugins with `pip install hdf5plugin` (ptychodata loads it when present)"
            )


def read_dataset(dataset: Any, where: str, selection: Any = ()) -> np.ndarray:
    """``dataset[selection]`` as an ndarray; an unavailable filter or a read failure names ``where``.

    A whole dataset (``selection=()``) is read only when it fits in memory (``ScanTooLargeError``
    naming its shape otherwise); a selection is the caller's to size.
    """
    check_filters(dataset, where)
    if isinstance(selection, tuple) and selection == ():
        check_storage_files(dataset, where)
        shape = tuple(int(n) for n in dataset.shape or ())
        check_fits(math.prod(shape) * dataset.dtype.itemsize, f"{where}: ", f"shape {shape} {dataset.dtype}")
    try:
        return np.asarray(dataset[selection])
    except (OSError, RuntimeError, KeyError) as exc:
        raise ScanFormatError(f"{where}: could not be read ({exc})") from exc
    except MemoryError as exc:
        raise ScanTooLargeError(f"{where}: ran out of memory reading {selection!r} ({exc})") from exc


def check_patterns_dataset(dataset: Any, where: str) -> None:
    """Refuse a patterns dataset that cannot be read as numbers, whose chunks would not fit in memory
    (every read inflates whole chunks), or that declares far more data than the file stores (a shape
    of 10⁹ patterns over unwritten chunks reads as zeros)."""
    dtype = np.dtype(dataset.dtype)
    if dtype.kind not in "biuf":
        kind = {"S": "text", "U": "text", "O": "Python objects or text", "c": "complex numbers"}.get(dtype.kind, "data")
        error = ScanDataError if dtype.kind == "c" else ScanFormatError
        raise error(f"{where}: holds {kind} (dtype {dtype}, shape {dataset.shape}); expected real detector values")
    shape = tuple(int(n) for n in dataset.shape)
    if dataset.chunks is not None:
        chunk = tuple(int(n) for n in dataset.chunks)
        check_fits(math.prod(chunk) * dtype.itemsize, f"{where}: ", f"one chunk {chunk} {dtype} (read whole)")
    nbytes = math.prod(shape) * dtype.itemsize
    plist = dataset.id.get_create_plist()
    h5py = require_h5py()
    layout = plist.get_layout()
    if nbytes == 0 or layout == getattr(h5py.h5d, "VIRTUAL", -1) or plist.get_external_count() > 0:
        return
    stored = dataset.id.get_storage_size()
    if layout == h5py.h5d.CONTIGUOUS and stored < nbytes:
        _refuse_unstored(where, shape, dtype, f"{stored} of its {nbytes} bytes are stored")
    if layout == h5py.h5d.CHUNKED and stored * _MAX_RATIO < nbytes:
        expected = math.prod(-(-n // c) for n, c in zip(shape, dataset.chunks))
        written = dataset.id.get_num_chunks()
        if written < expected:
            _refuse_unstored(where, shape, dtype, f"{written} of its {expected} chunks are stored")


def _refuse_unstored(where: str, shape, dtype, found: str) -> None:
    raise ScanDataError(
        f"{where}: declares shape {shape} {dtype} but only {found}; the rest would read as fill values. "
        "The file is incomplete (still being written, or damaged) or forged"
    )


class H5Dataset:
    """A picklable recipe for one HDF5 dataset: (file, dataset path), reopened lazily per process.

    Behaves as a read-only array along its first axis: ``shape``, ``dtype``, ``chunks``,
    ``len()`` and ``[rows]``. Pickles by reference (file and path), never its data.
    """

    def __init__(self, path: str | os.PathLike, key: str):
        self.path, self.key = str(Path(path)), key
        self._file: Any = None
        self._dataset: Any = None
        where = f"{self.path}: dataset {key!r}"
        try:
            dataset = self.dataset
            self.shape = tuple(int(n) for n in dataset.shape)
            self.dtype = np.dtype(dataset.dtype)
            self.chunks = None if dataset.chunks is None else tuple(int(n) for n in dataset.chunks)
            self.filters = [name for _, name in filters_of(dataset)]
            check_filters(dataset, where)
            check_storage_files(dataset, where)
            check_patterns_dataset(dataset, where)
        except PtychodataError:
            raise
        except (OSError, RuntimeError, KeyError, ValueError, TypeError) as exc:
            raise ScanFormatError(f"{where}: its layout could not be read ({exc}); the file is damaged") from exc

    @property
    def dataset(self) -> Any:
        if self._dataset is None:
            self._file = open_h5(self.path)
            dataset = get_dataset(self._file, self.key)
            if dataset is None:
                raise ScanFormatError(f"{self.path}: no dataset {self.key!r}")
            self._dataset = dataset
        return self._dataset

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def rows_per_chunk(self) -> int:
        """Rows (first-axis entries) in one HDF5 chunk; 1 for contiguous storage."""
        return 1 if self.chunks is None else self.chunks[0]

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, selection: Any) -> np.ndarray:
        return read_dataset(self.dataset, f"{self.path}: dataset {self.key!r}", selection)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_file"] = state["_dataset"] = None
        return state

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = self._dataset = None
