"""The options of reading a scan file: one definition, from which the CLI's flags are made.

Each field of :class:`LoadOptions` carries its command-line spelling and help in its
``metadata`` (:class:`Flag`); the CLI builds its reading flags from them, so a default,
a type or a help text lives here only. Values are parsed at construction: options that
mean the same (``crop=64`` and ``crop=64.0``, a list or a tuple ``center``, key maps in
any order) make equal :class:`LoadOptions` with equal :meth:`LoadOptions.identity`.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from ptychodata._runtime import check_int
from ptychodata.errors import ParameterError, ScanDataError

__all__ = ["Flag", "LoadOptions", "load_option_flags"]


@dataclass(frozen=True)
class Flag:
    """How one load option is spelled on the command line.

    Attributes
    ----------
    flag : str
        The flag (``"--energy-ev"``).
    kind : {"value", "switch", "either", "pair", "keymap", "npy"}
        ``value``: one value (``type``, ``choices``); ``switch``: present means True;
        ``either``: ``flag`` means True and ``off`` means False, neither means None;
        ``pair``: two floats; ``keymap``: repeated ``NAME=PATH``; ``npy``: a ``.npy`` file read
        as a non-zero-is-True array.
    help : str
    type : {"int", "float", "str", "path"}
    metavar : str or tuple of str, optional
    choices : tuple of str, optional
    off : str, optional
        The flag that sets False, for ``either``.
    off_help : str, optional
    """

    flag: str
    kind: str = "value"
    help: str = ""
    type: str = "str"
    metavar: Any = None
    choices: tuple[str, ...] | None = None
    off: str | None = None
    off_help: str = ""


def _option(default: Any, flag: Flag | None) -> Any:
    return field(default=default, metadata={"flag": flag} if flag is not None else {})


_KEY_NAMES = (
    "diffraction, xcoords, ycoords, positions, probe, object, bad_pixels, energy_eV, energy_J, wavelength_m, "
    "distance_m, detector_pixel_m"
)


@dataclass(frozen=True, eq=False)
class LoadOptions:
    """Options of :meth:`ScanData.load <ptychodata.scan.ScanData.load>` (see there for each).

    Constructed from keyword arguments; each value is checked and normalised, raising
    ``ScanDataError`` (a file option that cannot apply) or ``ParameterError`` (a value out of
    its range or of the wrong kind) that names the parameter.
    """

    keys: dict[str, str] | None = _option(None, Flag(
        "--key", "keymap", f"key map for other layouts, e.g. --key diffraction=/entry/data --key positions=/pos "
        f"(names: {_KEY_NAMES})", metavar="NAME=PATH"))
    diffraction: str | None = _option(None, Flag(
        "--diffraction", help="patterns for a ptychodus product file", type="path", metavar="FILE"))
    intensity: bool | None = _option(None, Flag(
        "--intensity", "either", "the patterns are counts (sqrt taken)", off="--amplitude",
        off_help="the patterns are amplitudes"))
    shift: bool | None = _option(None, Flag(
        "--shift", "either", "fftshift the patterns", off="--no-shift", off_help="keep the patterns as stored"))
    crop: int | None = _option(None, Flag(
        "--crop", help="crop to N×N around the beam centre", type="int", metavar="N"))
    center: tuple[float, float] | None = _option(None, Flag(
        "--center", "pair", "beam centre for --crop", metavar=("ROW", "COL")))
    bin: int = _option(1, Flag("--bin", help="sum BIN×BIN pixel blocks (after the crop)", type="int"))
    transpose: bool = _option(False, Flag("--transpose", "switch", "swap the detector axes"))
    flip_rows: bool = _option(False, Flag("--flip-rows", "switch", "reverse the detector rows"))
    flip_cols: bool = _option(False, Flag("--flip-cols", "switch", "reverse the detector columns"))
    mask: np.ndarray | None = _option(None, Flag(
        "--mask", "npy", "(H, W) mask of the detector, non-zero = usable", metavar="MASK.npy"))
    clip_negative: bool = _option(False, Flag(
        "--clip-negative", "switch", "clip negative counts (dark subtraction) to 0"))
    pixel_size: float | None = _option(None, Flag(
        "--pixel-size", help="object pixel size in metres", type="float", metavar="M"))
    energy_eV: float | None = _option(None, Flag("--energy-ev", help="photon energy in eV", type="float"))
    wavelength_m: float | None = _option(None, Flag(
        "--wavelength", help="wavelength in metres", type="float", metavar="M"))
    distance_m: float | None = _option(None, Flag(
        "--distance", help="detector distance in metres", type="float", metavar="M"))
    detector_pixel_m: float | None = _option(None, Flag(
        "--detector-pixel", help="detector pixel in metres", type="float", metavar="M"))
    position_unit: str | None = _option(None, Flag(
        "--position-unit", help="unit of key-mapped positions (default px)", choices=("px", "m")))
    position_columns: str | None = _option(None, Flag(
        "--position-columns", help="column order of --key positions", choices=("xy", "yx")))
    position_origin: str | None = _option(None, Flag(
        "--position-origin", help="positions are window centres (default) or minimum corners",
        choices=("centre", "corner")))
    probe_modes: str = _option("first", Flag(
        "--probe-modes", help="probe modes to keep", choices=("first", "all")))
    estimate_probe: bool = _option(False, Flag(
        "--estimate-probe", "switch", "without a probe in the file, use the flagged estimate IFFT(sqrt(mean I))"))
    near_field: bool = _option(False, Flag(
        "--near-field", "switch", "accept near-field data (needs --pixel-size)"))
    pattern_axis: str | None = _option(None, Flag(
        "--pattern-axis", help="where a 3-d stack of patterns has its pattern index: first (M, N, N) or last "
        "(a legacy N, N, M stack); default from the number of positions, needed when M = N",
        choices=("first", "last")))
    patterns_only: bool = _option(False, None)

    def __post_init__(self) -> None:
        for spec in fields(self):
            parse = _PARSERS.get(spec.name, _parse_bool if isinstance(spec.default, bool) else None)
            if parse is not None:
                object.__setattr__(self, spec.name, parse(spec.name, getattr(self, spec.name)))
        for name, allowed in (
            ("position_unit", ("px", "m")),
            ("position_columns", ("xy", "yx")),
            ("position_origin", ("centre", "corner")),
            ("probe_modes", ("first", "all")),
            ("pattern_axis", ("first", "last")),
        ):
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise ScanDataError(f"{name}={value!r}; expected one of {allowed}")

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any], *, name: str = "load_options") -> LoadOptions:
        """``LoadOptions(**options)``, with an unknown option refused by a ``ParameterError`` that names it."""
        if not isinstance(options, Mapping):
            raise ParameterError(f"{name}={options!r}; expected a mapping of load option names to values")
        known = {spec.name for spec in fields(cls)}
        unknown = sorted(str(key) for key in options if key not in known)
        if unknown:
            raise ParameterError(
                f"{name}: unknown option(s) {', '.join(map(repr, unknown))}; expected names among "
                f"{', '.join(sorted(known - {'patterns_only'}))}"
            )
        return cls(**options)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LoadOptions) and self.identity() == other.identity()

    def __hash__(self) -> int:
        return hash(repr(sorted(self.identity().items())))

    def changed(self) -> dict[str, Any]:
        """The options that differ from their defaults, as keyword arguments."""
        return {spec.name: value for spec, value in self._items() if not _is_default(spec, value)}

    def identity(self) -> dict[str, Any]:
        """JSON-ready, canonical form of :meth:`changed` (a mask by a hash of its content): equal
        for options that mean the same, so a store's key does not depend on their spelling."""
        identity = {}
        for name, value in sorted(self.changed().items()):
            if isinstance(value, np.ndarray):
                digest = hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()
                value = {"array": digest, "shape": list(value.shape), "dtype": value.dtype.str}
            elif isinstance(value, tuple):
                value = list(value)
            identity[name] = value
        return identity

    def _items(self) -> Iterator[tuple[Any, Any]]:
        for spec in fields(self):
            yield spec, getattr(self, spec.name)


def load_option_flags() -> list[tuple[str, Any, Flag]]:
    """``(name, default, flag)`` of every load option that has a command-line flag, in order."""
    return [(spec.name, spec.default, spec.metadata["flag"]) for spec in fields(LoadOptions) if "flag" in spec.metadata]


def _is_default(spec: Any, value: Any) -> bool:
    if isinstance(value, np.ndarray):
        return False
    return value == spec.default


def _parse_bool(name: str, value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if value is None:
        return False
    raise ParameterError(f"{name}={value!r}; expected True or False")


def _parse_optional_bool(name: str, value: Any) -> bool | None:
    return None if value is None else _parse_bool(name, value)


def _whole(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        value = int(value)
    return check_int(name, value, minimum=minimum)


def _parse_crop(name: str, value: Any) -> int | None:
    if value is None:
        return None
    try:
        return _whole(name, value, 2)
    except ParameterError:
        raise ScanDataError(f"crop={value!r}; expected an integer pattern size >= 2") from None


def _parse_bin(name: str, value: Any) -> int:
    try:
        return _whole(name, value, 1)
    except ParameterError:
        raise ScanDataError(f"bin={value!r}; expected a positive integer") from None


def _parse_positive(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ParameterError(f"{name}={value!r}; expected a number > 0")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        hint = "the object pixel size in metres, > 0" if name == "pixel_size" else "a finite number > 0"
        raise ScanDataError(f"{name}={value!r}; expected {hint}")
    return value


def _parse_center(name: str, value: Any) -> tuple[float, float] | None:
    if value is None:
        return None
    try:
        row, col = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ParameterError(f"{name}={value!r}; expected (row, col), two numbers") from None
    if not (math.isfinite(row) and math.isfinite(col)):
        raise ParameterError(f"{name}={value!r}; expected finite (row, col)")
    return (row, col)


def _parse_keys(name: str, value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ParameterError(f"{name}={value!r}; expected a mapping {{'diffraction': PATH, ...}}")
    keys = {}
    for key, member in sorted(value.items()):
        if not isinstance(key, str) or not isinstance(member, str) or not key or not member:
            raise ParameterError(f"{name}: entry {key!r}: {member!r}; expected a name and a dataset path (strings)")
        keys[key] = member
    return keys or None


def _parse_path(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise ParameterError(f"{name}={value!r}; expected a file path")
    return os.fspath(value)


def _parse_mask(name: str, value: Any) -> np.ndarray | None:
    if value is None:
        return None
    mask = np.asarray(value)
    if mask.ndim != 2 or mask.dtype.kind not in "biuf":
        raise ParameterError(f"{name}: shape {mask.shape}, dtype {mask.dtype}; expected an (H, W) array, True = usable")
    return mask.astype(bool, copy=False)


_PARSERS = {
    "keys": _parse_keys,
    "diffraction": _parse_path,
    "intensity": _parse_optional_bool,
    "shift": _parse_optional_bool,
    "crop": _parse_crop,
    "center": _parse_center,
    "bin": _parse_bin,
    "mask": _parse_mask,
    "pixel_size": _parse_positive,
    "energy_eV": _parse_positive,
    "wavelength_m": _parse_positive,
    "distance_m": _parse_positive,
    "detector_pixel_m": _parse_positive,
}
