"""Detector preparation, applied per chunk of patterns while they stream from a file.

A :class:`Preparation` turns raw detector frames (M, H, W) into contract patterns
(M, N, N) float32: transpose / flips, fftshift of unshifted data, crop to a square
window, integer binning (sums), clipping of negative values (dark subtraction),
NaN → 0, counts → amplitude (sqrt), and bad pixels set to 0. Every step is vectorised
over the chunk and the same steps map the (H, W) bad-pixel mask, so mask and patterns
stay aligned. :class:`LazyPatterns` applies a preparation on read, reading whole HDF5
chunks so none is decompressed twice.

:func:`analyze_sample` reads a bounded sample of whole chunks and measures what the
readers decide from: counts or amplitude, shifted or not, the beam centre.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ptychodata.errors import ScanDataError

__all__ = ["LazyPatterns", "PatternStats", "Preparation", "analyze_sample", "circular_centroid"]

# Sample read to decide counts / shift / centre: at most this many patterns and bytes.
_SAMPLE_PATTERNS = 256
_SAMPLE_BYTES = 64 << 20
_READ_BYTES = 32 << 20
# Counts rule: whole-number float data whose mean per-pattern total is at least this many
# times the number of pixels (N²) is counts. Amplitudes sqrt(c) of the same data total far less.
COUNTS_TOTAL_FACTOR = 10.0
# Shift rule: the mean pattern's circular centroid lies within this fraction of the axis length
# of index 0 (the corners) on both axes, with at least this concentration (resultant length).
_UNSHIFTED_WITHIN = 0.25
_MIN_CONCENTRATION = 0.05


@dataclass(frozen=True, eq=False)
class Preparation:
    """Steps from raw detector frames (H, W) to contract patterns (N, N), in this order.

    Attributes
    ----------
    transpose, flip_rows, flip_cols : bool
        Swap the detector axes; reverse the rows (up-down) or columns (left-right).
    shift : bool
        fftshift (move zero frequency from the corners to the centre), after the flips.
    crop : tuple of int (row0, col0, size) or None
        Square window on the shifted frame; None keeps the frame (must be square).
    bin : int
        Sum ``bin × bin`` blocks after the crop; ``size`` must be divisible by it.
    clip_negative : bool
        Set negative values (dark subtraction) to 0 before binning.
    counts : bool
        Values are counts: output sqrt(counts).
    bad : ndarray of shape (H, W), bool, or None
        Bad pixels of the raw frame (True = bad), after nothing: they are transformed here.
    keep_integers : bool
        Integer frames that are neither counts to convert nor binned come out in their own
        dtype (oriented, shifted, cropped, bad pixels zeroed): how a store that keeps counts
        as counts reads them. Otherwise the output is float32.
    """

    frame_shape: tuple[int, int]
    transpose: bool = False
    flip_rows: bool = False
    flip_cols: bool = False
    shift: bool = False
    crop: tuple[int, int, int] | None = None
    bin: int = 1
    clip_negative: bool = False
    counts: bool = False
    bad: np.ndarray | None = field(default=None, repr=False)
    keep_integers: bool = False

    def __post_init__(self) -> None:
        size = self.window
        if size % self.bin:
            raise ScanDataError(
                f"crop size {size} is not divisible by bin={self.bin}; choose crop= a multiple of bin"
            )
        object.__setattr__(self, "_rows", None)
        object.__setattr__(self, "_cols", None)
        object.__setattr__(self, "_mask", None)

    def output_dtype(self, raw_dtype: Any) -> np.dtype:
        """The dtype :meth:`apply` returns for raw frames of ``raw_dtype``."""
        raw_dtype = np.dtype(raw_dtype)
        keep = self.keep_integers and not self.counts and self.bin == 1 and raw_dtype.kind in "ui"
        return raw_dtype if keep else np.dtype(np.float32)

    @property
    def oriented_shape(self) -> tuple[int, int]:
        H, W = self.frame_shape
        return (W, H) if self.transpose else (H, W)

    @property
    def window(self) -> int:
        if self.crop is not None:
            return self.crop[2]
        H, W = self.oriented_shape
        if H != W:
            raise ScanDataError(
                f"detector frames are {H}×{W}, not square; pass crop=N (≤ {min(H, W)}) to cut a square window"
            )
        return H

    @property
    def N(self) -> int:
        """Pattern size after crop and bin."""
        return self.window // self.bin

    @property
    def is_identity(self) -> bool:
        return not (
            self.transpose
            or self.flip_rows
            or self.flip_cols
            or self.shift
            or self.crop is not None
            or self.bin != 1
            or self.clip_negative
            or self.counts
            or self.bad is not None
        )

    @property
    def mask(self) -> np.ndarray | None:
        """(N, N) bool, True = usable, or None when no pixel is bad."""
        if self.bad is None:
            return None
        if self._mask is None:
            bad = self._geometry(np.asarray(self.bad, bool)[None])[0]
            if self.bin > 1:
                n = self.N
                bad = bad.reshape(n, self.bin, n, self.bin).any(axis=(1, 3))
            object.__setattr__(self, "_mask", np.ascontiguousarray(~bad))
        return self._mask

    def steps(self) -> list[str]:
        """The steps as short strings, for metadata and messages."""
        steps = []
        if self.transpose:
            steps.append("transpose")
        if self.flip_rows:
            steps.append("flip rows")
        if self.flip_cols:
            steps.append("flip columns")
        if self.shift:
            steps.append("fftshift")
        if self.crop is not None:
            steps.append(f"crop {self.crop[2]}×{self.crop[2]} at row {self.crop[0]}, column {self.crop[1]}")
        if self.bin > 1:
            steps.append(f"bin {self.bin}×{self.bin} (sum)")
        if self.clip_negative:
            steps.append("clip negatives to 0")
        if self.counts:
            steps.append("sqrt (counts to amplitude)")
        if self.bad is not None and not self.mask.all():
            steps.append(f"zero {int((~self.mask).sum())} bad pixel(s)")
        return steps

    # ------------------------------------------------------------------ application
    def _indices(self) -> tuple[np.ndarray, np.ndarray]:
        if self._rows is None:
            H, W = self.oriented_shape
            row0, col0, size = self.crop if self.crop is not None else (0, 0, self.window)
            rows, cols = np.arange(row0, row0 + size), np.arange(col0, col0 + size)
            if self.shift:  # fftshift(x)[i] == x[(i - n // 2) % n]
                rows, cols = (rows - H // 2) % H, (cols - W // 2) % W
            object.__setattr__(self, "_rows", rows)
            object.__setattr__(self, "_cols", cols)
        return self._rows, self._cols

    def _geometry(self, frames: np.ndarray) -> np.ndarray:
        if self.transpose:
            frames = frames.swapaxes(-1, -2)
        if self.flip_rows:
            frames = frames[..., ::-1, :]
        if self.flip_cols:
            frames = frames[..., ::-1]
        rows, cols = self._indices()
        H, W = self.oriented_shape
        if len(rows) != H or rows[0] != 0 or not np.array_equal(rows, np.arange(H)):
            frames = np.take(frames, rows, axis=-2)
        if len(cols) != W or not np.array_equal(cols, np.arange(W)):
            frames = np.take(frames, cols, axis=-1)
        return frames

    def _bad_frame(self) -> np.ndarray | None:
        """Bad pixels in the cropped, unbinned frame (True = bad), or None."""
        if self.bad is None:
            return None
        if getattr(self, "_bad_geom", None) is None:
            object.__setattr__(
                self, "_bad_geom", np.ascontiguousarray(self._geometry(np.asarray(self.bad, bool)[None])[0])
            )
        return self._bad_geom

    def apply(self, raw: np.ndarray, first: int = 0) -> np.ndarray:
        """Prepared float32 patterns (m, N, N) from raw frames (m, H, W); ``first`` numbers them in errors.

        Bad pixels are zeroed before binning (a binned pixel with any bad part is zeroed
        after). Remaining NaN/Inf values, and negative counts unless ``clip_negative``, are
        errors naming the pattern.
        """
        raw = np.asarray(raw)
        if raw.ndim != 3 or tuple(raw.shape[1:]) != tuple(self.frame_shape):
            raise ScanDataError(
                f"frames of shape {raw.shape}; expected (m, {self.frame_shape[0]}, {self.frame_shape[1]})"
            )
        bad = self._bad_frame()
        if self.counts and raw.dtype.kind in "ui" and self.bin == 1:
            return self._integer_counts(self._geometry(raw), bad, first)
        if self.output_dtype(raw.dtype) != np.float32:
            return self._integers(self._geometry(raw), bad, first)
        frames = np.array(self._geometry(raw), dtype=np.float32)  # one copy, owned
        if bad is not None:
            frames[:, bad] = 0
        if frames.dtype.kind == "f" and raw.dtype.kind == "f":
            finite = np.isfinite(frames.reshape(len(frames), -1)).all(axis=1)
            if not finite.all():
                index = int(np.argmin(finite))
                raise ScanDataError(
                    f"pattern {first + index} holds NaN or Inf values outside the bad-pixel mask; expected finite "
                    "values (a pixel NaN in every sampled pattern is masked; pass mask= to mask others)"
                )
        if self.clip_negative:
            np.maximum(frames, 0, out=frames)
        elif self.counts and raw.dtype.kind != "u" and frames.size and frames.min() < 0:
            index = int(np.argmin(frames.reshape(len(frames), -1).min(axis=1)))
            raise ScanDataError(
                f"pattern {first + index} holds NaN, Inf or negative counts (min {frames[index].min():g}); "
                "expected counts >= 0; pass clip_negative=True to clip dark-subtraction negatives to 0"
            )
        if self.bin > 1:
            n = self.N
            frames = frames.reshape(len(frames), n, self.bin, n, self.bin).sum(axis=(2, 4), dtype=np.float32)
        if self.counts:
            np.sqrt(frames, out=frames)
        if bad is not None and self.bin > 1:
            frames *= self.mask
        return frames

    def _check_integer_counts(self, frames: np.ndarray, first: int) -> None:
        """Negative integer counts are an error naming the pattern (unless clipped)."""
        if frames.dtype.kind == "i" and frames.size and not self.clip_negative and frames.min() < 0:
            index = int(np.argmin(frames.reshape(len(frames), -1).min(axis=1)))
            raise ScanDataError(
                f"pattern {first + index} holds NaN, Inf or negative counts (min {frames[index].min()}); "
                "expected counts >= 0; pass clip_negative=True to clip dark-subtraction negatives to 0"
            )

    def _integers(self, frames: np.ndarray, bad: np.ndarray | None, first: int) -> np.ndarray:
        """Integer frames kept in their dtype (``keep_integers``): one owned copy."""
        self._check_integer_counts(frames, first)
        out = np.array(frames)
        if self.clip_negative and out.dtype.kind == "i":
            np.maximum(out, 0, out=out)
        if bad is not None:
            out[:, bad] = 0
        return out

    def _integer_counts(self, frames: np.ndarray, bad: np.ndarray | None, first: int) -> np.ndarray:
        """Integer counts, no binning: one fused pass sqrt(int) -> float32 (the common beamline case)."""
        self._check_integer_counts(frames, first)
        with np.errstate(invalid="ignore"):  # a negative count gives NaN, clipped to 0 below
            out = np.sqrt(frames, dtype=np.float32)
        if self.clip_negative:
            np.nan_to_num(out, copy=False, nan=0.0)
        if bad is not None:
            out[:, bad] = 0
        return out


def circular_centroid(profile: np.ndarray) -> tuple[float, float]:
    """Circular (wrap-around) centroid of a non-negative 1-D profile of length n.

    Returns ``(position in [0, n), concentration in [0, 1])``: the angle of
    Σ p_k e^{2πik/n} mapped to an index, and the resultant length |Σ p e^{iθ}| / Σ p.
    Four bright corners of an unshifted pattern average to index 0 here (not to the
    centre, as an ordinary centroid would).
    """
    profile = np.asarray(profile, np.float64)
    n = len(profile)
    total = profile.sum()
    if not total > 0:
        return 0.0, 0.0
    phasor = (profile * np.exp(2j * np.pi * np.arange(n) / n)).sum() / total
    return float(np.angle(phasor) % (2 * np.pi) * n / (2 * np.pi)), float(abs(phasor))


@dataclass(frozen=True)
class PatternStats:
    """Numbers measured on a sample of raw frames (oriented, not shifted, cropped or binned)."""

    n_sampled: int
    n_points: int
    dtype: str
    integer_dtype: bool
    whole_numbers: bool
    minimum: float
    maximum: float
    mean_total: float
    n_pixels: int
    n_negative: int
    nan_pixels: np.ndarray = field(repr=False)
    mean_pattern: np.ndarray = field(repr=False)
    mean_square_pattern: np.ndarray = field(repr=False)
    centroid: tuple[float, float]
    concentration: tuple[float, float]

    @property
    def looks_like_counts(self) -> bool:
        """The counts rule: an integer dtype, or whole-number values whose mean per-pattern
        total is at least ``COUNTS_TOTAL_FACTOR`` × the pixels per pattern."""
        if self.integer_dtype:
            return True
        return (
            self.whole_numbers
            and self.maximum >= 2
            and self.mean_total >= COUNTS_TOTAL_FACTOR * self.n_pixels
        )

    def counts_evidence(self) -> str:
        if self.integer_dtype:
            return f"integer dtype {self.dtype}"
        return (
            f"whole-number {self.dtype} values up to {self.maximum:.6g}, mean {self.mean_total:.4g} per pattern "
            f"= {self.mean_total / self.n_pixels:.3g} × the {self.n_pixels} pixels (rule: ≥ {COUNTS_TOTAL_FACTOR:g}×)"
        )

    @property
    def looks_unshifted(self) -> bool:
        """Zero frequency in the corners: the circular centroid lies near index 0 on both axes."""
        H, W = self.mean_pattern.shape
        near = [min(c, n - c) < _UNSHIFTED_WITHIN * n for c, n in zip(self.centroid, (H, W))]
        return all(near) and min(self.concentration) >= _MIN_CONCENTRATION

    def shift_evidence(self) -> str:
        (cy, cx), (ry, rx) = self.centroid, self.concentration
        H, W = self.mean_pattern.shape
        cy, cx = (c - n if c > n / 2 else c for c, n in ((cy, H), (cx, W)))  # signed: near 0 = the corners
        return (
            f"the mean pattern's circular centroid is at row {cy:.1f}, column {cx:.1f} of {H}×{W} "
            f"(concentration {ry:.2f}, {rx:.2f})"
        )

    @property
    def centroid_is_decisive(self) -> bool:
        """The mean pattern is concentrated enough for its centroid to say where zero frequency is."""
        return min(self.concentration) >= _MIN_CONCENTRATION

    def center_of_mass(self, shifted: bool) -> tuple[float, float]:
        """Centre of mass (row, col) of the mean pattern in the (optionally fftshifted) frame."""
        pattern = np.clip(self.mean_pattern, 0, None)
        pattern = np.fft.fftshift(pattern) if shifted else pattern
        total = pattern.sum()
        if not total > 0:
            return ((pattern.shape[0] - 1) / 2, (pattern.shape[1] - 1) / 2)
        rows, cols = pattern.sum(axis=1), pattern.sum(axis=0)
        return (
            float((rows * np.arange(len(rows))).sum() / total),
            float((cols * np.arange(len(cols))).sum() / total),
        )


def sample_blocks(n_points: int, rows_per_block: int, block_bytes: int) -> list[tuple[int, int]]:
    """Evenly spaced, block-aligned row ranges, together at most the sample limits."""
    limit = max(1, min(_SAMPLE_PATTERNS, _SAMPLE_BYTES // max(1, block_bytes // max(1, rows_per_block))))
    n_blocks_total = math.ceil(n_points / rows_per_block)
    n_blocks = max(1, min(n_blocks_total, limit // max(1, rows_per_block)))
    picks = np.unique(np.linspace(0, n_blocks_total - 1, n_blocks).round().astype(np.int64))
    return [(int(b) * rows_per_block, min(n_points, (int(b) + 1) * rows_per_block)) for b in picks]


def analyze_sample(raw: Any, orient: Preparation, where: str, exclude: np.ndarray | None = None) -> PatternStats:
    """Measure a sample of whole chunks of ``raw`` (M, H, W), oriented by ``orient``'s flips/transpose.

    ``exclude`` (oriented (H, W) bool, True = bad pixel) is left out of the mean pattern, so a
    hot pixel moves neither the centroid nor the centre of mass.
    """
    n_points = int(raw.shape[0])
    rows = int(getattr(raw, "rows_per_chunk", 1))
    if rows == 1:
        rows = 8
    frame_bytes = int(np.prod(raw.shape[1:])) * np.dtype(raw.dtype).itemsize
    dtype = np.dtype(raw.dtype)
    total = total_square = None
    low, high, count, totals, negatives, whole = math.inf, -math.inf, 0, 0.0, 0, True
    nan_pixels = None
    for start, stop in sample_blocks(n_points, rows, rows * frame_bytes):
        block = np.asarray(raw[start:stop])
        if orient.transpose:
            block = block.swapaxes(-1, -2)
        if block.dtype.kind == "c":
            raise ScanDataError(f"{where}complex dtype {block.dtype}; expected real detector intensities")
        values = block.astype(np.float64)
        finite = np.isfinite(values)
        nan_here = ~finite.any(axis=0)  # a bad pixel is NaN in every sampled pattern
        nan_pixels = nan_here if nan_pixels is None else nan_pixels & nan_here
        if not finite.all():
            values = np.where(finite, values, 0.0)
        if values.size:
            low, high = min(low, float(values.min())), max(high, float(values.max()))
        negatives += int((values < 0).sum())
        if whole and dtype.kind == "f":
            whole = bool(np.all(values == np.round(values)))
        totals += float(values.sum())
        summed, squared = values.sum(axis=0), np.square(values).sum(axis=0)
        total = summed if total is None else total + summed
        total_square = squared if total_square is None else total_square + squared
        count += len(values)
    mean = total / max(1, count)
    mean_square = total_square / max(1, count)
    if orient.flip_rows:
        mean, mean_square = mean[::-1], mean_square[::-1]
    if orient.flip_cols:
        mean, mean_square = mean[:, ::-1], mean_square[:, ::-1]
    if nan_pixels is not None:
        nan_pixels = nan_pixels[::-1] if orient.flip_rows else nan_pixels
        nan_pixels = nan_pixels[:, ::-1] if orient.flip_cols else nan_pixels
    if exclude is not None and exclude.any():
        mean = np.where(exclude, 0.0, mean)
        mean_square = np.where(exclude, 0.0, mean_square)
    positive = np.clip(mean, 0, None)
    cy = circular_centroid(positive.sum(axis=1))
    cx = circular_centroid(positive.sum(axis=0))
    return PatternStats(
        n_sampled=count,
        n_points=n_points,
        dtype=str(dtype),
        integer_dtype=bool(np.issubdtype(dtype, np.integer) or dtype == np.bool_),
        whole_numbers=whole,
        minimum=low,
        maximum=high,
        mean_total=totals / max(1, count),
        n_pixels=int(mean.size),
        n_negative=negatives,
        nan_pixels=np.zeros(mean.shape, bool) if nan_pixels is None else nan_pixels,
        mean_pattern=mean,
        mean_square_pattern=mean_square,
        centroid=(cy[0], cx[0]),
        concentration=(cy[1], cx[1]),
    )


class LazyPatterns:
    """Prepared patterns (M, N, N), float32 (or integers kept, see :meth:`keeping_integers`),
    read from ``raw`` and prepared on each read.

    ``raw`` is any row-sliceable array (an :class:`~ptychodata.io._hdf5.H5Dataset`, a
    memmap, an ndarray). Reads are widened to whole HDF5 chunks, and the decoded rows past
    the request are kept for the next read, so a sequential reader (``iter_rows``) decodes
    every chunk once whatever its step. Pickles by reference when ``raw`` does.

    Attributes
    ----------
    shape : tuple (M, N, N)
    dtype : numpy.dtype
        float32, or the raw integer dtype when integers are kept.
    rows_per_read : int
        A good number of rows for sequential reads: whole chunks, about 32 MiB.
    """

    def __init__(self, raw: Any, preparation: Preparation, *, where: str = ""):
        self.raw, self.preparation, self.where = raw, preparation, where
        N = preparation.N
        self.shape = (int(raw.shape[0]), N, N)
        self.dtype = preparation.output_dtype(raw.dtype)
        self._tail: tuple[int, np.ndarray] | None = None
        self._ahead: tuple[int, Any] | None = None  # (first row, future of the raw block read ahead)
        self._reader: Any = None  # one background thread, created on the first sequential read
        self._last_stop: int | None = None
        chunk_rows = int(getattr(raw, "rows_per_chunk", 1))
        frame_bytes = int(np.prod(raw.shape[1:])) * np.dtype(raw.dtype).itemsize
        self.rows_per_read = max(chunk_rows, (_READ_BYTES // max(1, frame_bytes)) // chunk_rows * chunk_rows)

    ndim = 3
    # Every read returns a new array that nothing else references: callers need not copy it.
    returns_fresh_arrays = True
    returns_copies = True

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    @property
    def mask(self) -> np.ndarray | None:
        return self.preparation.mask

    def __len__(self) -> int:
        return self.shape[0]

    def keeping_integers(self) -> LazyPatterns:
        """The same patterns with integer frames kept in their own dtype where nothing
        needs float32 (:attr:`Preparation.keep_integers`)."""
        return LazyPatterns(self.raw, replace(self.preparation, keep_integers=True), where=self.where)

    def __repr__(self) -> str:
        return f"LazyPatterns(shape={self.shape}, source={self.where or self.raw!r}, steps={self.preparation.steps()})"

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_tail"] = state["_ahead"] = state["_reader"] = state["_last_stop"] = None
        return state

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype, copy=False)

    def __getitem__(self, key: Any) -> np.ndarray:
        M = self.shape[0]
        if isinstance(key, tuple):
            first, rest = (key[0], key[1:]) if key else (slice(None), ())
            return self[first][(slice(None), *rest)] if not np.isscalar(first) else self[first][rest]
        if isinstance(key, (int, np.integer)):
            index = int(key) + M if key < 0 else int(key)
            if not 0 <= index < M:
                raise IndexError(f"pattern {key} out of range for {M} patterns")
            return self._rows(index, index + 1)[0]
        if isinstance(key, slice):
            start, stop, step = key.indices(M)
            if step == 1:
                return self._rows(start, max(start, stop))
            key = np.arange(start, stop, step)
        indices = np.asarray(key)
        if indices.dtype == bool:
            indices = np.flatnonzero(indices)
        indices = np.where(indices < 0, indices + M, indices).astype(np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= M):
            raise IndexError(f"pattern index out of range for {M} patterns")
        unique, inverse = np.unique(indices, return_inverse=True)
        if isinstance(self.raw, np.ndarray):
            raw = self.raw[unique]
        else:  # one read per HDF5 chunk touched, never one per row
            chunk = int(getattr(self.raw, "rows_per_chunk", 1))
            raw = np.empty((len(unique), *self.raw.shape[1:]), self.raw.dtype)
            blocks = unique // chunk
            starts = np.flatnonzero(np.r_[True, blocks[1:] != blocks[:-1]])
            for first, stop in zip(starts, np.r_[starts[1:], len(unique)]):
                block_start = int(blocks[first]) * chunk
                block = np.asarray(self.raw[block_start : min(M, block_start + chunk)])
                raw[first:stop] = block[unique[first:stop] - block_start]
        return self._prepare(raw, 0)[inverse.reshape(indices.shape)]

    def _rows(self, start: int, stop: int) -> np.ndarray:
        """Prepared rows [start, stop): whole chunks read, the rest kept, the next block read ahead.

        When reads are sequential (each starts where the last stopped), the next block of the
        same size is read in a background thread while this one is prepared and consumed:
        HDF5 decompression overlaps the NumPy work (which releases the GIL) and the caller's
        writing. At most one block is read ahead and one partial block kept.
        """
        if stop <= start:
            return np.empty((0, *self.shape[1:]), self.dtype)
        sequential = self._last_stop is None and start == 0 or self._last_stop == start
        self._last_stop = stop
        chunk = int(getattr(self.raw, "rows_per_chunk", 1))
        parts, position, block_end = [], start, None
        if self._tail is not None:
            tail_start, tail = self._tail
            if tail_start <= position < tail_start + len(tail):
                take = min(stop, tail_start + len(tail))
                parts.append(tail[position - tail_start : take - tail_start])
                self._tail = (take, tail[take - tail_start :]) if take < tail_start + len(tail) else None
                position = take
        while position < stop:
            block_start, block = self._block(position, stop, chunk)
            block_end = block_start + len(block)
            take = min(stop, block_end)
            parts.append(block[position - block_start : take - block_start])
            self._tail = (take, block[take - block_start :]) if block_end > take else None
            position = take
        if (
            sequential
            and block_end is not None
            and block_end < self.shape[0]
            and not isinstance(self.raw, np.ndarray)
        ):
            span = max(chunk, -(-(stop - start) // chunk) * chunk)
            self._read_ahead(block_end, min(self.shape[0], block_end + span))
        raw = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return self._prepare(raw, start)

    def _block(self, position: int, stop: int, chunk: int) -> tuple[int, np.ndarray]:
        """A raw block that starts at or before ``position``: the one read ahead, else read now."""
        if self._ahead is not None:
            ahead_start, future = self._ahead
            self._ahead = None
            block = future.result()
            if ahead_start <= position < ahead_start + len(block):
                return ahead_start, block
        aligned_start = position // chunk * chunk
        aligned_stop = min(self.shape[0], -(-stop // chunk) * chunk)
        return aligned_start, np.asarray(self.raw[aligned_start:aligned_stop])

    def _read_ahead(self, start: int, stop: int) -> None:
        if self._reader is None:
            from concurrent.futures import ThreadPoolExecutor

            self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ptychodata-read-ahead")
        self._ahead = (start, self._reader.submit(lambda: np.asarray(self.raw[start:stop])))

    def _prepare(self, raw: np.ndarray, first: int) -> np.ndarray:
        try:
            return self.preparation.apply(raw, first)
        except ScanDataError as exc:
            raise ScanDataError(f"{self.where}{exc}") from None
