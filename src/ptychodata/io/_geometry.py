"""Positions to object pixels: units (pixels or metres), the far-field object pixel, window
corners to centres, and the near-field rule."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.spatial import cKDTree

from ptychodata.errors import ScanDataError
from ptychodata.io._detector import DetectorSteps
from ptychodata.io._options import LoadOptions
from ptychodata.io._raw import RawScan
from ptychodata.io._units import far_field_pixel, wavelength_from_energy

__all__ = ["NEAR_FIELD_STEP", "median_neighbour_step", "object_pixel_positions"]

# Near-field rule: far-field geometry whose median step exceeds this fraction of N.
NEAR_FIELD_STEP = 0.5


def median_neighbour_step(x: np.ndarray, y: np.ndarray, *, max_points: int = 4096) -> float | None:
    """Median distance from a point to its nearest neighbour at another position.

    At most ``max_points`` evenly spaced points are queried, each against every point of
    the scan (so each distance is exact; only the median is taken over a sample). Points
    with more than seven others at their own position are left out. None when no point
    has a neighbour at another position.
    """
    points = np.stack([np.asarray(x, np.float64), np.asarray(y, np.float64)], axis=1)
    if len(points) < 2:
        return None
    stride = max(1, -(-len(points) // max_points))
    k = min(len(points), 8)
    distances, _ = cKDTree(points).query(points[::stride], k=k)
    distances = np.where(distances > 0, distances, np.inf)[:, 1:].min(axis=1)
    distances = distances[np.isfinite(distances)]
    return float(np.median(distances)) if distances.size else None


def object_pixel_positions(
    raw: RawScan,
    options: LoadOptions,
    detector: DetectorSteps,
    positions: tuple[Any, Any, Any, Any],
    metadata: dict[str, Any],
) -> tuple[Any, Any, Any, Any, str]:
    """The positions ``(x, y, x_start, y_start)`` (float64 arrays, the starts may be None) in object
    pixels of the prepared patterns (x = column, y = row), and how they were converted.

    Geometry found on the way (energy, distance, object pixel) is recorded in ``metadata``.
    """
    if raw.position_unit == "px":
        return _pixel_positions(raw, options, detector, positions, metadata)
    return _metre_positions(raw, options, detector, positions, metadata)


def _pixel_positions(raw, options, detector, positions, metadata):
    window = detector.window
    Ho, Wo = detector.oriented_shape
    x, y, x_start, y_start = positions
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


def _metre_positions(raw, options, detector, positions, metadata):
    N = detector.N
    x, y, x_start, y_start = positions
    pixel, how, far_field = _object_pixel(raw, options, detector.window, _geometry(raw, options, metadata))
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
    _check_far_field(raw, options, px, py, pixel, N, far_field)
    if options.near_field:
        metadata["near_field"] = True
    return (
        px,
        py,
        to_px(x_start, origin_x_m, origin_x_px, pixel[1]),
        to_px(y_start, origin_y_m, origin_y_px, pixel[0]),
        how,
    )


def _object_pixel(
    raw: RawScan, options: LoadOptions, window: int, geometry: dict[str, Any]
) -> tuple[tuple[float, float], str, bool]:
    """The object pixel (height, width) in metres, how it was found, and whether by the far-field relation."""
    if options.pixel_size is not None:
        pixel = (float(options.pixel_size), float(options.pixel_size))
        return pixel, f"metres / pixel_size {options.pixel_size:g} m (given)", False
    if raw.object_pixel_m is not None:
        pixel = raw.object_pixel_m
        return pixel, f"metres / the file's object pixel ({pixel[1]:g} m wide, {pixel[0]:g} m high)", False
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
            f"pixels (missing {', '.join(missing)}); pass pixel_size=<object pixel in m>, or the missing "
            f"{', '.join(missing)}"
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
    return pixel, how, True


def _check_far_field(raw, options, px, py, pixel, N, far_field) -> None:
    """Refuse positions too far apart for far-field data (near-field holograms) unless ``near_field``."""
    if far_field and not options.near_field:
        step = median_neighbour_step(px, py)
        if step is not None and step > NEAR_FIELD_STEP * N:
            raise ScanDataError(
                f"{raw.where}looks like near-field (Fresnel) data, not far-field diffraction: with the far-field "
                f"object pixel λz/(S·p) = {pixel[1]:.3g} m the median scan step is {step:.1f} px = {step / N:.2f} N, "
                f"so N×N windows (N = {N}) would overlap by less than half; ptychodata prepares far-field data. "
                "To load it anyway, flagged metadata['near_field'] = True, pass near_field=True and "
                "pixel_size=<object pixel in m> (e.g. detector pixel / magnification)"
            )
    if options.near_field and options.pixel_size is None:
        raise ScanDataError(
            f"{raw.where}near_field=True needs pixel_size=<object pixel in m>: the far-field relation λz/(N·p) "
            "does not hold for near-field (Fresnel) data"
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


# The file's geometry fields, what they are, and the load option that replaces each.
_FILE_GEOMETRY = (
    ("energy_eV", "photon energy (eV)", "energy_eV"),
    ("wavelength_m", "wavelength (m)", "wavelength_m"),
    ("distance_m", "detector distance (m)", "distance_m"),
    ("detector_pixel_m", "detector pixel size (m)", "detector_pixel_m"),
    ("object_pixel_m", "object pixel size (m)", "pixel_size"),
)


def _check_file_geometry(raw: RawScan, options: LoadOptions) -> None:
    """Refuse a geometry value of the file (one its load option does not replace) that is not a finite
    number > 0: a zero distance or a negative pixel would make every position wrong, silently."""
    for name, what, option in _FILE_GEOMETRY:
        value = getattr(raw, name)
        if value is None or getattr(options, option) is not None:
            continue
        values = value if isinstance(value, tuple) else (value,)
        if all(np.isfinite(v) and v > 0 for v in values):
            continue
        key = raw.geometry_keys.get(name) or name
        shown = values[0] if len(set(map(repr, values))) == 1 else values
        raise ScanDataError(
            f"{raw.where}{key}: the {what} is {shown!r}; expected a finite number > 0; pass {option}=... to "
            "give the right value"
        )


def _geometry(raw: RawScan, options: LoadOptions, metadata: dict[str, Any]) -> dict[str, Any]:
    _check_file_geometry(raw, options)
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
