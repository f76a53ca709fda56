"""Any ``.npz`` or HDF5 file through an explicit key map.

``keys`` maps our names to the file's member names or dataset paths:

- ``diffraction`` (required): (M, H, W) frames;
- positions: ``xcoords`` and ``ycoords`` (two (M,) arrays), or ``positions`` (one (M, 2)
  array, or (M, 3) with a third column ignored) whose column order is ``position_columns``
  (``"xy"`` or ``"yx"``);
- optional: ``probe``, ``object``, ``bad_pixels`` ((H, W), non-zero = bad), ``energy_eV``,
  ``energy_J``, ``wavelength_m``, ``distance_m``, ``detector_pixel_m``.

Units and conventions come from the options: ``position_unit`` (``"px"`` or ``"m"``),
``position_origin`` (``"centre"`` or ``"corner"`` of the probe window), ``intensity``,
``shift``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ptychodata.errors import ScanFormatError
from ptychodata.io._hdf5 import H5Dataset
from ptychodata.io._raw import RawScan, positions_from_columns, squeeze_frames
from ptychodata.io._units import J_PER_EV

NAME = "key map"
KNOWN = {
    "diffraction",
    "xcoords",
    "ycoords",
    "positions",
    "probe",
    "object",
    "bad_pixels",
    "energy_eV",
    "energy_J",
    "wavelength_m",
    "distance_m",
    "detector_pixel_m",
}


def read(container: Any, options: Any) -> RawScan:
    path, keys = container.path, dict(options.keys)
    unknown = sorted(set(keys) - KNOWN)
    if unknown:
        raise ScanFormatError(
            f"keys= names {unknown} that ptychodata does not know; expected some of {sorted(KNOWN)}"
        )
    if "diffraction" not in keys:
        raise ScanFormatError(
            f"{path}: keys= needs 'diffraction' (the dataset of patterns); got {sorted(keys)}"
        )
    for member in keys.values():
        if member not in container:
            raise container.missing(member)
    key = keys["diffraction"]
    stored = container.raw(key)
    patterns = H5Dataset(path, key) if container.kind == "hdf5" else stored
    if container.kind == "hdf5" and patterns.ndim != 3:
        raise ScanFormatError(
            f"{path}: dataset {key!r} has shape {patterns.shape}; expected (M, H, W) patterns"
        )
    if "positions" in keys:
        if "xcoords" in keys or "ycoords" in keys:
            raise ScanFormatError(
                "keys= gives both 'positions' and 'xcoords'/'ycoords'; give one or the other"
            )
        x, y = positions_from_columns(
            container.read(keys["positions"]), options.position_columns or "xy", keys["positions"], path
        )
    elif "xcoords" in keys and "ycoords" in keys:
        x = container.numbers(keys["xcoords"]).reshape(-1)
        y = container.numbers(keys["ycoords"]).reshape(-1)
    else:
        raise ScanFormatError(
            f"{path}: keys= needs the positions: 'xcoords' and 'ycoords' (two (M,) arrays) or 'positions' "
            "(one (M, 2) array, with position_columns='xy' or 'yx')"
        )
    patterns = squeeze_frames(patterns, key, path, len(x), pattern_axis=options.pattern_axis)

    def scalar(name: str) -> float | None:
        return container.scalar(keys[name]) if name in keys else None

    energy = scalar("energy_eV")
    if energy is None and "energy_J" in keys:
        energy = scalar("energy_J") / J_PER_EV
    pixel = None
    if "detector_pixel_m" in keys:
        value = container.numbers(keys["detector_pixel_m"]).reshape(-1)
        pixel = (float(value[0]), float(value[-1])) if value.size in (1, 2) else None
        if pixel is None:
            raise ScanFormatError(
                f"{path}: {keys['detector_pixel_m']!r} holds {value.size} values; expected 1 or 2"
            )
    bad = None
    if "bad_pixels" in keys:
        bad = np.asarray(container.read(keys["bad_pixels"])) != 0
    obj = container.get(keys["object"]) if "object" in keys else None
    return RawScan(
        format=f"{'HDF5' if container.kind == 'hdf5' else 'npz'} by key map",
        path=path,
        patterns=patterns,
        patterns_key=key,
        positions_keys=(keys["positions"],) * 2 if "positions" in keys else (keys["xcoords"], keys["ycoords"]),
        x=x,
        y=y,
        position_unit=options.position_unit or "px",
        position_origin=options.position_origin or "centre",
        probe=container.get(keys["probe"]) if "probe" in keys else None,
        object=obj,
        bad=bad,
        energy_eV=energy,
        wavelength_m=scalar("wavelength_m"),
        distance_m=scalar("distance_m"),
        detector_pixel_m=pixel,
        geometry_keys={name: keys[name] for name in ("wavelength_m", "distance_m", "detector_pixel_m") if name in keys}
        | {"energy_eV": keys.get("energy_eV", keys.get("energy_J", ""))},
        metadata={"keys": keys},
    )
