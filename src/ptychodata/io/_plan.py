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
    # bad pixels known before reading (the file's, the caller's; True = usable there) stay out of the statistics
    bad = np.zeros((H, W), bool)
    if raw.bad is not None:
        if raw.bad.shape != (H, W):
            raise ScanDataError(
                f"{raw.where}bad-pixel mask of shape {raw.bad.shape}; expected the frame shape {(H, W)}"
            )
        bad |= raw.bad
    if options.mask is not None:
        usable = np.asarray(options.mask)
        if usable.shape != (H, W):
            raise ScanDataError(
                f"mask= of shape {usable.shape}; expected the detector frame shape {(H, W)} (True = usable)"
            )
        bad |= ~usable.astype(bool)
    stats = analyze_sample(raw.patterns, orient, where, exclude=_oriented(bad, options))
    Ho, Wo = orient.oriented_shape

    # counts or amplitude
    if options.intensity is not None:
        counts, reason = bool(options.intensity), f"intensity={options.intensity} given"
    elif raw.counts is not None:
        counts, reason = raw.counts, raw.counts_reason
    else:
        counts = stats.looks_like_counts
        reason = stats.counts_evidence() if counts else "values are not counts by the counts rule"
    if counts and options.intensity is None:
        evidence = reason if reason == stats.counts_evidence() else f"{reason}; {stats.counts_evidence()}"
        messages.append(
            f"{where}holds counts ({evidence}): converted to amplitude sqrt(counts); "
            "pass intensity=False if they are amplitudes"
        )
    elif not counts and options.intensity is None and stats.counts.low_dose_doubt:
        messages.append(
            f"{where}whole-number values ({stats.counts_evidence()}) are taken as amplitudes; if they are counts "
            "at low dose, pass intensity=True"
        )

    # shift
    if options.shift is not None:
        shift, shift_reason = bool(options.shift), f"shift={options.shift} given"
    elif raw.shifted is not None and stats.centroid_is_decisive and raw.shifted == stats.looks_unshifted:
        # the format's convention and the data disagree: the data win, and say so
        shift, shift_reason = stats.looks_unshifted, stats.shift_evidence()
        messages.append(
            f"{where}{raw.shifted_reason}, but {stats.shift_evidence()}: "
            + ("fftshifted" if shift else "kept as stored")
            + f" by the data; pass shift={not shift} to override"
        )
    elif raw.shifted is not None:
        shift, shift_reason = not raw.shifted, raw.shifted_reason
    else:
        shift = stats.looks_unshifted
        shift_reason = stats.shift_evidence()
    if shift and options.shift is None:
        messages.append(
            f"{where}patterns are not fftshifted ("
            + (
                shift_reason
                if shift_reason == stats.shift_evidence()
                else f"{shift_reason}; {stats.shift_evidence()}"
            )
            + "): fftshifted so zero "
            "frequency is in the centre; pass shift=False to keep them as stored"
        )

    # and pixels NaN in every sampled pattern
    nan = stats.nan_pixels  # oriented like the stats; the mask is kept in the raw frame
    nan = nan[::-1] if options.flip_rows else nan
    nan = nan[:, ::-1] if options.flip_cols else nan
    bad |= nan.T if options.transpose else nan

    # crop (on the shifted, oriented frame) and bin
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
    crop = None
    if size is not None:
        if size > min(Ho, Wo):
            raise ScanDataError(f"{where}crop={size} exceeds the detector frame {Ho}×{Wo}")
        if options.center is not None:
            centre = (float(options.center[0]), float(options.center[1]))
        else:  # the mean pattern's centre of mass (bad pixels were left out of it)
            centre = stats.center_of_mass(shifted=shift)
        row0 = int(np.clip(round(centre[0]) - size // 2, 0, Ho - size))
        col0 = int(np.clip(round(centre[1]) - size // 2, 0, Wo - size))
        crop = None if (size == Ho == Wo and row0 == col0 == 0) else (row0, col0, size)

    clip = bool(options.clip_negative)
    detector = DetectorSteps(
        (H, W),
        transpose=options.transpose,
        flip_rows=options.flip_rows,
        flip_cols=options.flip_cols,
        shift=shift,
        crop=crop,
        bin=int(options.bin),
        clip_negative=bool(clip),
        counts=counts,
        bad=bad if bad.any() else None,
    )
    return Plan(detector, stats, counts, reason, not shift, shift_reason, messages)

def _oriented(frame: np.ndarray, options: LoadOptions) -> np.ndarray:
    """A raw-frame (H, W) array in the oriented frame: transpose, then flips."""
    frame = frame.T if options.transpose else frame
    frame = frame[::-1] if options.flip_rows else frame
    return frame[:, ::-1] if options.flip_cols else frame
