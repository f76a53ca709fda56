"""One ptychography scan: diffraction amplitudes, scan positions, probe and optional object (§1).

Every ``ScanData`` is valid: its constructor normalises the layouts seen in real files
and raises :class:`~ptychodata.errors.ScanDataError` naming the key, what was found and
what was expected for anything else. Coordinates are in object pixels, x = column,
y = row.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ptychodata.errors import ScanDataError
from ptychodata.io import read_npz, write_npz

__all__ = ["ScanData"]

# Bytes of diffraction checked per step when scanning values for NaN/Inf/negatives.
_CHECK_CHUNK_BYTES = 64 << 20
# Files whose diffraction is larger than this are not value-checked on load (that would
# read the whole file); consumers that read the data check what they read.
_EAGER_CHECK_BYTES = 512 << 20

_DIFFRACTION_KEYS = ("diffraction", "diff3d")
_KNOWN_KEYS = {
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
}


@dataclass(frozen=True, eq=False, repr=False)
class ScanData:
    """A validated scan (data contract §1).

    Attributes
    ----------
    diffraction : ndarray of shape (M, N, N), real
        Measured amplitudes (sqrt of counts), FFT-shifted. May be a read-only memmap.
    xcoords, ycoords : ndarray of shape (M,), float64
        Scan positions in object pixels (x = column, y = row).
    probe : ndarray of shape (N, N), complex64
    xcoords_start, ycoords_start : ndarray of shape (M,), float64
        Nominal (commanded) positions; equal to ``xcoords``/``ycoords`` when unknown.
    scan_index : ndarray of shape (M,), int64
    object : ndarray of shape (H, W), complex64, or None
    Y : ndarray of shape (M, N, N), complex64, or None
        Precomputed ground-truth patches, one per scan point.
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
    probe: np.ndarray
    xcoords_start: np.ndarray | None = None
    ycoords_start: np.ndarray | None = None
    scan_index: np.ndarray | None = None
    object: np.ndarray | None = None
    Y: np.ndarray | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    extras: Mapping[str, np.ndarray] = field(default_factory=dict)
    source: str | None = None

    def __post_init__(self) -> None:
        where = f"{self.source}: " if self.source else ""
        xcoords = _parse_coords(self.xcoords, "xcoords", where)
        ycoords = _parse_coords(self.ycoords, "ycoords", where)
        n_points = _check_same_length({"xcoords": xcoords, "ycoords": ycoords}, where)
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
            "probe": _parse_probe(self.probe, N, where),
            "object": None if self.object is None else _parse_object(self.object, where),
            "Y": None if self.Y is None else _parse_patches(self.Y, n_points, N, where),
            "metadata": dict(self.metadata),
            "extras": dict(self.extras),
        }
        _metadata_nphotons(values["metadata"], where)  # a malformed or conflicting nphotons fails here
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
        probe: np.ndarray,
        object: np.ndarray | None = None,
        xcoords_start: np.ndarray | None = None,
        ycoords_start: np.ndarray | None = None,
        scan_index: np.ndarray | None = None,
        Y: np.ndarray | None = None,
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
            metadata=metadata or {},
        )
        if check_values and not intensity:
            check_amplitudes(scan.diffraction, where="")
        return scan

    @classmethod
    def load(
        cls, path: str | os.PathLike, *, intensity: bool = False, check_values: bool | None = None
    ) -> ScanData:
        """Read a scan from an ``.npz`` (PtychoPINN / ptychodus layout, §1).

        Uncompressed members are memory-mapped, not read. ``intensity=True`` converts
        counts to amplitude (reads the patterns). ``check_values`` scans amplitudes for
        NaN/Inf/negative values; by default only when the patterns take at most 512 MiB,
        so opening a multi-GB file stays fast (readers of the data check what they read).
        """
        path = Path(path)
        where = f"{path}: "
        members = read_npz(path)
        missing = [key for key in ("xcoords", "ycoords", "probeGuess") if key not in members]
        if not any(key in members for key in _DIFFRACTION_KEYS):
            missing.insert(0, "diffraction (or diff3d)")
        if missing:
            raise ScanDataError(
                f"{where}missing required key(s) {', '.join(missing)}; keys present: "
                f"{sorted(members) or 'none'}"
            )
        diffraction_key = "diffraction" if "diffraction" in members else "diff3d"
        diffraction = members[diffraction_key]
        if intensity:
            diffraction = counts_to_amplitude(diffraction, source=f"{where}key {diffraction_key!r}")
        scan = cls(
            diffraction=diffraction,
            xcoords=members["xcoords"],
            ycoords=members["ycoords"],
            probe=members["probeGuess"],
            xcoords_start=members.get("xcoords_start"),
            ycoords_start=members.get("ycoords_start"),
            scan_index=members.get("scan_index"),
            object=members.get("objectGuess"),
            Y=members.get("Y"),
            metadata=_parse_metadata(members.get("_metadata"), where),
            extras={key: value for key, value in members.items() if key not in _KNOWN_KEYS},
            source=str(path),
        )
        if check_values is None:
            check_values = scan.diffraction.nbytes <= _EAGER_CHECK_BYTES
        if check_values and not intensity:
            check_amplitudes(scan.diffraction, where=f"{where}key {diffraction_key!r}: ")
        return scan

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
            "probeGuess": self.probe,
            "scan_index": self.scan_index,
        }
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
        arrays["_metadata"] = np.array(json.dumps(metadata, default=_json_default))
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
        return _metadata_nphotons(self.metadata, "")

    def __len__(self) -> int:
        return self.n_points

    def __repr__(self) -> str:
        obj = "None" if self.object is None else f"{self.object.shape}"
        return (
            f"ScanData(M={self.n_points}, N={self.N}, diffraction={self.diffraction.dtype}, "
            f"object={obj}, source={self.source!r})"
        )


# ---------------------------------------------------------------------- value checks
def check_amplitudes(diffraction: np.ndarray, *, where: str = "") -> None:
    """Raise ``ScanDataError`` if any amplitude is NaN, infinite or negative.

    Reads the array in chunks of about 64 MiB, so memmaps are not loaded whole.
    """
    if np.issubdtype(diffraction.dtype, np.unsignedinteger):
        return
    step = max(1, _CHECK_CHUNK_BYTES // max(1, diffraction[:1].nbytes))
    for start in range(0, diffraction.shape[0], step):
        chunk = np.asarray(diffraction[start : start + step])
        bad_value = ~np.isfinite(chunk) if chunk.dtype.kind == "f" else None
        if bad_value is not None and bad_value.any():
            index = start + int(np.argwhere(bad_value)[0][0])
            raise ScanDataError(
                f"{where or 'diffraction: '}NaN or Inf amplitude in pattern {index}; "
                "expected finite amplitudes"
            )
        if chunk.min(initial=0) < 0:
            index = start + int(np.argwhere(chunk < 0)[0][0])
            raise ScanDataError(
                f"{where or 'diffraction: '}negative amplitude {chunk[index - start].min():g} in pattern "
                f"{index}; expected amplitudes >= 0 (sqrt of counts)"
            )


def counts_to_amplitude(counts: np.ndarray, *, source: str = "diffraction", first_pattern: int = 0) -> np.ndarray:
    """Convert detector counts (M, N, N) to float32 amplitudes sqrt(counts), in chunks.

    ``first_pattern`` is the index of ``counts[0]`` in its scan, for error messages.
    """
    counts = np.asanyarray(counts)
    if np.iscomplexobj(counts):
        raise ScanDataError(f"{source}: complex dtype {counts.dtype}; expected real counts")
    amplitude = np.empty(counts.shape, np.float32)
    step = max(1, _CHECK_CHUNK_BYTES // max(1, counts[:1].nbytes))
    for start in range(0, counts.shape[0], step):
        chunk = np.asarray(counts[start : start + step], dtype=np.float32)
        flat = chunk.reshape(len(chunk), -1)
        bad = ~np.isfinite(flat).all(axis=1) | (flat.min(axis=1, initial=0) < 0)
        if bad.any():
            index = first_pattern + start + int(np.argmax(bad))
            raise ScanDataError(f"{source}: pattern {index} holds NaN, Inf or negative counts; expected counts >= 0")
        np.sqrt(chunk, out=amplitude[start : start + step])
    return amplitude


# ---------------------------------------------------------------------- parsers
def _parse_coords(values: Any, key: str, where: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim == 2 and 1 in array.shape:
        array = array.reshape(-1)
    if array.ndim != 1:
        raise ScanDataError(f"{where}key {key!r}: shape {array.shape}; expected (M,)")
    if np.iscomplexobj(array) or not np.issubdtype(array.dtype, np.number):
        raise ScanDataError(f"{where}key {key!r}: dtype {array.dtype}; expected real numbers")
    array = np.ascontiguousarray(array, dtype=np.float64)
    bad = ~np.isfinite(array)
    if bad.any():
        index = int(np.flatnonzero(bad)[0])
        raise ScanDataError(
            f"{where}key {key!r}: {int(bad.sum())} NaN/Inf value(s), first at index {index} "
            f"({array[index]}); expected finite positions in object pixels"
        )
    return array


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
    array = np.asanyarray(values)
    key = "diffraction"
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


def _parse_metadata(value: np.ndarray | None, where: str) -> dict[str, Any]:
    """The ``_metadata`` JSON object: a 0-d str array (ours) or a 0-d object array holding a
    str (PtychoPINN's metadata manager; read by the NPZ reader without free unpickling)."""
    if value is None:
        return {}
    if isinstance(value, np.ndarray) and value.size != 1:
        raise ScanDataError(
            f"{where}key '_metadata': shape {value.shape}, dtype {value.dtype}; expected a 0-d array holding "
            "a JSON string"
        )
    text = value.item() if isinstance(value, np.ndarray) else value
    if isinstance(text, bytes):
        text = text.decode()
    try:
        metadata = json.loads(str(text))
    except json.JSONDecodeError as exc:
        raise ScanDataError(f"{where}key '_metadata': not valid JSON ({exc})") from exc
    if not isinstance(metadata, dict):
        raise ScanDataError(f"{where}key '_metadata': JSON {type(metadata).__name__}; expected an object")
    return metadata


def _metadata_nphotons(metadata: Mapping[str, Any], where: str) -> float | None:
    """``nphotons`` from the top level or ``physics_parameters`` (PtychoPINN); None if neither."""
    physics = metadata.get("physics_parameters")
    if physics is not None and not isinstance(physics, Mapping):
        raise ScanDataError(
            f"{where}key '_metadata': physics_parameters is a {type(physics).__name__}; "
            "expected a JSON object"
        )
    found = {
        name: value
        for name, value in (("nphotons", metadata.get("nphotons")),
                            ("physics_parameters.nphotons", (physics or {}).get("nphotons")))
        if value is not None
    }
    photons: dict[str, float] = {}
    for name, value in found.items():
        number = value if isinstance(value, numbers.Real) and not isinstance(value, bool) else None
        if number is None or not (math.isfinite(number) and number > 0):
            raise ScanDataError(
                f"{where}key '_metadata': {name} = {value!r}; expected a positive finite number of photons"
            )
        photons[name] = float(number)
    if len(set(photons.values())) > 1:
        raise ScanDataError(
            f"{where}key '_metadata': nphotons = {photons['nphotons']!r} but physics_parameters.nphotons = "
            f"{photons['physics_parameters.nphotons']!r}; expected one value (or only one of the two keys)"
        )
    return next(iter(photons.values()), None)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"metadata value {value!r} is not JSON serialisable")
