"""CXI 1.6 (Coherent X-ray Imaging) files: one entry, detector frames, translations in metres.

Layout read (paths under ``/entry_1``):

- patterns: ``data_1/data`` (often a soft link) else ``instrument_1/detector_1/data``, (M, H, W);
- positions: ``sample_1/geometry_1/translation`` else ``data_1/translation``, (M, 3) metres,
  columns (x, y, z). The probe position is taken as +translation in x and y, as ptychodus 1.7
  reads it, so both tools agree (CXI's own convention moves the sample, i.e. −translation);
- ``instrument_1/detector_1/{distance, x_pixel_size, y_pixel_size, mask}``: metres; mask
  non-zero = bad pixel;
- ``instrument_1/source_1/{energy (J) | wavelength (m)}``;
- probe: ``instrument_1/source_1/illumination`` when present.

The detector data of a CXI file are intensities (counts), so they are square-rooted.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ptychodata.errors import ScanFormatError
from ptychodata.io._hdf5 import H5Dataset
from ptychodata.io._product import Product
from ptychodata.io._raw import RawScan, squeeze_frames
from ptychodata.io._units import J_PER_EV

NAME = "CXI 1.6"
_DATA = ("/entry_1/data_1/data", "/entry_1/instrument_1/detector_1/data")
_TRANSLATION = ("/entry_1/sample_1/geometry_1/translation", "/entry_1/data_1/translation")
_DETECTOR = "/entry_1/instrument_1/detector_1"
_SOURCE = "/entry_1/instrument_1/source_1"


PRODUCT = "CXI product (ptychodus)"
_EXTRAS = "/entry_1/ptychodus"


def can_read(container: Any) -> bool:
    return container.kind == "hdf5" and any(path in container for path in _DATA)


def is_product(container: Any) -> bool:
    """A CXI file of positions, probe and object but no detector data (ptychodus writes these)."""
    return (
        container.kind == "hdf5"
        and not can_read(container)
        and "/entry_1/image_1/data" in container
        and any(path in container for path in _TRANSLATION)
    )


def read_product(container: Any, options: Any) -> Product:
    """Positions +translation (x, y) metres, probe ``image_1``, object ``image_2``, geometry from the extras."""
    translation_key = next(key for key in _TRANSLATION if key in container)
    translation = container.numbers(translation_key)
    probe = np.asarray(container.read("/entry_1/image_1/data"))
    obj = container.get("/entry_1/image_2/data")
    pixel = (
        container.scalar(f"{_EXTRAS}/object_pixel_height_m"),
        container.scalar(f"{_EXTRAS}/object_pixel_width_m"),
    )
    centre = (
        container.scalar(f"{_EXTRAS}/object_center_x_m") or 0.0,
        container.scalar(f"{_EXTRAS}/object_center_y_m") or 0.0,
    )
    energy_J = container.scalar(f"{_SOURCE}/energy")
    return Product(
        name=PRODUCT,
        path=container.path,
        x_m=translation[:, 0].copy(),
        y_m=translation[:, 1].copy(),
        probe=probe,
        object=obj,
        pixel=pixel,
        centre=centre,
        energy_eV=None if energy_J is None else energy_J / J_PER_EV,
        distance_m=container.scalar(f"{_DETECTOR}/distance"),
        indexes=container.get(f"{_EXTRAS}/probe_position_indexes"),
    )


def read(container: Any, options: Any) -> RawScan:
    path = container.path
    data_key = next(key for key in _DATA if key in container)
    patterns = H5Dataset(path, data_key)
    if patterns.ndim != 3:
        raise ScanFormatError(f"{path}: dataset {data_key!r} has shape {patterns.shape}; expected (M, H, W)")
    patterns = squeeze_frames(patterns, data_key, path, pattern_axis=options.pattern_axis)
    translation_key = next((key for key in _TRANSLATION if key in container), None)
    if translation_key is None and getattr(options, "patterns_only", False):
        translation = np.zeros((0, 3))
    elif translation_key is None:
        raise ScanFormatError(
            f"{path}: no scan positions: neither {_TRANSLATION[0]!r} nor {_TRANSLATION[1]!r} exists; "
            "pass keys={'positions': '/path/to/dataset'} with position_unit='m' or 'px'"
        )
    else:
        translation = container.numbers(translation_key)
    if translation.ndim != 2 or translation.shape[1] < 2:
        raise ScanFormatError(
            f"{path}: dataset {translation_key!r} has shape {translation.shape}; expected (M, 3) (x, y, z) in metres"
        )
    x_pixel, y_pixel = (
        container.scalar(f"{_DETECTOR}/x_pixel_size"),
        container.scalar(f"{_DETECTOR}/y_pixel_size"),
    )
    detector_pixel = None
    if x_pixel is not None or y_pixel is not None:
        detector_pixel = (
            y_pixel if y_pixel is not None else x_pixel,
            x_pixel if x_pixel is not None else y_pixel,
        )
    energy_J = container.scalar(f"{_SOURCE}/energy")
    bad = None
    if f"{_DETECTOR}/mask" in container:
        mask = np.asarray(container.read(f"{_DETECTOR}/mask"))
        bad = mask != 0
    probe = container.get(f"{_SOURCE}/illumination")
    metadata: dict[str, Any] = {"translation_dataset": translation_key, "patterns_dataset": data_key}
    if f"{_DETECTOR}/basis_vectors" in container:
        metadata["detector_basis_vectors_m"] = np.asarray(
            container.read(f"{_DETECTOR}/basis_vectors")
        ).tolist()
    return RawScan(
        format=NAME,
        path=path,
        patterns=patterns,
        patterns_key=data_key,
        positions_keys=(translation_key or "positions",) * 2,
        x=translation[:, 0].copy(),
        y=translation[:, 1].copy(),
        position_unit="m",
        probe=probe,
        bad=bad,
        counts=True,
        counts_reason="CXI detector data are intensities",
        energy_eV=None if energy_J is None else energy_J / J_PER_EV,
        wavelength_m=container.scalar(f"{_SOURCE}/wavelength"),
        distance_m=container.scalar(f"{_DETECTOR}/distance"),
        detector_pixel_m=detector_pixel,
        geometry_keys={
            "energy_eV": f"{_SOURCE}/energy",
            "wavelength_m": f"{_SOURCE}/wavelength",
            "distance_m": f"{_DETECTOR}/distance",
            "detector_pixel_m": f"{_DETECTOR}/x_pixel_size, y_pixel_size",
        },
        metadata=metadata,
        notes=["positions = +translation (x, y), as ptychodus 1.7 reads CXI"],
    )
