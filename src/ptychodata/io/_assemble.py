"""From a format's raw arrays to the fields of a contract scan (§1, §10).

Decisions taken here, each recorded in the scan's metadata and announced with a warning when
it changes the data:

- counts or amplitude: ``intensity=`` when given; else what the format says (CXI, tike,
  ptychodus training data and PtychoPINN export hold counts); else the counts rule
  (:mod:`ptychodata.io._counts`). Counts become sqrt(counts), and their mean total per
  (prepared) pattern is recorded as ``nphotons``;
- shifted or not: ``shift=`` when given; else what the format says; else the mean pattern's
  circular centroid (near the corners → fftshift);
- bad pixels: the file's mask, ``mask=`` (True = usable) and NaN pixels, zeroed;
- crop to ``crop`` around ``center`` (row, col) or the mean pattern's centre of mass;
  non-square frames are cropped to a square; integer ``bin``;
- positions to object pixels (:mod:`ptychodata.io._geometry`).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ptychodata.errors import ScanDataError, ScanTooLargeError
from ptychodata.io._detector import DetectorSteps
from ptychodata.io._geometry import object_pixel_positions
from ptychodata.io._hdf5 import H5Dataset
from ptychodata.io._lazy import LazyPatterns
from ptychodata.io._metadata import metadata_nphotons, parse_metadata
from ptychodata.io._options import LoadOptions
from ptychodata.io._plan import Plan, plan
from ptychodata.io._raw import RawScan, real_numbers
from ptychodata.io._registry import read_raw

__all__ = ["assemble", "check_finite_positions", "read_scan_fields"]

_EAGER_BYTES = 256 << 20
_START_KEYS = ("xcoords_start", "ycoords_start")


def assemble(raw: RawScan, options: LoadOptions, *, decided: Plan | None = None) -> dict[str, Any]:
    """The contract fields (``ScanData``'s keyword arguments) of ``raw`` prepared by ``options``
    (warnings issued, metadata recorded)."""
    decided = plan(raw, options) if decided is None else decided
    prep = decided.detector
    N, window = prep.N, prep.window
    Ho, Wo = prep.oriented_shape
    metadata: dict[str, Any] = {}
    stored = raw.metadata.pop("_metadata", None)
    if stored is not None:
        metadata.update(parse_metadata(stored, raw.where))
    metadata.update(raw.metadata)
    if not (prep.is_identity and raw.square_required):  # the contract npz as it is records nothing new
        metadata["format"] = raw.format
        metadata["preparation"] = prep.steps()
        metadata["counts"] = {
            "converted": decided.counts,
            "reason": decided.counts_reason,
            "evidence": decided.stats.counts_evidence(),
        }
        metadata["shift"] = {"shifted_in_file": decided.shifted_in_file, "reason": decided.shift_reason}
    if prep.mask is not None:
        metadata["bad_pixels"] = int((~prep.mask).sum())
    recorded = metadata_nphotons(metadata, raw.where)  # validates the file's record, names the file
    if decided.counts and recorded is None:  # the file's own record wins over the measured mean
        metadata["nphotons"] = _mean_photons(decided)

    # patterns
    if prep.is_identity and isinstance(raw.patterns, np.ndarray):
        patterns: Any = raw.patterns
    elif isinstance(raw.patterns, H5Dataset) or raw.patterns.nbytes > _EAGER_BYTES:
        patterns = LazyPatterns(raw.patterns, prep, where=f"{raw.where}key {raw.patterns_key!r}: ")
    else:  # already in memory (compressed npz, small memmap): prepare once
        patterns = LazyPatterns(raw.patterns, prep, where=f"{raw.where}key {raw.patterns_key!r}: ")[:]

    # positions
    x, y, x_start, y_start = (
        None if v is None else real_numbers(v, f"{raw.where}key {key!r}").reshape(-1)
        for v, key in zip((raw.x, raw.y, raw.x_start, raw.y_start), raw.positions_keys + _START_KEYS)
    )
    x, y = (  # the start positions are checked by ScanData, naming their keys
        check_finite_positions(values, raw.where, key) for values, key in zip((x, y), raw.positions_keys)
    )
    x, y, x_start, y_start, conversion = object_pixel_positions(
        raw, options, prep, (x, y, x_start, y_start), metadata
    )
    if conversion != "object pixels, used unchanged" or not raw.square_required:
        metadata["positions"] = conversion
    if raw.notes:
        metadata["reader_notes"] = list(raw.notes)

    extras = dict(raw.extras)
    probe = _probe(raw, options, N, window, Wo, Ho, extras, decided)
    if probe is None and options.estimate_probe:
        probe = _estimated_probe(decided)
        metadata["probe_estimated"] = "IFFT(sqrt(mean I)): the far-field amplitude of the mean pattern, zero phase"
        decided.warnings.append(
            f"{raw.where}no probe in the file: an ESTIMATE IFFT(sqrt(mean intensity)) (zero far-field phase) is "
            "used, flagged in metadata['probe_estimated']"
        )
    for message in decided.warnings:
        warnings.warn(message, UserWarning, stacklevel=4)
    return dict(
        diffraction=patterns,
        xcoords=x,
        ycoords=y,
        probe=probe,
        xcoords_start=x_start,
        ycoords_start=y_start,
        scan_index=raw.scan_index,
        object=raw.object,
        Y=raw.Y,
        mask=prep.mask,
        metadata=metadata,
        extras=extras,
        source=str(raw.path),
    )


def check_finite_positions(values: np.ndarray, where: str, key: str) -> np.ndarray:
    """``values`` when every one is finite, else ``ScanDataError`` naming the key, how many are
    NaN or Inf and the first (the one rule for positions, in readers and in ScanData)."""
    bad = ~np.isfinite(values)
    if bad.any():
        index = int(np.flatnonzero(bad)[0])
        raise ScanDataError(
            f"{where}key {key!r}: {int(bad.sum())} NaN/Inf value(s), first at index {index} ({values[index]}); "
            "expected finite positions"
        )
    return values


def _geometric(detector: DetectorSteps) -> DetectorSteps:
    """The shift, crop and bin of ``detector`` for an oriented mean frame (negatives clipped)."""
    return DetectorSteps(
        detector.oriented_shape, shift=detector.shift, crop=detector.crop, bin=detector.bin, clip_negative=True
    )


def _mean_photons(decided: Plan) -> float:
    """Mean counts per prepared pattern: the sampled mean frame through shift, crop, bin and mask."""
    prep = decided.detector
    frame = _geometric(prep).apply(np.ascontiguousarray(decided.stats.mean_pattern[None]))[0]
    mask = prep.mask
    return float(frame.sum() if mask is None else (frame * mask).sum())


def _estimated_probe(decided: Plan) -> np.ndarray:
    """(N, N) complex64 probe whose far field is sqrt of the mean prepared intensity, centred in real space."""
    # counts: the mean of the values is the mean intensity; amplitudes: the mean of their squares
    stats = decided.stats
    intensity = stats.mean_pattern if decided.counts else stats.mean_square_pattern
    mean = _geometric(decided.detector).apply(np.ascontiguousarray(intensity[None]))[0].astype(np.float64)
    far_field = np.sqrt(np.clip(mean, 0, None))
    probe = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(far_field), norm="ortho"))
    return probe.astype(np.complex64)


def _probe(raw, options, N, window, Wo, Ho, extras, decided) -> np.ndarray | None:
    if raw.probe is None:
        return None
    probe = np.asarray(raw.probe)
    if probe.ndim >= 3 and probe.shape[-1] == 1 and probe.shape[-2] > 1:  # (N, N, 1)
        probe = probe[..., 0]
    if probe.ndim < 2 or probe.size == 0:
        raise ScanDataError(
            f"{raw.where}probe of shape {probe.shape}; expected (N, N) or a stack of modes (..., N, N)"
        )
    modes = probe.reshape(-1, *probe.shape[-2:])
    if window != Wo or window != Ho:
        decided.warnings.append(
            f"{raw.where}the file's probe ({probe.shape[-2]}×{probe.shape[-1]}) was sampled for the uncropped "
            f"detector ({Ho}×{Wo}); after crop={window} it no longer matches the object pixel, so it is dropped "
            "(the scan has no probe)"
        )
        return None
    h, w = modes.shape[-2:]
    if h > N or w > N:
        r0, c0 = (h - N) // 2, (w - N) // 2
        modes = modes[:, r0 : r0 + N, c0 : c0 + N]
        decided.warnings.append(f"{raw.where}probe of {h}×{w} centre-cropped to the pattern size {N}×{N}")
    if len(modes) > 1:
        decided.warnings.append(
            f"{raw.where}probe has {len(modes)} modes (shape {probe.shape}): the first is the "
            "scan's probe"
            + (
                "; all are in extras['probe_modes']"
                if options.probe_modes == "all"
                else "; pass probe_modes='all' to keep all"
            )
        )
    if options.probe_modes == "all":
        extras["probe_modes"] = np.ascontiguousarray(modes, np.complex64)
    return modes[0]


def read_scan_fields(path: str | Path, **options: Any) -> dict[str, Any]:
    """The contract fields of any recognised scan file, read with ``options`` (:class:`LoadOptions`)."""
    load_options = LoadOptions(**options)
    raw = read_raw(Path(path), load_options)
    try:
        return assemble(raw, load_options)
    except MemoryError as exc:
        if isinstance(exc, ScanTooLargeError):
            raise
        raise ScanTooLargeError(f"{raw.where}ran out of memory while preparing the patterns ({exc or 'no detail'})") from exc
