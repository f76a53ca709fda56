"""How a frames build stores its patterns, and the conversion back to float32 amplitudes.

A build stores each pattern once, as one of:

======== ============= =================================== ==========================================
dtype    values        stored as                           converted to the amplitude A (float32)
======== ============= =================================== ==========================================
float32  amplitude     ``<f4``                             as is (the default)
float16  amplitude     ``<f2``                             exact widening to float32
bfloat16 amplitude     ``<u2``: the top 16 bits of a       ``uint32(stored) << 16`` viewed as float32
                       float32, rounded to nearest even
uint16   counts        ``<u2`` whole counts                ``sqrt(float32(stored))``
uint32   counts        ``<u4`` whole counts                ``sqrt(float32(stored))``
float32  counts        ``<f4`` (zero-copy of a counts      ``sqrt(stored)``
                       source only)
======== ============= =================================== ==========================================

Counts are lossless: a counts store serves exactly the X of a float32 store of the same
source prepared with ``intensity=True`` (the copy path computes ``sqrt(float32(counts))``
too). float16 and bfloat16 round the amplitudes; a build's energies and amplitude sums are
those of the stored (rounded) amplitudes, so its §5 scale normalises what it serves.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ptychodata.errors import FramesRangeError, ParameterError, ScanDataError, StoreError
from ptychodata.store._cache_paths import FrameFile, npy_name
from ptychodata.store._manifest import PatternsEntry

__all__ = [
    "FRAMES_DTYPES",
    "DecodedFrames",
    "FramesEncoding",
    "canonical_frames_dtype",
    "decode_into",
    "file_extent",
    "file_mapping",
    "map_patterns",
]

FRAMES_DTYPES = ("float32", "float16", "bfloat16", "uint16", "uint32")
_STORAGE = {"float32": "<f4", "float16": "<f2", "bfloat16": "<u2", "uint16": "<u2", "uint32": "<u4"}
_FLOAT16_MAX = float(np.finfo(np.float16).max)


def canonical_frames_dtype(frames_dtype: Any) -> str | None:
    """``frames_dtype`` as :func:`~ptychodata.store.prepare` takes it (a name such as
    ``"uint16"``, a NumPy type such as ``numpy.uint16``, a ``numpy.dtype``, or None) as its
    one name in :data:`FRAMES_DTYPES` (None stays None), so each spelling makes the same store.

    Raises ``ParameterError`` naming the value given and the dtypes a store can hold.
    """
    if frames_dtype is None:
        return None
    if isinstance(frames_dtype, str) and frames_dtype in FRAMES_DTYPES:
        return frames_dtype  # "bfloat16" has no NumPy dtype without ml_dtypes
    try:
        name = np.dtype(frames_dtype).name
    except (TypeError, ValueError):
        name = None
    if name not in FRAMES_DTYPES:
        raise ParameterError(
            f"frames_dtype={frames_dtype!r}; expected one of {FRAMES_DTYPES} (as a name, NumPy type or dtype) or None"
        )
    return name


@dataclass(frozen=True)
class FramesEncoding:
    """A stored pattern dtype and what its values are (``"amplitude"`` or ``"counts"``)."""

    dtype: str = "float32"
    values: str = "amplitude"

    def __post_init__(self) -> None:
        if self.dtype not in FRAMES_DTYPES:
            raise ParameterError(f"frames_dtype={self.dtype!r}; expected one of {FRAMES_DTYPES}")
        if self.values not in ("amplitude", "counts"):
            raise ParameterError(f"frame values {self.values!r}; expected 'amplitude' or 'counts'")
        counts = self.dtype in ("uint16", "uint32")
        if counts and self.values != "counts" or self.values == "counts" and self.dtype not in ("uint16", "uint32", "float32"):
            raise ParameterError(f"frames_dtype={self.dtype!r} cannot hold {self.values}")

    @classmethod
    def for_copy(cls, frames_dtype: str | None, intensity: bool) -> FramesEncoding:
        """The encoding a copying ``prepare`` writes for ``frames_dtype`` (None: float32)."""
        dtype = "float32" if frames_dtype is None else str(frames_dtype)
        if dtype not in FRAMES_DTYPES:
            raise ParameterError(f"frames_dtype={frames_dtype!r}; expected one of {FRAMES_DTYPES} or None")
        if dtype in ("uint16", "uint32"):
            if not intensity:
                raise ParameterError(
                    f"frames_dtype={dtype!r} stores whole detector counts; pass intensity=True with a counts "
                    "source (amplitudes can be stored as 'float32', 'float16' or 'bfloat16')"
                )
            return cls(dtype, "counts")
        return cls(dtype, "amplitude")

    @classmethod
    def of(cls, entry: PatternsEntry) -> FramesEncoding:
        return cls(entry.dtype, entry.values)

    @property
    def storage(self) -> np.dtype:
        """The NumPy dtype of the stored array."""
        return np.dtype(_STORAGE[self.dtype])

    @property
    def is_identity(self) -> bool:
        """Stored values are the float32 amplitudes themselves."""
        return self.dtype == "float32" and self.values == "amplitude"

    @property
    def conversion(self) -> str:
        """The conversion to float32 amplitudes, in words (recorded in the manifest)."""
        if self.values == "counts":
            return "A = sqrt(float32(stored))"
        return {
            "float32": "A = stored",
            "float16": "A = float32(stored)",
            "bfloat16": "A = (uint32(stored) << 16) viewed as float32",
        }[self.dtype]

    @property
    def holds(self) -> str:
        """What this encoding holds exactly, in words (for errors)."""
        if self.values == "counts" and self.storage.kind == "u":
            return f"holds whole counts in [0, {np.iinfo(self.storage).max}]"
        if self.dtype == "float16":
            return f"holds amplitudes up to {_FLOAT16_MAX:g}"
        return f"holds float32 {self.values}"

    def unencodable(self, raw: np.ndarray, amplitude: np.ndarray | None = None) -> tuple[int, str] | None:
        """The first pattern of a chunk that this encoding cannot hold exactly (its index in
        the chunk) and what it holds, in words; None where it holds them all. ``raw`` (P, N, N)
        as in the source (counts are checked: whole, finite, in the storage's range);
        ``amplitude`` their float32 amplitudes (float16's range is checked)."""
        if self.values == "counts" and self.storage.kind == "u":
            return _first_inexact_count(raw, int(np.iinfo(self.storage).max))
        if self.dtype == "float16" and amplitude is not None:
            peak = amplitude.reshape(len(amplitude), -1).max(axis=1, initial=0)
            beyond = ~(peak <= _FLOAT16_MAX)  # NaN too
            if beyond.any():
                bad = int(np.argmax(beyond))
                why = "not a finite amplitude" if np.isnan(peak[bad]) else f"beyond float16's largest {_FLOAT16_MAX:g}"
                return bad, f"has amplitude {float(peak[bad]):g}, {why}"
        return None

    def encode(self, raw: np.ndarray, amplitude: np.ndarray, first: int, where: str) -> np.ndarray:
        """The stored form of a chunk: ``raw`` (P, N, N) as in the source, ``amplitude`` its
        float32 amplitudes. ``first`` is the index of the chunk's first pattern, for errors.

        Raises ``FramesRangeError`` naming the first pattern the encoding cannot hold exactly
        (:meth:`unencodable`): nothing is clipped or rounded to a whole count."""
        if self.values == "counts" and raw.dtype.kind not in "uif":
            raise ScanDataError(f"{where}counts of dtype {raw.dtype}; expected integers or whole-valued floats")
        problem = self.unencodable(raw, amplitude)
        if problem is not None:
            bad, found = problem
            wider = {"uint16": "'uint32' (whole counts) or 'float32'", "float16": "'bfloat16' or 'float32'"}
            raise FramesRangeError(
                f"{where}pattern {first + bad} {found}; frames_dtype='{self.dtype}' {self.holds}; use "
                f"frames_dtype={wider.get(self.dtype, repr('float32'))}"
            )
        return self.stored_form(raw, amplitude)

    def stored_form(self, raw: np.ndarray, amplitude: np.ndarray | None) -> np.ndarray:
        """What :meth:`encode` returns, for values already checked (:meth:`unencodable`)."""
        if self.values == "counts":
            return raw.astype(self.storage, copy=False)  # written before the caller reuses raw
        if self.dtype == "float32":
            return amplitude
        if self.dtype == "float16":
            half = amplitude.astype(np.float16)
            half.view(np.uint16)[...] &= np.uint16(0x7FFF)  # -0.0 -> +0.0 (amplitudes are >= 0)
            return half
        bits = amplitude.view(np.uint32)  # bfloat16: round to nearest, ties to even
        return ((bits + (np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1)))) >> 16).astype(np.uint16)


def decode_into(encoding: FramesEncoding, stored: np.ndarray, out: np.ndarray, scale: float | np.ndarray | None = None) -> None:
    """``out[:] = A(stored) · scale`` in float32 (the §5 scale fused with the conversion).

    Each step is one NumPy pass over cache-sized data with no casting inner loop (those
    run at a fraction of memory speed): integers are widened by ``copyto``, half-precision
    bits are moved into float32 bits with integer shifts, and sqrt/multiply run in place.

    Parameters
    ----------
    encoding : FramesEncoding
    stored : ndarray of shape (P, N, N), ``encoding.storage``
    out : ndarray of shape (P, N, N), float32, C-contiguous
    scale : float32 scalar, ndarray of shape (P, 1, 1) float32, or None (unscaled)
    """
    if encoding.values == "counts":
        np.copyto(out, stored, casting="unsafe")  # exact for counts < 2**24, as the float32 path's cast
        np.sqrt(out, out=out)
    elif encoding.dtype == "bfloat16":
        bits = out.view(np.uint32)
        np.copyto(bits, stored)
        np.left_shift(bits, 16, out=bits)
    elif encoding.dtype == "float16":
        # float16 (sign bit clear: encode() stores +0.0 for -0.0) to float32 bits: the 15
        # exponent+mantissa bits shifted up by 13 are the same number times 2**-112, subnormals
        # included; multiplying by 2**112 is exact.
        bits = out.view(np.uint32)
        np.copyto(bits, stored.view(np.uint16))
        np.left_shift(bits, 13, out=bits)
        out *= np.float32(2.0**112)
    else:
        np.copyto(out, stored)
    if scale is not None:
        out *= scale


class DecodedFrames:
    """A read-only, fancy-indexable view of stored patterns as float32 amplitudes (M, N, N).

    ``frames[index]`` converts just the rows asked for, so code written for a float32
    pattern array (e.g. :func:`~ptychodata.grouped.grouped_dict`) reads any store.
    """

    def __init__(self, stored: np.ndarray, encoding: FramesEncoding):
        self.stored = stored
        self.encoding = encoding
        self.shape = stored.shape
        self.dtype = np.dtype(np.float32)
        self.ndim = stored.ndim

    def __len__(self) -> int:
        return len(self.stored)

    def __getitem__(self, index) -> np.ndarray:
        rows = np.asarray(self.stored[index])
        out = np.empty(rows.shape, np.float32)
        decode_into(self.encoding, rows, out)
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = self[:]
        return whole if dtype is None else whole.astype(dtype, copy=False)


def _first_inexact_count(raw: np.ndarray, limit: int) -> tuple[int, str] | None:
    """The first pattern of ``raw`` (P, N, N) holding a count that is not a whole number in
    [0, ``limit``] (a fraction, NaN, infinite, negative or too large) and what it holds, in
    words; None where every count is one."""
    flat = raw.reshape(len(raw), -1)
    if raw.dtype.kind == "f":
        inexact = ~np.isfinite(flat).all(axis=1) | (flat != np.floor(flat)).any(axis=1)
        if inexact.any():
            bad = int(np.argmax(inexact))
            value = flat[bad][~np.isfinite(flat[bad]) | (flat[bad] != np.floor(flat[bad]))][0]
            return bad, f"holds {value:g}, not a whole count"
    low = flat.min(axis=1, initial=0)
    high = flat.max(axis=1, initial=0)
    beyond = (low < 0) | (high > limit)
    if beyond.any():
        bad = int(np.argmax(beyond))
        return bad, f"holds counts in [{low[bad]:g}, {high[bad]:g}]"
    return None


def file_extent(array: np.ndarray) -> tuple[str, int] | None:
    """``(file, byte offset)`` of an array that is a whole ``np.memmap`` of a file (not a
    slice or view of one), else None."""
    if not isinstance(array, np.memmap) or not isinstance(array.base, mmap.mmap) or not array.filename:
        return None
    return str(array.filename), int(array.offset)


def file_mapping(array: np.ndarray, offset: int) -> tuple[mmap.mmap, int] | None:
    """``(mapping, file offset of its first byte)`` of the open ``mmap`` that holds ``array``
    (an ``np.memmap``, or an array made on an ``mmap``'s buffer, or a view of either), whose
    first byte is at byte ``offset`` of the file; None where ``array`` is not in an ``mmap``."""
    holder: Any = array
    while isinstance(holder, (np.ndarray, memoryview)):
        holder = holder.obj if isinstance(holder, memoryview) else holder.base
    if not isinstance(holder, mmap.mmap) or holder.closed or not len(holder) or not array.size:
        return None
    start = np.frombuffer(holder, np.uint8, count=1).ctypes.data  # where the mapping begins in memory
    return holder, int(offset) - (array.ctypes.data - start)


def map_patterns(build: Path, entry: PatternsEntry) -> np.ndarray:
    """Memory-map a frames build's patterns (M, N, N) in their stored dtype, from the build's
    own file or, for a zero-copy build, from the source file it references.

    Raises ``StoreError`` if the referenced file is gone or changed (size or modification
    time differ from the build's record): changed bytes are never served.
    """
    if entry.file is None:
        path = Path(build) / npy_name(FrameFile.PATTERNS)
        try:
            array = np.load(path, mmap_mode="r")
        except (ValueError, OSError) as exc:
            raise StoreError(f"{path}: unreadable store file ({exc}); prepare the store again") from exc
    else:
        problem = entry.changed()
        if problem is not None:
            raise StoreError(f"{Path(build)}: {problem}; prepare the store again (it will rebuild)")
        try:
            array = np.memmap(entry.file, dtype=np.dtype(entry.storage), mode="r", offset=entry.offset,
                              shape=tuple(entry.shape))
        except (ValueError, OSError) as exc:
            raise StoreError(f"{entry.file}: cannot map the patterns this zero-copy store references ({exc})") from exc
    if list(array.shape) != list(entry.shape) or array.dtype != np.dtype(entry.storage):
        raise StoreError(
            f"{Path(build)}: patterns of shape {list(array.shape)}, dtype {array.dtype.str}; the manifest says "
            f"{entry.shape}, {entry.storage}. Prepare the store again."
        )
    return array.view(np.ndarray)
