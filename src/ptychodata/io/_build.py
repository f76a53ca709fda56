"""From a format's raw arrays to a contract :class:`~ptychodata.scan.ScanData` (§1, §10).

Decisions taken here, each recorded in ``scan.metadata`` and announced with a warning when
it changes the data:

- counts or amplitude: ``intensity=`` when given; else what the format says (CXI, tike,
  ptychodus training data and PtychoPINN export hold counts); else the counts rule of
  :class:`~ptychodata.io._prepare.PatternStats` (integer dtype, or whole numbers whose mean
  per-pattern total is ≥ 10 × N²). Counts become sqrt(counts), and their mean total per
  (prepared) pattern is recorded as ``nphotons``;
- shifted or not: ``shift=`` when given; else what the format says; else the mean pattern's
  circular centroid (near the corners → fftshift);
- bad pixels: the file's mask, ``mask=`` (True = usable) and NaN pixels, zeroed;
- crop to ``crop`` around ``center`` (row, col) or the mean pattern's centre of mass;
  non-square frames are cropped to a square; integer ``bin``;
- positions to object pixels: metres via ``pixel_size`` or the far-field geometry
  λ·z / (S·p) (S the detector window after crop, before bin); window corners to centres.
  Positions that would make neighbouring N-pixel windows overlap by less than half are
  near-field (Fresnel) data and refused unless ``near_field=True``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ptychodata.errors import ScanDataError
from ptychodata.grouping import median_neighbour_step
from ptychodata.io._hdf5 import H5Dataset
from ptychodata.io._prepare import LazyPatterns, PatternStats, Preparation, analyze_sample
from ptychodata.io._raw import RawScan
from ptychodata.io._units import far_field_pixel, wavelength_from_energy

__all__ = ["LoadOptions", "build_scan", "plan"]

# Near-field rule: far-field geometry whose median step exceeds this fraction of N.
NEAR_FIELD_STEP = 0.5
_EAGER_BYTES = 256 << 20


@dataclass(frozen=True)
class LoadOptions:
    """Options of :meth:`ScanData.load <ptychodata.scan.ScanData.load>` (see there)."""

    keys: dict[str, str] | None = None
    diffraction: str | None = None
    intensity: bool | None = None
    shift: bool | None = None
    crop: int | None = None
    center: tuple[float, float] | None = None
    bin: int = 1
    transpose: bool = False
    flip_rows: bool = False
    flip_cols: bool = False
    mask: Any = None
    clip_negative: bool | None = None
    pixel_size: float | None = None
    energy_eV: float | None = None
    wavelength_m: float | None = None
    distance_m: float | None = None
    detector_pixel_m: float | None = None
    position_unit: str | None = None
    position_columns: str | None = None
    position_origin: str | None = None
    probe_modes: str = "first"
    estimate_probe: bool = False
    near_field: bool = False
    patterns_only: bool = False

    def __post_init__(self) -> None:
        if self.bin < 1 or int(self.bin) != self.bin:
            raise ScanDataError(f"bin={self.bin!r}; expected a positive integer")
        if self.crop is not None and (int(self.crop) != self.crop or self.crop < 2):
            raise ScanDataError(f"crop={self.crop!r}; expected an integer pattern size >= 2")
        for name, allowed in (
            ("position_unit", ("px", "m")),
            ("position_columns", ("xy", "yx")),
            ("position_origin", ("centre", "corner")),
            ("probe_modes", ("first", "all")),
        ):
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise ScanDataError(f"{name}={value!r}; expected one of {allowed}")
        if self.pixel_size is not None and not self.pixel_size > 0:
            raise ScanDataError(
                f"pixel_size={self.pixel_size!r}; expected the object pixel size in metres, > 0"
            )


@dataclass
class Plan:
    """What :func:`plan` decided for a raw scan: the preparation and the evidence."""

    preparation: Preparation
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
    orient = Preparation(
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
    elif (
        not counts
        and options.intensity is None
        and stats.whole_numbers
        and stats.maximum >= 2
        and not stats.integer_dtype
    ):
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
    preparation = Preparation(
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
    return Plan(preparation, stats, counts, reason, not shift, shift_reason, messages)


def _oriented(frame: np.ndarray, options: LoadOptions) -> np.ndarray:
    """A raw-frame (H, W) array in the oriented frame: transpose, then flips."""
    frame = frame.T if options.transpose else frame
    frame = frame[::-1] if options.flip_rows else frame
    return frame[:, ::-1] if options.flip_cols else frame


def build_scan(raw: RawScan, options: LoadOptions, cls: type, *, decided: Plan | None = None) -> Any:
    """The :class:`ScanData` of ``raw`` prepared by ``options`` (warnings issued, metadata recorded)."""
    decided = plan(raw, options) if decided is None else decided
    prep = decided.preparation
    N, window = prep.N, prep.window
    Ho, Wo = prep.oriented_shape
    metadata: dict[str, Any] = {}
    stored = raw.metadata.pop("_metadata", None)
    if stored is not None:
        from ptychodata.scan import _parse_metadata

        metadata.update(_parse_metadata(stored, raw.where))
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
    from ptychodata.scan import _metadata_nphotons

    recorded = _metadata_nphotons(metadata, raw.where)  # validates the file's record, names the file
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
        None if v is None else np.asarray(v, np.float64).reshape(-1)
        for v in (raw.x, raw.y, raw.x_start, raw.y_start)
    )
    x, y, x_start, y_start, conversion = _positions(raw, options, decided, x, y, x_start, y_start, metadata)
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
    scan = cls(
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
    return scan


def _mean_photons(decided: Plan) -> float:
    """Mean counts per prepared pattern: the sampled mean frame through shift, crop, bin and mask."""
    prep = decided.preparation
    geometric = Preparation(
        prep.oriented_shape, shift=prep.shift, crop=prep.crop, bin=prep.bin, clip_negative=True
    )
    frame = geometric.apply(np.ascontiguousarray(decided.stats.mean_pattern[None]))[0]
    mask = prep.mask
    return float(frame.sum() if mask is None else (frame * mask).sum())


def _positions(raw, options, decided, x, y, x_start, y_start, metadata):
    prep = decided.preparation
    N, window = prep.N, prep.window
    Ho, Wo = prep.oriented_shape
    unit = raw.position_unit
    if unit == "px":
        _record_pixel_geometry(raw, options, metadata, window, Ho, Wo)
        if raw.position_origin == "corner":
            x, y = x + Wo / 2, y + Ho / 2
            x_start = None if x_start is None else x_start + Wo / 2
            y_start = None if y_start is None else y_start + Ho / 2
            text = f"object pixels; window corners to centres (+{Wo / 2:g}, +{Ho / 2:g})"
        else:
            text = "object pixels, used unchanged"
        if window != Wo or window != Ho:  # a smaller detector window makes the object pixel larger
            sx, sy = window / Wo, window / Ho
            x, y = x * sx, y * sy
            x_start = None if x_start is None else x_start * sx
            y_start = None if y_start is None else y_start * sy
            text += f"; scaled by the crop ({sx:g}, {sy:g}): the object pixel grows as the detector window shrinks"
        return x, y, x_start, y_start, text

    # metres
    geometry = _geometry(raw, options, metadata)
    if options.pixel_size is not None:
        pixel = (float(options.pixel_size), float(options.pixel_size))
        how = f"metres / pixel_size {options.pixel_size:g} m (given)"
        far_field = False
    elif raw.object_pixel_m is not None:
        pixel = raw.object_pixel_m
        how = f"metres / the file's object pixel ({pixel[1]:g} m wide, {pixel[0]:g} m high)"
        far_field = False
    else:
        missing = [
            name
            for name, value in (
                ("energy_eV= or wavelength_m=", geometry["wavelength_m"]),
                ("distance_m=", geometry["distance_m"]),
                ("detector_pixel_m=", geometry["detector_pixel_m"]),
            )
            if value is None
        ]
        if missing:
            raise ScanDataError(
                f"{raw.where}positions are in metres but the file lacks the geometry to convert them to object "
                f"pixels (missing {', '.join(missing)}); pass pixel_size=<object pixel in m> "
                f"(CLI --pixel-size), or the missing {', '.join(missing)} (CLI --energy-ev/--wavelength, "
                "--distance, --detector-pixel)"
            )
        wavelength, distance = geometry["wavelength_m"], geometry["distance_m"]
        p_y, p_x = geometry["detector_pixel_m"]
        pixel = (
            far_field_pixel(wavelength, distance, window, p_y),
            far_field_pixel(wavelength, distance, window, p_x),
        )
        how = (
            f"metres / far-field object pixel λz/(S·p) = {pixel[1]:.4g} m (λ {wavelength:.4g} m, z {distance:g} m, "
            f"S {window} detector pixels, p {p_x:g} m)"
        )
        far_field = True
    metadata["object_pixel_m"] = [pixel[1], pixel[0]]  # (x, y)
    if raw.object_origin is not None:
        origin_x_m, origin_y_m, origin_x_px, origin_y_px = raw.object_origin
        how += f"; object frame: {origin_x_m:g} m at pixel {origin_x_px:g} (x), {origin_y_m:g} m at {origin_y_px:g} (y)"
    else:
        origin_x_m, origin_y_m, origin_x_px, origin_y_px = float(x.min()), float(y.min()), N / 2, N / 2
        how += f"; the smallest position sits at pixel N/2 = {N / 2:g}"
    metadata["position_origin_m"] = [origin_x_m, origin_y_m]

    def to_px(values, origin_m, origin_px, size):
        return None if values is None else (values - origin_m) / size + origin_px

    px = to_px(x, origin_x_m, origin_x_px, pixel[1])
    py = to_px(y, origin_y_m, origin_y_px, pixel[0])
    if far_field and not options.near_field:
        step = median_neighbour_step(px, py)
        if step is not None and step > NEAR_FIELD_STEP * N:
            raise ScanDataError(
                f"{raw.where}looks like near-field (Fresnel) data, not far-field diffraction: with the far-field "
                f"object pixel λz/(S·p) = {pixel[1]:.3g} m the median scan step is {step:.1f} px = {step / N:.2f} N, "
                f"so N×N windows (N = {N}) would overlap by less than half; ptychodata prepares far-field data. "
                "To load it anyway, flagged metadata['near_field'] = True, pass near_field=True and "
                "pixel_size=<object pixel in m> (e.g. detector pixel / magnification; CLI: --near-field "
                "--pixel-size M)"
            )
    if options.near_field:
        if options.pixel_size is None:
            raise ScanDataError(
                f"{raw.where}near_field=True needs pixel_size=<object pixel in m>: the far-field relation λz/(N·p) "
                "does not hold for near-field (Fresnel) data"
            )
        metadata["near_field"] = True
    return (
        px,
        py,
        to_px(x_start, origin_x_m, origin_x_px, pixel[1]),
        to_px(y_start, origin_y_m, origin_y_px, pixel[0]),
        how,
    )


def _record_pixel_geometry(
    raw: RawScan, options: LoadOptions, metadata: dict[str, Any], window: int, Ho: int, Wo: int
) -> None:
    """For pixel positions: record the geometry and, when known, the object pixel (after the crop)."""
    geometry = _geometry(raw, options, metadata)
    if options.pixel_size is not None:
        metadata["object_pixel_m"] = [float(options.pixel_size)] * 2
    elif raw.object_pixel_m is not None:
        metadata["object_pixel_m"] = [
            raw.object_pixel_m[1] * Wo / window,
            raw.object_pixel_m[0] * Ho / window,
        ]
    elif None not in (geometry["wavelength_m"], geometry["distance_m"], geometry["detector_pixel_m"]):
        p_y, p_x = geometry["detector_pixel_m"]
        metadata["object_pixel_m"] = [
            far_field_pixel(geometry["wavelength_m"], geometry["distance_m"], window, p) for p in (p_x, p_y)
        ]


def _geometry(raw: RawScan, options: LoadOptions, metadata: dict[str, Any]) -> dict[str, Any]:
    energy = options.energy_eV if options.energy_eV is not None else raw.energy_eV
    wavelength = options.wavelength_m if options.wavelength_m is not None else raw.wavelength_m
    if wavelength is None and energy is not None and energy > 0:
        wavelength = wavelength_from_energy(energy)
    distance = options.distance_m if options.distance_m is not None else raw.distance_m
    pixel = (options.detector_pixel_m,) * 2 if options.detector_pixel_m is not None else raw.detector_pixel_m
    geometry = {
        "photon_energy_eV": energy,
        "wavelength_m": wavelength,
        "distance_m": distance,
        "detector_pixel_m": None if pixel is None else tuple(float(p) for p in pixel),
    }
    metadata.update({key: value for key, value in geometry.items() if value is not None})
    return geometry


def _estimated_probe(decided: Plan) -> np.ndarray:
    """(N, N) complex64 probe whose far field is sqrt of the mean prepared intensity, centred in real space."""
    prep = decided.preparation
    geometric = Preparation(prep.oriented_shape, shift=prep.shift, crop=prep.crop, bin=prep.bin, clip_negative=True)
    # counts: the mean of the values is the mean intensity; amplitudes: the mean of their squares
    stats = decided.stats
    intensity = stats.mean_pattern if decided.counts else stats.mean_square_pattern
    mean = geometric.apply(np.ascontiguousarray(intensity[None]))[0].astype(np.float64)
    far_field = np.sqrt(np.clip(mean, 0, None))
    probe = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(far_field), norm="ortho"))
    return probe.astype(np.complex64)


def _probe(raw, options, N, window, Wo, Ho, extras, decided) -> np.ndarray | None:
    if raw.probe is None:
        return None
    probe = np.asarray(raw.probe)
    if probe.ndim >= 3 and probe.shape[-1] == 1 and probe.shape[-2] > 1:  # (N, N, 1)
        probe = probe[..., 0]
    if probe.ndim < 2:
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


def read_scan(path: str | Path, cls: type, *, check_values: bool | None = None, **options: Any) -> Any:
    """Read any recognised scan file into ``cls`` (ScanData)."""
    from ptychodata.io._readers import read_raw

    load_options = LoadOptions(**options)
    raw = read_raw(Path(path), load_options)
    return build_scan(raw, load_options, cls)
