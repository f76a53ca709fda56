"""ptychodus' files: training-data HDF5, product files (with a diffraction file), PtychoPINN export.

- Training data (``save_training_data``, ``.h5``): ``patterns`` (M, H, W) counts as measured
  (bad pixels inpainted or zeroed), ``bad_pixels`` (H, W) bool (True = filled, not measured),
  ``probe`` (modes, N, N), ``object`` (H_o, W_o), ``probe_position_x_px``/``_y_px`` object-array
  pixel indices (used unchanged, as ptychodus' own PtychoPINN export does),
  ``object_pixel_width_m``/``_height_m``, ``photon_energy_eV``, ``detector_object_distance_m``.
- Product files (``.npz`` or ``.h5``): ``probe_position_x_m``/``_y_m`` metres, ``probe``,
  ``object``, ``object_pixel_width_m``/``_height_m``, ``object_center_x_m``/``_y_m``,
  ``probe_position_indexes`` (which pattern each position belongs to). They hold no patterns:
  pass the diffraction file as ``diffraction=``. Positions become object pixels as ptychodus
  maps them: ``(x_m − centre_x) / pixel_width + (W_o − 1) / 2``.
- The PtychoPINN export (``save_ptychopinn_training_data``) is a PtychoPINN ``.npz`` whose
  ``diff3d`` holds counts and which carries ``bad_pixels``; :mod:`ptychodata.io._npz_layouts`
  reads it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ptychodata.errors import ScanFormatError
from ptychodata.io._hdf5 import H5Dataset
from ptychodata.io._product import Product
from ptychodata.io._raw import RawScan, squeeze_frames

TRAINING = "ptychodus training data"
PRODUCT = "ptychodus product"
_TRAINING_KEYS = ("patterns", "probe_position_x_px", "probe_position_y_px")
_PRODUCT_KEYS = ("probe_position_x_m", "probe_position_y_m", "probe")


def is_training(container: Any) -> bool:
    return container.kind == "hdf5" and all(f"/{key}" in container for key in _TRAINING_KEYS)


def is_product(container: Any) -> bool:
    prefix = "/" if container.kind == "hdf5" else ""
    return all(f"{prefix}{key}" in container for key in _PRODUCT_KEYS)


def read_training(container: Any, options: Any) -> RawScan:
    path = container.path
    patterns = H5Dataset(path, "/patterns")
    if patterns.ndim != 3:
        raise ScanFormatError(f"{path}: dataset '/patterns' has shape {patterns.shape}; expected (M, H, W)")
    patterns = squeeze_frames(patterns, "/patterns", path, pattern_axis=options.pattern_axis)
    object_array = container.get("/object")
    pixel = (container.scalar("/object_pixel_height_m"), container.scalar("/object_pixel_width_m"))
    return RawScan(
        format=TRAINING,
        path=path,
        patterns=patterns,
        patterns_key="/patterns",
        positions_keys=("/probe_position_x_px", "/probe_position_y_px"),
        x=container.numbers("/probe_position_x_px").reshape(-1),
        y=container.numbers("/probe_position_y_px").reshape(-1),
        position_unit="px",
        probe=container.get("/probe"),
        object=None if object_array is None else np.asarray(object_array).reshape(object_array.shape[-2:]),
        bad=_bad_pixels(container, "/bad_pixels"),
        counts=True,
        counts_reason="ptychodus training data hold detector counts",
        energy_eV=container.scalar("/photon_energy_eV"),
        distance_m=container.scalar("/detector_object_distance_m"),
        object_pixel_m=None if None in pixel else pixel,
        geometry_keys={
            "energy_eV": "/photon_energy_eV",
            "distance_m": "/detector_object_distance_m",
            "object_pixel_m": "/object_pixel_height_m, /object_pixel_width_m",
        },
        notes=["positions: probe_position_x_px/_y_px used unchanged (object-array pixels)"],
    )


def read_product(container: Any, options: Any) -> Product:
    """A product file's positions, probe and object; the patterns come from ``options.diffraction``."""
    prefix = "/" if container.kind == "hdf5" else ""
    x_m = container.numbers(f"{prefix}probe_position_x_m").reshape(-1)
    y_m = container.numbers(f"{prefix}probe_position_y_m").reshape(-1)
    object_array = container.get(f"{prefix}object")
    if container.kind == "hdf5":  # save_product: geometry in attributes of /object and of the file
        pixel = (container.attr("/object", "pixel_height_m"), container.attr("/object", "pixel_width_m"))
        centre = (
            container.attr("/object", "center_x_m") or 0.0,
            container.attr("/object", "center_y_m") or 0.0,
        )
        energy, distance = (
            container.attr("/", "photon_energy_eV"),
            container.attr("/", "detector_object_distance_m"),
        )
    else:
        pixel = (container.scalar("object_pixel_height_m"), container.scalar("object_pixel_width_m"))
        centre = (container.scalar("object_center_x_m") or 0.0, container.scalar("object_center_y_m") or 0.0)
        energy, distance = (
            container.scalar("photon_energy_eV"),
            container.scalar("detector_object_distance_m"),
        )
    return Product(
        name=PRODUCT,
        path=container.path,
        x_m=x_m,
        y_m=y_m,
        probe=container.get(f"{prefix}probe"),
        object=object_array,
        pixel=pixel,
        centre=centre,
        energy_eV=energy,
        distance_m=distance,
        indexes=container.get(f"{prefix}probe_position_indexes"),
    )


def _bad_pixels(container: Any, key: str) -> np.ndarray | None:
    value = container.get(key)
    if value is None:
        return None
    bad = np.asarray(value) != 0
    return bad if bad.any() else None


def write_training(path: str | Path, scan: Any, *, compression: str = "lzf") -> Path:
    """Write ``scan`` as a ptychodus training-data HDF5 file, streamed, atomically.

    ``patterns`` are the counts again (amplitude², float32, chunked ``compression``),
    ``bad_pixels`` = not ``scan.mask``, ``probe`` (modes, N, N), ``object`` (the scan's, or
    ones covering every window when it has none, flagged in the file's attributes),
    ``probe_position_x_px``/``_y_px`` = ``xcoords``/``ycoords``, and the geometry ptychodus
    needs from ``scan.metadata``: ``object_pixel_m``, ``photon_energy_eV`` (or
    ``wavelength_m``) and ``distance_m``.
    """
    import os
    import tempfile

    from ptychodata._runtime import iter_rows
    from ptychodata.errors import ScanDataError
    from ptychodata.io._hdf5 import require_h5py
    from ptychodata.io._units import HC_EV_M

    h5py = require_h5py()
    path = Path(path)
    metadata = scan.metadata
    energy = metadata.get("photon_energy_eV")
    if energy is None and metadata.get("wavelength_m"):
        energy = HC_EV_M / float(metadata["wavelength_m"])
    needed = {
        "object_pixel_m": metadata.get("object_pixel_m"),
        "photon_energy_eV": energy,
        "distance_m": metadata.get("distance_m"),
    }
    missing = [name for name, value in needed.items() if value is None]
    if missing:
        raise ScanDataError(
            f"{scan.source or 'scan'}: ptychodus training data need {', '.join(missing)} in the scan's metadata; "
            "load it with pixel_size=, energy_eV= (or wavelength_m=) and distance_m= (CLI --pixel-size, "
            "--energy-ev, --distance), or write .npz instead"
        )
    if scan.probe is None:
        raise ScanDataError(
            f"{scan.source or 'scan'}: ptychodus training data need a probe; the scan has none"
        )
    N = scan.N
    probe = scan.extras.get("probe_modes", scan.probe[None])
    obj, made_object = scan.object, scan.object is None
    if made_object:
        shape = (int(np.ceil(scan.ycoords.max())) + N, int(np.ceil(scan.xcoords.max())) + N)
        obj = np.ones(shape, np.complex64)
    pixel_x, pixel_y = (float(v) for v in needed["object_pixel_m"])
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with h5py.File(tmp_name, "w") as f:
            patterns = f.create_dataset(
                "patterns",
                (scan.n_points, N, N),
                np.float32,
                chunks=(min(64, scan.n_points), N, N),
                compression=compression,
            )
            rows = max(64, (32 << 20) // (4 * N * N) // 64 * 64)
            for start, chunk in iter_rows(scan.diffraction, rows):
                patterns[start : start + len(chunk)] = np.square(chunk, dtype=np.float32)
            bad = np.zeros((N, N), bool) if scan.mask is None else ~scan.mask
            f.create_dataset("bad_pixels", data=bad, compression=compression)
            f.create_dataset("probe", data=np.asarray(probe, np.complex64), compression=compression)
            f.create_dataset("object", data=np.asarray(obj, np.complex64), compression=compression)
            f.create_dataset("probe_position_x_px", data=scan.xcoords, compression=compression)
            f.create_dataset("probe_position_y_px", data=scan.ycoords, compression=compression)
            f["object_pixel_width_m"], f["object_pixel_height_m"] = pixel_x, pixel_y
            f["detector_object_distance_m"] = float(needed["distance_m"])
            f["photon_energy_eV"] = float(energy)
            f.attrs["written_by"] = "ptychodata"
            f.attrs["object_is_placeholder"] = made_object
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path
