"""Reconstruction products (ptychodus HDF5/NPZ, CXI written by ptychodus): positions, probe and
object without patterns, which come from a separate diffraction file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ptychodata.errors import ScanFormatError
from ptychodata.io._raw import RawScan

__all__ = ["Product"]


@dataclass(frozen=True, eq=False)
class Product:
    """What a product file holds: positions in metres, probe, object and the object geometry.

    Attributes
    ----------
    name : str
        The product layout's name, for messages.
    path : Path
        The product file.
    x_m, y_m : ndarray of shape (M,), float64
        Probe positions in metres.
    probe, object : array or None
        As stored (a stack of modes or of slices is reduced when assembled).
    pixel : tuple (height, width) of float or None
        The object pixel in metres.
    centre : tuple (x, y) of float
        The object's centre in metres.
    energy_eV, distance_m : float or None
    indexes : array of shape (M,) or None
        Which pattern of the diffraction file each position belongs to.
    """

    name: str
    path: Path
    x_m: np.ndarray
    y_m: np.ndarray
    probe: Any
    object: Any
    pixel: tuple[Any, Any]
    centre: tuple[float, float]
    energy_eV: float | None
    distance_m: float | None
    indexes: Any

    def diffraction_file(self, options: Any) -> Path:
        """The diffraction file named by ``options.diffraction``, or ``ScanFormatError`` asking for it."""
        if options.diffraction is None:
            raise ScanFormatError(
                f"{self.path}: a {self.name} file (positions, probe and object, no diffraction patterns); "
                "pass the measured patterns as diffraction='patterns.h5' (CXI, ptychodus training data, .npz, "
                "or an HDF5 file with keys={'diffraction': ...})"
            )
        return Path(options.diffraction)

    def with_patterns(self, diffraction: RawScan) -> RawScan:
        """The raw scan of this product's positions, probe and object and ``diffraction``'s patterns."""
        patterns = self._selected(diffraction)
        origin = None
        if self.object is not None:
            height, width = np.asarray(self.object).shape[-2:]
            origin = (self.centre[0], self.centre[1], (width - 1) / 2, (height - 1) / 2)
        obj = None if self.object is None else np.asarray(self.object)
        while obj is not None and obj.ndim > 2:
            obj = obj[0]
        return RawScan(
            format=f"{self.name} + {diffraction.format}",
            path=self.path,
            patterns=patterns,
            patterns_key=f"{diffraction.path}: {diffraction.patterns_key}",
            positions_keys=("probe_position_x_m", "probe_position_y_m"),
            x=self.x_m,
            y=self.y_m,
            position_unit="m",
            probe=self.probe,
            object=obj,
            bad=diffraction.bad,
            counts=diffraction.counts,
            counts_reason=diffraction.counts_reason,
            shifted=diffraction.shifted,
            energy_eV=self.energy_eV or diffraction.energy_eV,
            wavelength_m=diffraction.wavelength_m,
            distance_m=self.distance_m or diffraction.distance_m,
            detector_pixel_m=diffraction.detector_pixel_m,
            object_pixel_m=None if None in self.pixel else self.pixel,
            object_origin=origin,
            metadata={"diffraction_file": str(diffraction.path)},
            notes=[
                "positions: (x_m − object_center_x_m) / object_pixel_width_m + (W − 1) / 2, as ptychodus maps them"
            ],
        )

    def _selected(self, diffraction: RawScan) -> Any:
        """The diffraction file's patterns, picked by ``indexes`` where they are not 0..M-1."""
        patterns = diffraction.patterns
        indexes = self.indexes
        if indexes is None or np.array_equal(np.asarray(indexes).reshape(-1), np.arange(len(patterns))):
            return patterns
        indexes = np.asarray(indexes, np.int64).reshape(-1)
        if indexes.size and (indexes.min() < 0 or indexes.max() >= len(patterns)):
            raise ScanFormatError(
                f"{self.path}: probe_position_indexes span {indexes.min()}..{indexes.max()}, but "
                f"{diffraction.path} holds {len(patterns)} patterns"
            )
        return np.stack([np.asarray(patterns[int(i)]) for i in indexes])
