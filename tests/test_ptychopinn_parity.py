"""Equality with PtychoPINN's own outputs (commit 712c23f) for one small scan.

The fixture (``tests/data/ptychopinn_parity/``) holds the scan in PtychoPINN's NPZ layout and
what ``ptycho.raw_data`` (TF) and ``ptycho_torch`` computed from it; see its README. Given PtychoPINN's groups, our grouped dict must equal its arrays.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from ptychodata import GroupingConfig, PtychoDataContainer, ScanData, grouped_data
from ptychodata.normalize import (
    normalize_probe,
    pattern_amplitude_sums,
    pattern_energies,
    physics_scaling_constant,
    rms_scaling_constant,
)

FIXTURE = Path(__file__).resolve().parent / "data" / "ptychopinn_parity" / "ptychopinn_parity.npz"
COORD_KEYS = (
    "coords_nn", "coords_offsets", "coords_relative",
    "coords_start_nn", "coords_start_offsets", "coords_start_relative",
)


@pytest.fixture(scope="module")
def reference():
    with np.load(FIXTURE) as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="module")
def scan(reference, tmp_path_factory):
    """The fixture's scan, written as PtychoPINN's metadata manager writes a file, then loaded."""
    path = tmp_path_factory.mktemp("parity") / "ptychopinn_scan.npz"
    members = {key[len("scan_"):]: value for key, value in reference.items() if key.startswith("scan_")}
    metadata = json.dumps({"physics_parameters": {"nphotons": 1e9}})
    np.savez_compressed(path, **members, _metadata=np.array(metadata, dtype=object))
    return ScanData.load(path)


@pytest.fixture(scope="module", params=[1, 2], ids=["gridsize1", "gridsize2"])
def grouped(request, reference, scan):
    gridsize = request.param
    prefix = f"g{gridsize}_"
    groups = reference[prefix + "nn_indices"]
    config = GroupingConfig(N=64, gridsize=gridsize, neighbor_count=7)
    return prefix, grouped_data(scan, config, groups=groups, with_Y=gridsize == 1)


def test_scan_is_the_fixture_scan(reference, scan):
    np.testing.assert_array_equal(scan.diffraction, reference["scan_diff3d"])
    np.testing.assert_array_equal(scan.xcoords_start, reference["scan_xcoords_start"])
    assert scan.nphotons == 1e9


def test_nn_indices_int64_and_equal(reference, grouped):
    prefix, ours = grouped
    assert ours["nn_indices"].dtype == np.int64
    np.testing.assert_array_equal(ours["nn_indices"], reference[prefix + "nn_indices"])


@pytest.mark.parametrize("key", COORD_KEYS)
def test_coordinate_keys_exactly_equal(reference, grouped, key):
    prefix, ours = grouped
    expected = reference[prefix + key]
    assert ours[key].dtype == expected.dtype == np.float64
    assert ours[key].shape == expected.shape
    np.testing.assert_array_equal(ours[key], expected)


@pytest.mark.parametrize("key", ["X_full", "diffraction"])
def test_patterns_exactly_equal(reference, grouped, key):
    prefix, ours = grouped
    expected = reference[f"{prefix}{key}_first16"]
    assert ours[key].dtype == expected.dtype == np.float32
    np.testing.assert_array_equal(ours[key][:16], expected)


def test_x_scale_equal(reference, grouped):
    prefix, ours = grouped
    assert ours["x_scale"] == pytest.approx(float(reference[prefix + "x_scale"]), rel=1e-7)


def test_Y_at_gridsize_1_to_interpolation_error(reference, scan):
    groups = reference["g1_nn_indices"][:16]
    ours = grouped_data(scan, GroupingConfig(gridsize=1), groups=groups)["Y"]
    expected = reference["g1_Y_first16"]
    assert ours.dtype == expected.dtype == np.complex64
    np.testing.assert_allclose(ours, expected, rtol=0, atol=2e-6)
    assert np.abs(expected).max() > 0.5  # a real comparison, not of two near-zero arrays


def test_container_coordinates_as_ptycho_loader(reference, grouped):
    """``ptycho.loader.load``: coords_nominal = coords_true = coords_start_relative (float32),
    global_offsets = coords_offsets, local_offsets = coords_relative."""
    notes = json.loads(str(reference["notes_json"]))
    assert "coords_nominal = coords_true = coords_start_relative (float32)" in notes["container"]
    prefix, ours = grouped
    container = PtychoDataContainer.from_grouped(ours, reference["scan_probeGuess"], backend="numpy")
    start = reference[prefix + "coords_start_relative"].astype(np.float32)
    for name in ("coords_nominal", "coords_true", "coords"):
        assert getattr(container, name).dtype == np.float32
        np.testing.assert_array_equal(getattr(container, name), start)
    np.testing.assert_array_equal(container.global_offsets, reference[prefix + "coords_offsets"])
    np.testing.assert_array_equal(container.local_offsets, reference[prefix + "coords_relative"])
    np.testing.assert_array_equal(container.nn_indices, reference[prefix + "nn_indices"])
    if prefix == "g2_":  # the fixture's jitter makes start and measured offsets differ: the rule is tested
        assert np.abs(start - reference[prefix + "coords_relative"]).max() > 0.01


def test_ptycho_torch_scaling_constants(reference, scan):
    rms = rms_scaling_constant(pattern_energies(scan.diffraction), N=scan.N)
    physics = physics_scaling_constant(pattern_amplitude_sums(scan.diffraction))
    assert rms == pytest.approx(float(reference["torch_rms_scaling_constant"]), rel=1e-12)
    assert physics == pytest.approx(float(reference["torch_physics_scaling_constant"]), rel=1e-12)


def test_ptycho_torch_normalised_probe(reference):
    normalised, factor = normalize_probe(reference["scan_probeGuess"], 4.0, rule="ptycho_torch")
    assert normalised.dtype == np.complex64
    np.testing.assert_allclose(normalised, reference["torch_probe_normalised"], rtol=1e-6, atol=1e-7)
    assert 1 / factor == pytest.approx(float(reference["torch_probe_scaling"]), rel=1e-6)


def test_tf_probe_rule_differs_from_ptycho_torch_on_this_probe(reference):
    """The two PtychoPINN rules are distinct: TF averages the masked probe (zeros outside the
    disk) over all pixels, ptycho_torch the whole probe."""
    probe = reference["scan_probeGuess"]
    tf_factor = normalize_probe(probe)[1]
    N = probe.shape[0]
    centred = np.arange(N) - N // 2 + 0.5
    disk = np.hypot(centred[:, None], centred[None, :]) < N // 4
    assert tf_factor == pytest.approx(4.0 * np.abs(probe.astype(np.complex128))[disk].sum() / N**2, rel=1e-12)
    assert tf_factor < normalize_probe(probe, rule="ptycho_torch")[1]
