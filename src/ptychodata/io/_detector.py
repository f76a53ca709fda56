"""Detector steps, applied per chunk of patterns while they stream from a file.

A :class:`DetectorSteps` turns raw detector frames (M, H, W) into contract patterns
(M, N, N) float32: transpose / flips, fftshift of unshifted data, crop to a square
window, integer binning (sums), clipping of negative values (dark subtraction),
NaN → 0, counts → amplitude (sqrt), and bad pixels set to 0. Every step is vectorised
over the chunk and the same steps map the (H, W) bad-pixel mask, so mask and patterns
stay aligned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ptychodata.errors import ScanDataError

__all__ = ["DetectorSteps"]


@dataclass(frozen=True, eq=False)
class DetectorSteps:
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
