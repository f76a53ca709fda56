"""One ptychography scan: diffraction amplitudes, scan positions, optional probe, object and mask (§1, §10).

Every ``ScanData`` is valid: its constructor normalises the layouts seen in real files
and raises :class:`~ptychodata.errors.ScanDataError` naming the key, what was found and
what was expected for anything else. Coordinates are in object pixels, x = column,
y = row. :meth:`ScanData.load` reads every format of :mod:`ptychodata.io` (recognised from
the file's content) and prepares the detector data on the way in.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ptychodata._runtime import jsonable
from ptychodata.errors import ScanDataError
from ptychodata.io import (
    LazyPatterns,
    check_amplitudes,
    check_finite_positions,
    counts_to_amplitude,
    median_neighbour_step,
    metadata_nphotons,
    read_scan_fields,
    write_npz,
)

__all__ = ["ScanData", "check_amplitudes", "counts_to_amplitude"]

# Files whose diffraction is larger than this are not value-checked on load (that would
# read the whole file); consumers that read the data check what they read.
_EAGER_CHECK_BYTES = 512 << 20

# Positions spanning less than this many pixels, or whose median nearest-neighbour step is
# below _MIN_STEP_PX, are metres (or another physical unit) passed as pixels: refused.
_MIN_SPAN_PX = 1.0
_MIN_STEP_PX = 0.01


@dataclass(frozen=True, eq=False, repr=False)
class ScanData:
    """A validated scan (data contract §1).

    Attributes
    ----------
    diffraction : ndarray of shape (M, N, N), real, or LazyPatterns
        Measured amplitudes (sqrt of counts), FFT-shifted. May be a read-only memmap, or a
        :class:`~ptychodata.io.LazyPatterns` that reads and prepares rows from a
        file on each ``diffraction[start:stop]`` (float32; ``np.asarray`` reads it whole).
    xcoords, ycoords : ndarray of shape (M,), float64
        Scan positions in object pixels (x = column, y = row).
    probe : ndarray of shape (N, N), complex64, or None
        None when the source has no probe (grouping and normalisation need none).
    xcoords_start, ycoords_start : ndarray of shape (M,), float64
        Nominal (commanded) positions; equal to ``xcoords``/``ycoords`` when unknown.
    scan_index : ndarray of shape (M,), int64
    object : ndarray of shape (H, W), complex64, or None
    Y : ndarray of shape (M, N, N), complex64, or None
        Precomputed ground-truth patches, one per scan point.
    mask : ndarray of shape (N, N), bool, or None
        Bad-pixel mask, True = measured and usable; bad pixels hold 0 in ``diffraction``.
    metadata : dict
        Free metadata (the file's ``_metadata`` JSON), e.g. ``{"nphotons": 1e9}``.
    extras : dict of ndarray
        Keys of the source file that the contract does not name, kept untouched.
    source : str or None
        The file the scan came from, used in error messages.
    """

    diffraction: np.ndarray
    xcoords: np.ndarray
    ycoords: np.ndarray
    probe: np.ndarray | None = None
    xcoords_start: np.ndarray | None = None
    ycoords_start: np.ndarray | None = None
    scan_index: np.ndarray | None = None
    object: np.ndarray | None = None
    Y: np.ndarray | None = None
    mask: np.ndarray | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    extras: Mapping[str, np.ndarray] = field(default_factory=dict)
    source: str | None = None

    def __post_init__(self) -> None:
        where = f"{self.source}: " if self.source else ""
        xcoords = _parse_coords(self.xcoords, "xcoords", where)
        ycoords = _parse_coords(self.ycoords, "ycoords", where)
        n_points = _check_same_length({"xcoords": xcoords, "ycoords": ycoords}, where)
        _check_not_metres(xcoords, ycoords, where)
        diffraction = _parse_diffraction(self.diffraction, n_points, where)
        N = diffraction.shape[-1]
        values = {
            "diffraction": diffraction,
            "xcoords": xcoords,
            "ycoords": ycoords,
            "xcoords_start": xcoords
            if self.xcoords_start is None
            else _parse_coords(self.xcoords_start, "xcoords_start", where),
            "ycoords_start": ycoords
            if self.ycoords_start is None
            else _parse_coords(self.ycoords_start, "ycoords_start", where),
            "scan_index": np.zeros(n_points, np.int64)
            if self.scan_index is None
            else _parse_scan_index(self.scan_index, where),
            "probe": None if self.probe is None else _parse_probe(self.probe, N, where),
            "object": None if self.object is None else _parse_object(self.object, where),
            "Y": None if self.Y is None else _parse_patches(self.Y, n_points, N, where),
            "mask": None if self.mask is None else _parse_mask(self.mask, N, where),
            "metadata": dict(self.metadata),
            "extras": dict(self.extras),
        }
        metadata_nphotons(values["metadata"], where)  # a malformed or conflicting nphotons fails here
        _check_same_length(
            {key: values[key] for key in ("xcoords", "xcoords_start", "ycoords_start", "scan_index")}, where
        )
        for key, value in values.items():
            object.__setattr__(self, key, value)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_arrays(
        cls,
        *,
        diffraction: np.ndarray,
        xcoords: np.ndarray,
        ycoords: np.ndarray,
        probe: np.ndarray | None = None,
        object: np.ndarray | None = None,
        xcoords_start: np.ndarray | None = None,
        ycoords_start: np.ndarray | None = None,
        scan_index: np.ndarray | None = None,
        Y: np.ndarray | None = None,
        mask: np.ndarray | None = None,
        metadata: Mapping[str, Any] | None = None,
        intensity: bool = False,
        check_values: bool = True,
    ) -> ScanData:
        """Build a scan from arrays (any real dtype for ``diffraction``).

        ``intensity=True`` says ``diffraction`` holds counts and converts it to
        amplitude with sqrt (float32). ``check_values`` scans the amplitudes for
        NaN/Inf and negative values (chunked; off for data checked elsewhere).
        """
        if intensity:
            diffraction = counts_to_amplitude(diffraction, source="diffraction")
        scan = cls(
            diffraction=diffraction,
            xcoords=xcoords,
            ycoords=ycoords,
            probe=probe,
            xcoords_start=xcoords_start,
            ycoords_start=ycoords_start,
            scan_index=scan_index,
            object=object,
            Y=Y,
            mask=mask,
            metadata=metadata or {},
        )
        if check_values and not intensity:
            check_amplitudes(scan.diffraction, where="")
        return scan

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        *,
        keys: Mapping[str, str] | None = None,
        intensity: bool | None = None,
        check_values: bool | None = None,
        **options: Any,
    ) -> ScanData:
        """Read a scan from any file ptychodata recognises, preparing the detector data on the way.

        The format is recognised from the content (HDF5 signature, zip, bz2/gzip magic, then
        the keys), not the suffix: CXI 1.6, ptychodus training-data HDF5, ptychodus product
        files (with ``diffraction=``), ptychodus' PtychoPINN export, tike ``.npz`` (also
        ``.npz.bz2``), PtychoNN and SLAC ``.npz``, and the PtychoPINN ``.npz`` of §1. HDF5
        patterns are not read at load: ``diffraction`` is then a lazy source read (and
        prepared) a whole chunk at a time. Uncompressed ``.npz`` members are memory-mapped.

        Parameters
        ----------
        path : path
        keys : dict, optional
            Explicit key map for any other ``.npz``/HDF5 layout: ``{"diffraction": "/a/b",
            "xcoords": ..., "ycoords": ...}`` or ``{"positions": ...}`` with
            ``position_columns``; optional ``probe``, ``object``, ``bad_pixels``,
            ``energy_eV``, ``energy_J``, ``wavelength_m``, ``distance_m``, ``detector_pixel_m``.
        intensity : bool, optional
            True: the patterns are counts (sqrt taken); False: amplitudes. Default: what
            the format says, else the counts rule (integer dtype, or whole numbers with a
            mean per-pattern total ≥ 10·N²), with a warning naming the evidence.
        check_values : bool, optional
            Scan amplitudes for NaN/Inf/negatives; by default for in-memory or
            memory-mapped patterns of at most 512 MiB (lazy sources are checked as read).
        **options
            ``diffraction`` (path of the patterns for a product file), ``shift`` (bool;
            default detected from the mean pattern's circular centroid), ``crop`` (int N),
            ``center`` ((row, col) of the beam; default the mean pattern's centre of mass),
            ``bin`` (int), ``transpose``, ``flip_rows``, ``flip_cols`` (bool), ``mask``
            ((H, W) bool, True = usable), ``clip_negative`` (bool), ``pixel_size`` (object
            pixel in m), ``energy_eV``, ``wavelength_m``, ``distance_m``,
            ``detector_pixel_m``, ``position_unit`` ({"px", "m"}), ``position_columns``
            ({"xy", "yx"}), ``position_origin`` ({"centre", "corner"}), ``probe_modes``
            ({"first", "all"}), ``estimate_probe`` (bool: without a probe in the file, use the
            flagged estimate IFFT(sqrt(mean I))), ``near_field`` (bool; needs ``pixel_size``).

        Raises
        ------
        ScanDataError
            Missing datasets, wrong shapes, unconvertible units, near-field data (unless
            ``near_field=True``), positions that look like metres; ``ScanFormatError`` for an
            unrecognised layout or an unavailable HDF5 compression filter.
        """
        fields = read_scan_fields(path, keys=None if keys is None else dict(keys), intensity=intensity, **options)
        scan = cls(**fields)
        if check_values is None:
            scan.check_values()
        elif check_values and not isinstance(scan.diffraction, LazyPatterns):
            check_amplitudes(scan.diffraction, where=f"{path}: key 'diffraction': ")
        return scan

    def check_values(self, *, max_bytes: int = _EAGER_CHECK_BYTES) -> bool:
        """Refuse NaN, Inf and negative amplitudes (``ScanDataError`` naming the pattern), the rule
        :meth:`load` applies: in-memory or memory-mapped patterns of at most ``max_bytes`` are read
        whole; lazy ones are checked as they are read. Returns whether the patterns were read."""
        if isinstance(self.diffraction, LazyPatterns) or self.diffraction.nbytes > max_bytes:
            return False
        where = f"{self.source}: key 'diffraction': " if self.source else "key 'diffraction': "
        check_amplitudes(self.diffraction, where=where)
        return True

    def save(self, path: str | os.PathLike) -> Path:
        """Write an uncompressed ``.npz`` that ptychodata and PtychoPINN's ``RawData.from_file`` read.

        Written to a temporary file beside ``path`` and renamed into place.
        """
        arrays: dict[str, np.ndarray] = {
            "diff3d": self.diffraction,
            "xcoords": self.xcoords,
            "ycoords": self.ycoords,
            "xcoords_start": self.xcoords_start,
            "ycoords_start": self.ycoords_start,
            "scan_index": self.scan_index,
        }
        if self.probe is not None:
            arrays["probeGuess"] = self.probe
        if self.mask is not None:
            arrays["mask"] = self.mask
        if self.object is not None:
            arrays["objectGuess"] = self.object
        if self.Y is not None:
            arrays["Y"] = self.Y
        arrays.update(self.extras)
        metadata = dict(self.metadata)
        nphotons = self.nphotons
        if nphotons is not None:  # both places: ours (top level) and PtychoPINN's (physics_parameters)
            metadata["nphotons"] = nphotons
            metadata["physics_parameters"] = {**metadata.get("physics_parameters", {}), "nphotons": nphotons}
        arrays["_metadata"] = np.array(json.dumps(jsonable(metadata)))
        return write_npz(path, arrays)

    def with_(self, **changes: Any) -> ScanData:
        """A copy with some fields replaced (validated again)."""
        return replace(self, **changes)

    # ------------------------------------------------------------------ properties
    @property
    def n_points(self) -> int:
        """M, the number of scan points."""
        return int(self.diffraction.shape[0])

    @property
    def N(self) -> int:
        """Pattern side length in pixels."""
        return int(self.diffraction.shape[-1])

    @property
    def positions(self) -> np.ndarray:
        """Scan positions as (M, 2) float64, columns (x, y)."""
        return np.stack([self.xcoords, self.ycoords], axis=1)

    @property
    def nphotons(self) -> float | None:
        """Photons per pattern when the metadata records it, else None.

        Read from ``metadata["nphotons"]`` or, as PtychoPINN's metadata manager writes it,
        ``metadata["physics_parameters"]["nphotons"]`` (the two must agree when both are set).
        """
        return metadata_nphotons(self.metadata, "")

    def __len__(self) -> int:
        return self.n_points

    def __repr__(self) -> str:
        obj = "None" if self.object is None else f"{self.object.shape}"
        return (
            f"ScanData(M={self.n_points}, N={self.N}, diffraction={self.diffraction.dtype}, "
            f"object={obj}, source={self.source!r})"
        )


# ---------------------------------------------------------------------- parsers
def _parse_coords(values: Any, key: str, where: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim == 2 and 1 in array.shape:
        array = array.reshape(-1)
    if array.ndim != 1:
        raise ScanDataError(f"{where}key {key!r}: shape {array.shape}; expected (M,)")
    if np.iscomplexobj(array) or not np.issubdtype(array.dtype, np.number):
        raise ScanDataError(f"{where}key {key!r}: dtype {array.dtype}; expected real numbers")
    return check_finite_positions(np.ascontiguousarray(array, dtype=np.float64), where, key)


def _check_same_length(arrays: Mapping[str, np.ndarray], where: str) -> int:
    lengths = {key: int(value.shape[0]) for key, value in arrays.items()}
    if len(set(lengths.values())) > 1:
        found = ", ".join(f"{key} has {n}" for key, n in lengths.items())
        raise ScanDataError(f"{where}length mismatch: {found}; expected the same number M of scan points")
    n_points = next(iter(lengths.values()))
    if n_points == 0:
        raise ScanDataError(f"{where}the scan has no points (xcoords is empty)")
    return n_points


def _parse_diffraction(values: Any, n_points: int, where: str) -> np.ndarray:
    key = "diffraction"
    if isinstance(values, LazyPatterns):  # already (M, N, N) float32 or kept integers
        if values.shape[0] != n_points:
            raise ScanDataError(
                f"{where}length mismatch: key {key!r} has shape {values.shape} ({values.shape[0]} patterns) but "
                f"xcoords/ycoords have {n_points} points; expected (M, N, N) with M={n_points}"
            )
        return values
    array = np.asanyarray(values)
    if np.iscomplexobj(array):
        raise ScanDataError(
            f"{where}key {key!r}: complex dtype {array.dtype}; expected real amplitudes "
            "(|FFT|, not the complex field)"
        )
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ScanDataError(f"{where}key {key!r}: dtype {array.dtype}; expected real amplitudes")
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise ScanDataError(f"{where}key {key!r}: shape {array.shape}; expected (M, N, N) with M={n_points}")
    if array.shape[0] != n_points and array.shape[2] == n_points and array.shape[0] == array.shape[1]:
        array = np.moveaxis(array, 2, 0)  # legacy (N, N, M) stack
    if array.shape[0] != n_points:
        raise ScanDataError(
            f"{where}length mismatch: key {key!r} has shape {array.shape} ({array.shape[0]} patterns) but "
            f"xcoords/ycoords have {n_points} points; expected (M, N, N) with M={n_points}"
        )
    if array.shape[1] != array.shape[2]:
        raise ScanDataError(
            f"{where}key {key!r}: non-square patterns of shape {array.shape[1:]}; expected (N, N)"
        )
    if np.issubdtype(array.dtype, np.integer):
        warnings.warn(
            f"{where}key {key!r} holds integers ({array.dtype}), which look like detector counts; "
            "they are used as amplitudes. Pass intensity=True if they are counts.",
            stacklevel=4,
        )
    return array


def _check_not_metres(xcoords: np.ndarray, ycoords: np.ndarray, where: str) -> None:
    """Refuse positions spanning < 1 px (all identical, or metres passed as pixels) or with a median
    step < 0.01 px (metres passed as pixels)."""
    if len(xcoords) < 2:
        return
    span = max(float(np.ptp(xcoords)), float(np.ptp(ycoords)))
    if span == 0:
        raise ScanDataError(
            f"{where}xcoords/ycoords: all {len(xcoords)} positions are identical (x = {xcoords[0]:.6g}, "
            f"y = {ycoords[0]:.6g}); expected a scan of positions spanning at least {_MIN_SPAN_PX:g} px (the "
            "positions were not recorded, or a stationary series is not a ptychography scan)"
        )
    hint = (
        "positions look like metres (or another physical unit), not object pixels; load them with "
        "position_unit='m' and pixel_size=<object pixel in m> (or energy_eV=, distance_m= and detector_pixel_m= "
        "for the far-field pixel λz/(N·p))"
    )
    if span < _MIN_SPAN_PX:
        raise ScanDataError(
            f"{where}xcoords/ycoords span only {span:.3g} px (x {xcoords.min():.3g} .. {xcoords.max():.3g}, "
            f"y {ycoords.min():.3g} .. {ycoords.max():.3g}); {hint}"
        )
    step = median_neighbour_step(xcoords, ycoords)
    if step is not None and step < _MIN_STEP_PX:
        raise ScanDataError(
            f"{where}median step between neighbouring positions is {step:.3g} px (span {span:.3g} px); {hint}"
        )


def _parse_mask(values: Any, N: int, where: str) -> np.ndarray:
    mask = np.asarray(values)
    if mask.shape != (N, N):
        raise ScanDataError(f"{where}key 'mask': shape {mask.shape}; expected ({N}, {N}), True = usable pixel")
    if mask.dtype != np.bool_ and not np.issubdtype(mask.dtype, np.integer):
        raise ScanDataError(f"{where}key 'mask': dtype {mask.dtype}; expected bool (True = usable pixel)")
    return np.ascontiguousarray(mask != 0)


def _squeeze_2d(values: Any, key: str, where: str, expected: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    elif array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise ScanDataError(f"{where}key {key!r}: shape {array.shape}; expected {expected}")
    if not np.issubdtype(array.dtype, np.number):
        raise ScanDataError(f"{where}key {key!r}: dtype {array.dtype}; expected complex numbers")
    return np.ascontiguousarray(array, dtype=np.complex64)


def _parse_probe(values: Any, N: int, where: str) -> np.ndarray:
    probe = _squeeze_2d(values, "probeGuess", where, f"({N}, {N})")
    if probe.shape != (N, N):
        raise ScanDataError(
            f"{where}key 'probeGuess': shape {probe.shape}; expected ({N}, {N}), the size N of the patterns"
        )
    return probe


def _parse_object(values: Any, where: str) -> np.ndarray:
    return _squeeze_2d(values, "objectGuess", where, "(H, W)")


def _parse_scan_index(values: Any, where: str) -> np.ndarray:
    array = np.asarray(values).reshape(-1) if np.ndim(values) == 2 else np.asarray(values)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise ScanDataError(
            f"{where}key 'scan_index': shape {array.shape}, dtype {array.dtype}; expected (M,) integers"
        )
    return np.ascontiguousarray(array, dtype=np.int64)


def _parse_patches(values: Any, n_points: int, N: int, where: str) -> np.ndarray:
    array = np.asanyarray(values)
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.shape != (n_points, N, N):
        raise ScanDataError(f"{where}key 'Y': shape {array.shape}; expected ({n_points}, {N}, {N})")
    return array if array.dtype == np.complex64 else array.astype(np.complex64)


