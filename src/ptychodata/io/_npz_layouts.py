"""``.npz`` layouts: PtychoPINN (and ptychodus' PtychoPINN export), SLAC, PtychoNN.

- PtychoPINN (data contract §1): ``diffraction`` or ``diff3d`` (M, N, N) amplitudes,
  ``xcoords``/``ycoords`` object pixels, ``probeGuess``, ... Read as it is, memory-mapped.
- ptychodus' PtychoPINN export: the same keys plus ``bad_pixels``; its ``diff3d`` holds
  COUNTS (the source dtype), so it is square-rooted.
- SLAC: ``diffraction`` stored (N, N, M) with ``xcoords_start``/``ycoords_start`` (object
  pixels; metres when every |value| ≤ 1e-3, as ptychodus reads it, converted with
  ``detector_distance_m``, ``photon_energy_eV`` or ``probe_energy_ev``, ``detector_pixel_size_m``).
- PtychoNN: ``reciprocal`` (M, N, N) patterns, ``position`` (M, 2) metres, columns (y, x);
  ``real`` (M, N, N) complex patches when present.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ptychodata.errors import ScanFormatError
from ptychodata.io._raw import RawScan, positions_from_columns, squeeze_frames

PTYCHOPINN = "PtychoPINN npz"
EXPORT = "ptychodus PtychoPINN export"
SLAC = "SLAC npz"
PTYCHONN = "PtychoNN npz"
_KNOWN = {
    "diffraction",
    "diff3d",
    "xcoords",
    "ycoords",
    "xcoords_start",
    "ycoords_start",
    "probeGuess",
    "objectGuess",
    "scan_index",
    "Y",
    "_metadata",
    "bad_pixels",
    "mask",
}
# ptychodus' rule for SLAC files: coordinates are metres when every |value| is at most this.
_SLAC_METRES_BELOW = 1e-3


def is_ptychopinn(container: Any) -> bool:
    return container.kind == "npz" and any(key in container for key in ("diffraction", "diff3d", "xcoords"))


def is_ptychonn(container: Any) -> bool:
    return container.kind == "npz" and "reciprocal" in container and "position" in container


def read_ptychopinn(container: Any, options: Any) -> RawScan:
    path = container.path
    key = "diffraction" if "diffraction" in container else "diff3d"
    missing = [k for k in ("xcoords", "ycoords") if k not in container]
    if all(k in container for k in ("xcoords_start", "ycoords_start")):
        missing = []  # SLAC files carry only the *_start positions
    if key not in container:
        missing.insert(0, "diffraction (or diff3d)")
    if missing:
        raise ScanFormatError(
            f"{path}: missing required key(s) {', '.join(missing)}; keys present: {sorted(container.keys())}"
        )
    x_key = "xcoords" if "xcoords" in container else "xcoords_start"
    y_key = "ycoords" if "ycoords" in container else "ycoords_start"
    x, y = container.numbers(x_key), container.numbers(y_key)
    x = np.asarray(x).reshape(-1) if np.ndim(x) == 2 and 1 in np.shape(x) else x
    n_points = int(np.shape(x)[0]) if np.ndim(x) >= 1 else None
    axis = options.pattern_axis
    if axis is None and key == "diff3d":  # written (M, N, N) by PtychoPINN, ptychodus and ptychodata alike
        axis = "first" if container.shape(key) == (n_points,) * 3 else None
    patterns = squeeze_frames(container.raw(key), key, path, n_points, pattern_axis=axis)
    export = key == "diff3d" and "bad_pixels" in container
    slac = key == "diffraction" and "xcoords" not in container
    raw = RawScan(
        format=EXPORT if export else SLAC if slac else PTYCHOPINN,
        path=path,
        patterns=patterns,
        patterns_key=key,
        positions_keys=(x_key, y_key),
        x=x,
        y=y,
        x_start=container.get("xcoords_start") if "xcoords" in container else None,
        y_start=container.get("ycoords_start") if "ycoords" in container else None,
        scan_index=container.get("scan_index"),
        probe=container.get("probeGuess"),
        object=container.get("objectGuess"),
        Y=container.get("Y"),
        square_required=not slac,
        metadata={"_metadata": container.get("_metadata")},
        extras={k: container.read(k) for k in container if k not in _KNOWN},
    )
    if "mask" in container:  # ptychodata's own files: (N, N) bool, True = usable
        raw.bad = ~(np.asarray(container.read("mask")) != 0)
    if export:
        bad = np.asarray(container.read("bad_pixels")) != 0
        raw.bad = bad if bad.any() else None
        raw.counts, raw.counts_reason = True, "ptychodus' PtychoPINN export writes counts under diff3d"
    if slac:
        coords = np.abs(np.concatenate([np.ravel(x), np.ravel(y)]))
        if coords.size and coords.max() <= _SLAC_METRES_BELOW:
            raw.position_unit = "m"
            raw.distance_m = container.scalar("detector_distance_m")
            raw.energy_eV = container.scalar("photon_energy_eV") or container.scalar("probe_energy_ev")
            pixel = container.scalar("detector_pixel_size_m")
            raw.detector_pixel_m = None if pixel is None else (pixel, pixel)
            raw.geometry_keys = {
                "distance_m": "detector_distance_m",
                "energy_eV": "photon_energy_eV" if "photon_energy_eV" in container else "probe_energy_ev",
                "detector_pixel_m": "detector_pixel_size_m",
            }
            raw.notes.append(
                f"positions: metres (every |value| ≤ {_SLAC_METRES_BELOW:g}, ptychodus' SLAC rule)"
            )
    return raw


def read_ptychonn(container: Any, options: Any) -> RawScan:
    path = container.path
    patterns = squeeze_frames(container.raw("reciprocal"), "reciprocal", path, pattern_axis=options.pattern_axis)
    x, y = positions_from_columns(container.read("position"), "yx", "position", path)
    real = container.get("real")
    Y = (
        real
        if real is not None and np.iscomplexobj(real) and real.shape[:3] == tuple(patterns.shape[:3])
        else None
    )
    return RawScan(
        format=PTYCHONN,
        path=path,
        patterns=patterns,
        patterns_key="reciprocal",
        positions_keys=("position", "position"),
        x=x,
        y=y,
        position_unit=options.position_unit or "m",
        Y=Y,
        probe=container.get("probe"),
        extras={
            k: container.read(k)
            for k in container
            if k not in ("reciprocal", "position", "probe") and not (k == "real" and Y is not None)
        },
        notes=["positions: PtychoNN 'position' columns (y, x), metres"],
    )
