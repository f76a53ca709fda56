"""What a format reader hands to the scan builder: arrays as stored, plus what the format says.

A reader knows its layout (which dataset holds what, in which units and conventions); it
does not decide counts/shift/crop or convert units. :class:`RawScan` carries the facts, and
:func:`ptychodata.io._assemble.assemble` makes the fields of a :class:`~ptychodata.scan.ScanData`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ptychodata.errors import ScanDataError, ScanFormatError

__all__ = ["RawScan", "positions_from_columns", "real_numbers", "squeeze_frames"]


@dataclass
class RawScan:
    """A scan as a format stores it.

    Attributes
    ----------
    format : str
        Name of the recognised layout, e.g. ``"CXI 1.6"``.
    path : Path
    patterns : array-like of shape (M, H, W)
        Raw frames as stored: ndarray, memmap or :class:`~ptychodata.io._hdf5.H5Dataset`.
    patterns_key : str
        Where they came from in the file, for messages.
    x, y : ndarray of shape (M,), float64
        Positions, x = column (width), y = row (height), in ``position_unit``.
    position_unit : {"px", "m"}
    position_origin : {"centre", "corner"}
        Whether a position is the centre of the probe window or its minimum (top-left) corner.
    object_origin : tuple (x_m, y_m, x_px, y_px) or None
        For metre positions with a known object frame: the metre point that sits at object
        pixel (x_px, y_px). None puts the smallest position at N/2.
    counts, shifted : bool or None
        What the format says (None: decide from the data).
    bad : ndarray of shape (H, W), bool, or None
        True = bad pixel.
    """

    format: str
    path: Path
    patterns: Any
    patterns_key: str
    x: np.ndarray
    y: np.ndarray
    position_unit: str = "px"
    position_origin: str = "centre"
    x_start: np.ndarray | None = None
    y_start: np.ndarray | None = None
    scan_index: np.ndarray | None = None
    probe: np.ndarray | None = None
    object: np.ndarray | None = None
    Y: np.ndarray | None = None
    bad: np.ndarray | None = None
    counts: bool | None = None
    counts_reason: str = ""
    shifted: bool | None = None
    shifted_reason: str = ""
    energy_eV: float | None = None
    wavelength_m: float | None = None
    distance_m: float | None = None
    detector_pixel_m: tuple[float, float] | None = None  # (y = rows, x = columns)
    object_pixel_m: tuple[float, float] | None = None  # (y, x)
    object_origin: tuple[float, float, float, float] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    geometry_keys: dict[str, str] = field(default_factory=dict)  # field name -> the file's key, for messages
    positions_keys: tuple[str, str] = ("positions", "positions")  # where x and y came from, for messages
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    square_required: bool = False  # the contract npz: non-square patterns are an error, not cropped

    @property
    def where(self) -> str:
        return f"{self.path}: "


def real_numbers(values: Any, where: str) -> np.ndarray:
    """``values`` as float64, or ``ScanFormatError`` naming ``where`` for text, objects or complex
    values (numeric text is not parsed: what its numbers mean is unknown)."""
    array = np.asarray(values)
    if array.dtype.kind not in "biuf":
        first = array.reshape(-1)[0] if array.size else None
        shown = repr(first.item() if isinstance(first, np.generic) else first)[:40] if array.size else "nothing"
        kind = {"S": "text", "U": "text", "O": "Python objects", "c": "complex numbers"}.get(array.dtype.kind, "data")
        error = ScanDataError if array.dtype.kind == "c" else ScanFormatError  # complex: readable, but not positions
        raise error(
            f"{where} holds {kind} (dtype {array.dtype}, shape {array.shape}, first value {shown}); "
            "expected real numbers"
        )
    return array.astype(np.float64, copy=False)


def squeeze_frames(
    array: Any,
    key: str,
    path: Path,
    n_points: int | None = None,
    *,
    pattern_axis: str | None = None,
) -> Any:
    """Frames (M, H, W) from (M, H, W), (M, H, W, 1), (1, M, H, W), or a legacy (N, N, M) stack.

    Given ``n_points``, a legacy stack is recognised by its last axis matching it; ``pattern_axis``
    ("first" or "last") says where the pattern index is instead, and must for an in-memory cube
    (M = N: both readings fit the positions). A lazily read (HDF5) stack is (M, H, W).
    """
    dtype = np.dtype(array.dtype)
    if dtype.kind not in "biuf":
        kind = {"S": "text", "U": "text", "O": "Python objects", "c": "complex numbers"}.get(dtype.kind, "data")
        error = ScanDataError if dtype.kind == "c" else ScanFormatError
        raise error(
            f"{path}: {key!r} holds {kind} (dtype {dtype}, shape {tuple(array.shape)}); expected real detector "
            "values (amplitudes or counts)"
        )
    shape = tuple(array.shape)
    if len(shape) == 4 and shape[-1] == 1:
        array, shape = _index(array, (..., 0), key, path), shape[:-1]
    while len(shape) > 3 and shape[0] == 1:
        array, shape = _index(array, 0, key, path), shape[1:]
    if len(shape) != 3:
        raise ScanFormatError(f"{path}: {key!r} has shape {shape}; expected a stack of patterns (M, H, W)")
    if _pattern_index_last(shape, key, path, n_points, pattern_axis, isinstance(array, np.ndarray)):
        if not isinstance(array, np.ndarray):
            raise ScanFormatError(
                f"{path}: {key!r} has shape {shape}, a (N, N, M) stack; only (M, N, N) can be read lazily "
                "from HDF5: rewrite it with the pattern index first"
            )
        array = np.moveaxis(array, 2, 0)  # legacy (N, N, M) stack
    if 0 in tuple(array.shape):
        what = "no patterns" if array.shape[0] == 0 else "patterns without pixels"
        raise ScanDataError(f"{path}: {key!r} has shape {tuple(array.shape)}, {what}; expected (M, H, W) with M, H, W ≥ 1")
    return array


def _pattern_index_last(shape, key, path, n_points, pattern_axis, in_memory) -> bool:
    """Whether a 3-d stack holds its pattern index last (a legacy (N, N, M) stack)."""
    if pattern_axis == "first":
        return False
    if pattern_axis == "last":
        if shape[0] != shape[1] or (n_points is not None and shape[2] != n_points):
            expected = "(N, N, M)" if n_points is None else f"(N, N, {n_points})"
            raise ScanDataError(
                f"{path}: {key!r} has shape {shape}; pattern_axis='last' expects {expected}: square patterns "
                "with the pattern index last, one per position"
            )
        return True
    if n_points is None or shape[2] != n_points or shape[0] != shape[1]:
        return False
    if shape[0] == n_points:
        if not in_memory:
            return False
        raise ScanDataError(
            f"{path}: {key!r} has shape {shape} with {n_points} positions: (M, N, N) and a legacy (N, N, M) stack "
            "both fit, so which axis indexes the patterns is ambiguous; pass pattern_axis='first' (M, N, N) or "
            "pattern_axis='last' (N, N, M)"
        )
    return True


def _index(array: Any, index: Any, key: str, path: Path) -> Any:
    if isinstance(array, np.ndarray):
        return array[index]
    raise ScanFormatError(
        f"{path}: {key!r} has shape {tuple(array.shape)}; expected (M, H, W) for a dataset read lazily"
    )


def positions_from_columns(
    values: np.ndarray, columns: str, key: str, path: Path
) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) from an (M, 2) or (M, ≥2) array whose first two columns are ``columns``: "xy" or "yx"."""
    array = np.asarray(values)
    if array.dtype.kind not in "biuf":
        real_numbers(array, f"{path}: {key!r}")
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2 or array.shape[1] < 2:
        raise ScanFormatError(f"{path}: {key!r} has shape {array.shape}; expected (M, 2) positions")
    if columns not in ("xy", "yx"):
        raise ScanFormatError(f"position column order {columns!r}; expected 'xy' or 'yx'")
    first, second = array[:, 0].astype(np.float64), array[:, 1].astype(np.float64)
    return (first, second) if columns == "xy" else (second, first)
