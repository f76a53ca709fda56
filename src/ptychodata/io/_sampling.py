"""Statistics of a bounded sample of raw frames: what reading decides from (counts or
amplitudes, shifted or not, the beam centre, bad pixels)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ptychodata.errors import ScanDataError
from ptychodata.io._counts import CountsEvidence
from ptychodata.io._detector import DetectorSteps

__all__ = ["PatternStats", "analyze_sample", "circular_centroid", "sample_blocks"]

# Sample read to decide counts / shift / centre: at most this many patterns and bytes.
_SAMPLE_PATTERNS = 256

_SAMPLE_BYTES = 64 << 20

# Shift rule: the mean pattern's circular centroid lies within this fraction of the axis length
# of index 0 (the corners) on both axes, with at least this concentration (resultant length).
_UNSHIFTED_WITHIN = 0.25

_MIN_CONCENTRATION = 0.05


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
    def counts(self) -> CountsEvidence:
        """What the counts rule reads of this sample."""
        return CountsEvidence(self.dtype, self.whole_numbers, self.maximum, self.mean_total, self.n_pixels)

    @property
    def looks_like_counts(self) -> bool:
        """The counts rule (:class:`~ptychodata.io._counts.CountsEvidence`) on this sample."""
        return self.counts.looks_like_counts

    def counts_evidence(self) -> str:
        return self.counts.describe()

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


def analyze_sample(raw: Any, orient: DetectorSteps, where: str, exclude: np.ndarray | None = None) -> PatternStats:
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
