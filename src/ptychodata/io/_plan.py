"""Decisions taken from a sample of a raw scan's patterns and the load options: counts or
amplitudes, shifted or not, bad pixels, crop and bin. Each is recorded with its evidence."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ptychodata.errors import ScanDataError
from ptychodata.io._detector import DetectorSteps
from ptychodata.io._options import LoadOptions
from ptychodata.io._raw import RawScan
from ptychodata.io._sampling import PatternStats, analyze_sample

__all__ = ["Plan", "plan"]


@dataclass
class Plan:
    """What :func:`plan` decided for a raw scan: the detector steps and the evidence."""

    detector: DetectorSteps
    stats: PatternStats
    counts: bool
    counts_reason: str
    shifted_in_file: bool
    shift_reason: str
    warnings: list[str]


def plan(raw: RawScan, options: LoadOptions) -> Plan:
    """Decide counts, shift, mask, crop and bin for ``raw`` from a sample of its patterns."""
    where = raw.where + f"key {raw.patterns_key!r}: "
    messages: list[str] = []
    H, W = (int(n) for n in raw.patterns.shape[1:])
    orient = DetectorSteps(
        (H, W),
        transpose=options.transpose,
        flip_rows=options.flip_rows,
        flip_cols=options.flip_cols,
        crop=(0, 0, min(H, W)),
    )
    # bad pixels known before reading (the file's, the caller's) stay out of the statistics
    bad = _known_bad_pixels(raw, options, (H, W))
    stats = analyze_sample(raw.patterns, orient, where, exclude=_oriented(bad, options))
    counts, reason = _decide_counts(raw, options, stats, where, messages)
    shift, shift_reason = _decide_shift(raw, options, stats, where, messages)
    bad |= _raw_frame(stats.nan_pixels, options)  # and pixels NaN in every sampled pattern
    crop = _crop_window(raw, options, stats, shift, where, messages)
    detector = DetectorSteps(
        (H, W),
        transpose=options.transpose,
        flip_rows=options.flip_rows,
        flip_cols=options.flip_cols,
        shift=shift,
        crop=crop,
        bin=int(options.bin),
        clip_negative=bool(options.clip_negative),
        counts=counts,
        bad=bad if bad.any() else None,
    )
    return Plan(detector, stats, counts, reason, not shift, shift_reason, messages)


def _known_bad_pixels(raw: RawScan, options: LoadOptions, frame: tuple[int, int]) -> np.ndarray:
    """(H, W) bool, True = bad: the file's bad pixels and those ``mask=`` marks unusable."""
    bad = np.zeros(frame, bool)
    if raw.bad is not None:
        if raw.bad.shape != frame:
            raise ScanDataError(f"{raw.where}bad-pixel mask of shape {raw.bad.shape}; expected the frame shape {frame}")
        bad |= raw.bad
    if options.mask is not None:
        if options.mask.shape != frame:
            raise ScanDataError(
                f"mask= of shape {options.mask.shape}; expected the detector frame shape {frame} (True = usable)"
            )
        bad |= ~options.mask
    return bad


def _decide_counts(
    raw: RawScan, options: LoadOptions, stats: PatternStats, where: str, messages: list[str]
) -> tuple[bool, str]:
    """Counts or amplitudes: ``intensity=``, else the format's word, else the counts rule."""
    if options.intensity is not None:
        return bool(options.intensity), f"intensity={options.intensity} given"
    if raw.counts is not None:
        counts, reason = raw.counts, raw.counts_reason
    else:
        counts = stats.looks_like_counts
        reason = stats.counts_evidence() if counts else "values are not counts by the counts rule"
    if counts:
        evidence = reason if reason == stats.counts_evidence() else f"{reason}; {stats.counts_evidence()}"
        messages.append(
            f"{where}holds counts ({evidence}): converted to amplitude sqrt(counts); "
            "pass intensity=False if they are amplitudes"
        )
    elif stats.counts.low_dose_doubt:
        messages.append(
            f"{where}whole-number values ({stats.counts_evidence()}) are taken as amplitudes; if they are counts "
            "at low dose, pass intensity=True"
        )
    return counts, reason


def _decide_shift(
    raw: RawScan, options: LoadOptions, stats: PatternStats, where: str, messages: list[str]
) -> tuple[bool, str]:
    """Whether to fftshift: ``shift=``, else the format's convention unless the data contradict it,
    else the mean pattern's circular centroid."""
    if options.shift is not None:
        return bool(options.shift), f"shift={options.shift} given"
    if raw.shifted is not None and stats.centroid_is_decisive and raw.shifted == stats.looks_unshifted:
        # the format's convention and the data disagree: the data win, and say so
        shift = stats.looks_unshifted
        messages.append(
            f"{where}{raw.shifted_reason}, but {stats.shift_evidence()}: "
            + ("fftshifted" if shift else "kept as stored")
            + f" by the data; pass shift={not shift} to override"
        )
        return shift, stats.shift_evidence()
    if raw.shifted is not None:
        shift, reason = not raw.shifted, raw.shifted_reason
    else:
        shift, reason = stats.looks_unshifted, stats.shift_evidence()
    if shift:
        evidence = reason if reason == stats.shift_evidence() else f"{reason}; {stats.shift_evidence()}"
        messages.append(
            f"{where}patterns are not fftshifted ({evidence}): fftshifted so zero frequency is in the centre; "
            "pass shift=False to keep them as stored"
        )
    return shift, reason


def _crop_window(
    raw: RawScan, options: LoadOptions, stats: PatternStats, shift: bool, where: str, messages: list[str]
) -> tuple[int, int, int] | None:
    """(row0, col0, size) of the square window on the shifted, oriented frame, or None for all of it."""
    Ho, Wo = stats.mean_pattern.shape
    size = options.crop
    if size is None and Ho != Wo and raw.square_required:
        raise ScanDataError(
            f"{where}non-square patterns of shape {(Ho, Wo)}; expected (N, N); pass crop=N to cut a square window"
        )
    if size is None and Ho != Wo:
        size = min(Ho, Wo)
        messages.append(
            f"{where}detector frames are {Ho}×{Wo}: cropped to {size}×{size} around the beam centre; "
            "pass crop= to choose the size"
        )
    if size is None:
        return None
    if size > min(Ho, Wo):
        raise ScanDataError(f"{where}crop={size} exceeds the detector frame {Ho}×{Wo}")
    if options.center is not None:
        centre = options.center
    else:  # the mean pattern's centre of mass (bad pixels were left out of it)
        centre = stats.center_of_mass(shifted=shift)
    row0 = int(np.clip(round(centre[0]) - size // 2, 0, Ho - size))
    col0 = int(np.clip(round(centre[1]) - size // 2, 0, Wo - size))
    return None if (size == Ho == Wo and row0 == col0 == 0) else (row0, col0, size)


def _raw_frame(oriented: np.ndarray, options: LoadOptions) -> np.ndarray:
    """An oriented (H', W') array back in the raw frame: flips undone, then the transpose."""
    frame = oriented[::-1] if options.flip_rows else oriented
    frame = frame[:, ::-1] if options.flip_cols else frame
    return frame.T if options.transpose else frame


def _oriented(frame: np.ndarray, options: LoadOptions) -> np.ndarray:
    """A raw-frame (H, W) array in the oriented frame: transpose, then flips."""
    frame = frame.T if options.transpose else frame
    frame = frame[::-1] if options.flip_rows else frame
    return frame[:, ::-1] if options.flip_cols else frame
