"""The options of reading a scan file: one definition, from which the CLI's flags are made."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ptychodata.errors import ScanDataError

__all__ = ["LoadOptions"]


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
