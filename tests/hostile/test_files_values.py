"""Values a scan file may hold that the contract refuses, in every format: all-identical positions,
NaN/Inf positions, zero, negative or non-finite geometry, ambiguous (N, N, N) stacks, numeric text
where numbers are expected, and Python objects (never unpickled).

Each is one named error naming the file and the key or value at fault, or, where the file is valid
but unusual, the correct data.
"""

from __future__ import annotations

import io
import os

import numpy as np
import pytest

from ptychodata.errors import ParameterError, ScanDataError, ScanFormatError

from . import _files
from ._harness import expect_error, expect_ok, run_case

FORMATS = _files.FORMATS
_X_KEY = {"npz": "xcoords", "cxi": "translation", "ptychodus": "probe_position_x_px", "tike": "scan",
          "tike_bz2": "scan", "keys": "/measurement/x"}


# ------------------------------------------------------------------ positions
@pytest.mark.parametrize("fmt", FORMATS)
def test_all_identical_positions_are_refused(fmt, tmp_path):
    same = np.full(_files.M, 25.0)
    path, options = _files.write(fmt, tmp_path, x=same, y=same)
    outcome = run_case(_files.load, str(path), options)
    expect_error(outcome, ScanDataError, match="identical|same position")
    assert path.name in outcome.message


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_non_finite_positions_are_refused(fmt, bad, tmp_path):
    x, y = _files.raster()
    x = x.copy()
    x[5] = bad
    path, options = _files.write(fmt, tmp_path, x=x)
    outcome = run_case(_files.load, str(path), options)
    expect_error(outcome, ScanDataError, match="NaN/Inf")
    assert path.name in outcome.message


@pytest.mark.parametrize("fmt", FORMATS)
def test_positions_as_numeric_text_are_a_format_error_naming_the_key(fmt, tmp_path):
    x, y = _files.raster()
    text_x, text_y = x.astype("S12"), y.astype("S12")
    if fmt in ("npz", "tike", "tike_bz2"):
        text_x, text_y = x.astype("U12"), y.astype("U12")
    if fmt == "cxi":
        translation = np.stack([x, y, np.zeros_like(x)], axis=1).astype("S12")
        path, options = _files.write(fmt, tmp_path, translation=translation)
    else:
        path, options = _files.write(fmt, tmp_path, x=text_x, y=text_y)
    outcome = run_case(_files.load, str(path), options)
    expect_error(outcome, ScanFormatError, match=_X_KEY[fmt] if fmt != "tike_bz2" else "scan")
    assert "text" in outcome.message or "dtype" in outcome.message


@pytest.mark.parametrize("fmt", FORMATS)
def test_patterns_as_numeric_text_are_a_format_error(fmt, tmp_path):
    text = _files.counts().astype("S8")
    if fmt in ("npz", "tike", "tike_bz2"):
        text = _files.counts().astype("U8")
    path, options = _files.write(fmt, tmp_path, data=text)
    outcome = run_case(_files.load, str(path), options)
    expect_error(outcome, ScanFormatError, match="dtype")
    assert path.name in outcome.message


@pytest.mark.parametrize("fmt", ["npz", "tike", "keys"])
def test_complex_positions_are_refused(fmt, tmp_path):
    x, y = _files.raster()
    path, options = _files.write(fmt, tmp_path, x=x + 1j, y=y)
    expect_error(run_case(_files.load, str(path), options), ScanDataError, match="complex|real")


# ------------------------------------------------------------------ geometry in the file
GEOMETRY = {
    "cxi": {"distance": "distance", "pixel": "x_pixel_size", "energy_J": "energy", "wavelength": "wavelength"},
    "ptychodus": {"distance": "detector_object_distance_m", "pixel": "object_pixel_width_m",
                  "energy": "photon_energy_eV"},
    "keys": {"distance_m": "distance_m", "detector_pixel_m": "detector_pixel_m", "energy_eV": "energy_eV",
             "wavelength_m": "wavelength_m"},
}
CASES = [(fmt, field) for fmt, fields in GEOMETRY.items() for field in fields]


@pytest.mark.parametrize("value", [0.0, -1.5, np.nan, np.inf], ids=["zero", "negative", "nan", "inf"])
@pytest.mark.parametrize(("fmt", "field"), CASES, ids=[f"{f}-{k}" for f, k in CASES])
def test_zero_negative_or_non_finite_geometry_in_a_file_is_refused(fmt, field, value, tmp_path):
    if fmt == "keys":
        path, options = _files.write(fmt, tmp_path, **{field: np.float64(value)})
    else:
        path, options = _files.write(fmt, tmp_path, **{field: value})
    outcome = run_case(_files.load, str(path), options)
    expect_error(outcome, ScanDataError, match=GEOMETRY[fmt][field])
    assert path.name in outcome.message


@pytest.mark.parametrize(
    "option", ["wavelength_m", "energy_eV", "distance_m", "detector_pixel_m", "pixel_size"]
)
@pytest.mark.parametrize("value", [0.0, -2.0, float("nan")], ids=["zero", "negative", "nan"])
def test_zero_negative_or_nan_geometry_options_are_refused(option, value, tmp_path):
    path, options = _files.write("cxi", tmp_path)
    outcome = run_case(_files.load, str(path), {option: value})
    expect_error(outcome, ScanDataError, match=option)


def test_a_geometry_option_of_the_wrong_kind_is_a_parameter_error(tmp_path):
    path, _ = _files.write("cxi", tmp_path)
    expect_error(run_case(_files.load, str(path), {"distance_m": "1.5"}), ParameterError, match="distance_m")


# ------------------------------------------------------------------ (N, N, N) stacks
def _cube(tmp_path, key="diffraction", **extra):
    data = np.sqrt(_files.counts(m=16).astype(np.float32))  # (16, 16, 16): M == N
    x, y = _files.raster(16)
    path = tmp_path / "cube.npz"
    arrays = {key: data, **extra}
    if "xcoords_start" not in extra:
        arrays.update(xcoords=x, ycoords=y)
    np.savez(path, **arrays)
    return str(path), data


def test_a_cube_under_diffraction_is_ambiguous_and_refused(tmp_path):
    path, _ = _cube(tmp_path)
    outcome = run_case(_files.load, path)
    expect_error(outcome, ScanDataError, match=r"\(16, 16, 16\).*pattern_axis")


def test_a_slac_cube_is_ambiguous_and_refused(tmp_path):
    x, y = _files.raster(16)
    path, _ = _cube(tmp_path, xcoords_start=x, ycoords_start=y)
    expect_error(run_case(_files.load, path), ScanDataError, match="pattern_axis")


@pytest.mark.parametrize("axis", ["first", "last"])
def test_a_cube_reads_as_the_layout_given(axis, tmp_path):
    path, data = _cube(tmp_path)
    first = np.asarray(expect_ok(run_case(_files.load, path, {"pattern_axis": axis}))["first"])
    expected = data if axis == "first" else np.moveaxis(data, 2, 0)
    np.testing.assert_allclose(first, expected[:2], rtol=1e-6)


def test_a_cube_under_diff3d_is_the_contract_layout(tmp_path):
    path, data = _cube(tmp_path, key="diff3d")
    first = np.asarray(expect_ok(run_case(_files.load, path))["first"])
    np.testing.assert_allclose(first, data[:2], rtol=1e-6)


def test_a_legacy_stack_that_is_not_a_cube_is_still_transposed(tmp_path):
    data = np.sqrt(_files.counts(m=12).astype(np.float32))
    x, y = _files.raster(12)
    path = tmp_path / "legacy.npz"
    np.savez(path, diffraction=np.moveaxis(data, 0, 2), xcoords=x, ycoords=y)
    first = np.asarray(expect_ok(run_case(_files.load, str(path)))["first"])
    np.testing.assert_allclose(first, data[:2], rtol=1e-6)


def test_a_layout_contradicting_the_shape_is_refused(tmp_path):
    data = np.sqrt(_files.counts(m=12).astype(np.float32))
    x, y = _files.raster(12)
    path = tmp_path / "legacy.npz"
    np.savez(path, diffraction=data, xcoords=x, ycoords=y)
    expect_error(run_case(_files.load, str(path), {"pattern_axis": "last"}), ScanDataError, match="pattern_axis")


# ------------------------------------------------------------------ objects: never unpickled
OBJECT_KEYS = ["diffraction", "xcoords", "probeGuess", "_metadata", "extra"]


@pytest.mark.parametrize("key", OBJECT_KEYS)
@pytest.mark.parametrize("container", ["npz", "npz_deflated", "tike_bz2"])
def test_an_object_member_is_refused_and_never_unpickled(container, key, tmp_path):
    marker = str(tmp_path / "unpickled")
    x, y = _files.raster()
    arrays = {"diffraction": np.sqrt(_files.counts().astype(np.float32)), "xcoords": x, "ycoords": y}
    if container == "tike_bz2":
        arrays = {"data": _files.counts(), "scan": np.stack([y, x], axis=-1)}
        key = {"diffraction": "data", "xcoords": "scan"}.get(key, key)
    arrays[key] = _files.object_member(marker, () if key == "_metadata" else (4,))
    buffer = io.BytesIO()
    (np.savez_compressed if container == "npz_deflated" else np.savez)(buffer, **arrays)
    path = tmp_path / ("scan.npz.bz2" if container == "tike_bz2" else "scan.npz")
    path.write_bytes(__import__("bz2").compress(buffer.getvalue()) if container == "tike_bz2" else buffer.getvalue())
    outcome = run_case(_files.load, str(path))
    expect_error(outcome, ScanDataError, match=key)
    assert not os.path.exists(marker), "a pickle from the file ran code"


def test_nothing_in_the_package_unpickles_freely():
    """Pickles from data are never loaded: no ``allow_pickle=True``, no ``pickle.load``/``loads``; the one
    unpickler is the NPZ reader's, which admits only numpy's array reconstruction (a 0-d string array)."""
    import re
    from pathlib import Path

    import ptychodata

    root = Path(ptychodata.__file__).parent
    found = []
    for source in sorted(root.rglob("*.py")):
        text = source.read_text()
        for pattern in (r"allow_pickle\s*=\s*True", r"pickle\.loads?\(", r"\bUnpickler\b", r"torch\.load\("):
            for match in re.finditer(pattern, text):
                found.append(f"{source.relative_to(root)}: {match.group(0)}")
    assert found == ["io/_npz.py: Unpickler"], found


# ------------------------------------------------------------------ the same files through prepare
def _hostile_file(kind, directory):
    x, y = _files.raster()
    if kind == "identical":
        return _files.write("cxi", directory, x=np.full(_files.M, 5.0), y=np.full(_files.M, 5.0))
    if kind == "nan":
        x = x.copy()
        x[3] = np.nan
        return _files.write("ptychodus", directory, x=x)
    if kind == "zero_distance":
        return _files.write("cxi", directory, distance=0.0)
    if kind == "text":
        return _files.write("keys", directory, x=x.astype("S8"), y=y.astype("S8"))
    if kind == "cube":
        return _cube(directory)[0], {}
    raise ValueError(kind)  # pragma: no cover


PREPARED = {"identical": ScanDataError, "nan": ScanDataError, "zero_distance": ScanDataError,
            "text": ScanFormatError, "cube": ScanDataError}


@pytest.fixture(scope="module")
def cache_with_a_build(tmp_path_factory):
    directory = tmp_path_factory.mktemp("earlier")
    path, options = _files.write("npz", directory)
    cache = directory / "cache"
    assert expect_ok(run_case(_files.prepare, str(path), str(cache), options)) == _files.M
    return cache


@pytest.mark.parametrize("kind", list(PREPARED))
def test_prepare_refuses_the_same_values_and_leaves_the_cache_as_it_was(kind, tmp_path, cache_with_a_build):
    from ._harness import assert_cache_intact, snapshot

    path, options = _hostile_file(kind, tmp_path)
    before = snapshot(cache_with_a_build)
    outcome = run_case(_files.prepare, str(path), str(cache_with_a_build), options)
    expect_error(outcome, PREPARED[kind])
    assert_cache_intact(before, cache_with_a_build)
