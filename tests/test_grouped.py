import numpy as np
import pytest

from ptychodata import (
    GroupingConfig,
    GroupingError,
    PtychoDataContainer,
    ScanData,
    ScanDataError,
    grouped_data,
    reassemble,
    simulate,
)


@pytest.fixture(scope="module")
def clean_scan():
    return simulate(n_points=100, N=32, seed=3, pattern="jittered")


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def far_field(probe: np.ndarray, patch: np.ndarray) -> np.ndarray:
    return np.fft.fftshift(np.abs(np.fft.fft2(probe * patch)))


@pytest.mark.parametrize("gridsize", [1, 2])
def test_Y_channels_diffract_to_their_X_channels(clean_scan, gridsize):
    """|FFT(probe · Y_c)| matches diffraction channel c: X and Y describe the same position."""
    config = GroupingConfig(gridsize=gridsize, neighbor_count=6, n_groups=20, seed=1)
    grouped = grouped_data(clean_scan, config)
    for b in range(20):
        for c in range(gridsize**2):
            predicted = far_field(clean_scan.probe, grouped["Y"][b, :, :, c])
            assert correlation(predicted, grouped["diffraction"][b, :, :, c]) > 0.99
    if gridsize == 2:  # and a wrong channel does not match as well
        wrong = far_field(clean_scan.probe, grouped["Y"][0, :, :, 1])
        assert correlation(wrong, grouped["diffraction"][0, :, :, 0]) < correlation(
            far_field(clean_scan.probe, grouped["Y"][0, :, :, 0]), grouped["diffraction"][0, :, :, 0]
        )


def test_keys_shapes_and_dtypes(clean_scan):
    config = GroupingConfig(gridsize=2, neighbor_count=6, n_groups=30, seed=0, nphotons=1e6)
    grouped = grouped_data(clean_scan, config)
    B, N, C = 30, 32, 4
    expected = {
        "diffraction": ((B, N, N, C), np.float32),
        "X_full": ((B, N, N, C), np.float32),
        "Y": ((B, N, N, C), np.complex64),
        "coords_nn": ((B, 1, 2, C), np.float64),
        "coords_offsets": ((B, 1, 2, 1), np.float64),
        "coords_relative": ((B, 1, 2, C), np.float64),
        "coords_start_nn": ((B, 1, 2, C), np.float64),
        "coords_start_offsets": ((B, 1, 2, 1), np.float64),
        "coords_start_relative": ((B, 1, 2, C), np.float64),
        "nn_indices": ((B, C), np.int64),
        "objectGuess": (clean_scan.object.shape, np.complex64),
    }
    for key, (shape, dtype) in expected.items():
        assert grouped[key].shape == shape, key
        assert grouped[key].dtype == dtype, key
    assert isinstance(grouped["x_scale"], float)
    assert grouped["intensity_scale"] == pytest.approx(np.sqrt(1e6) / (N / 2))


def test_coordinates_follow_section_3(clean_scan):
    grouped = grouped_data(clean_scan, GroupingConfig(gridsize=2, neighbor_count=6, n_groups=10, seed=2))
    idx = grouped["nn_indices"]
    np.testing.assert_array_equal(grouped["coords_nn"][:, 0, 0, :], clean_scan.xcoords[idx])
    np.testing.assert_array_equal(grouped["coords_nn"][:, 0, 1, :], clean_scan.ycoords[idx])
    centre = np.stack([clean_scan.xcoords[idx].mean(1), clean_scan.ycoords[idx].mean(1)], axis=1)
    np.testing.assert_allclose(grouped["coords_offsets"][:, 0, :, 0], centre)
    # minus sign: relative = -(p_c - centre)
    np.testing.assert_allclose(grouped["coords_relative"][:, 0, 0, :], centre[:, :1] - clean_scan.xcoords[idx])
    np.testing.assert_allclose(grouped["coords_relative"].sum(axis=3), 0, atol=1e-9)
    np.testing.assert_array_equal(grouped["coords_start_nn"][:, 0, 0, :], clean_scan.xcoords_start[idx])
    assert not np.array_equal(grouped["coords_start_nn"], grouped["coords_nn"])  # jittered scan


def test_X_full_is_scaled_to_mean_energy_N_over_2_squared(clean_scan):
    grouped = grouped_data(clean_scan, GroupingConfig(gridsize=2, neighbor_count=6, n_groups=50, seed=0))
    energy = (grouped["X_full"].astype(np.float64) ** 2).sum(axis=(1, 2)).mean()
    assert energy == pytest.approx((32 / 2) ** 2, rel=1e-5)
    np.testing.assert_allclose(grouped["X_full"], grouped["x_scale"] * grouped["diffraction"], rtol=1e-6)


def test_scale_counts_patterns_by_multiplicity():
    diffraction = np.stack([np.full((4, 4), 1.0), np.full((4, 4), 3.0)]).astype(np.float32)
    scan = ScanData.from_arrays(diffraction=diffraction, xcoords=[0.0, 1.0], ycoords=[0.0, 0.0],
                                probe=np.ones((4, 4)))
    groups = np.array([[0], [1], [1]])
    grouped = grouped_data(scan, GroupingConfig(), groups=groups)
    mean_energy = (16 * 1 + 2 * 16 * 9) / 3  # pattern 1 is in two groups
    assert grouped["x_scale"] == pytest.approx(np.sqrt(4 / mean_energy))
    assert grouped["Y"] is None  # no object, no file Y


def test_file_Y_takes_precedence(clean_scan):
    marker = np.full((clean_scan.n_points, 32, 32), 2 + 1j, np.complex64)
    marker[:, 0, 0] = np.arange(clean_scan.n_points)
    scan = clean_scan.with_(Y=marker)
    grouped = grouped_data(scan, GroupingConfig(gridsize=2, neighbor_count=6, n_groups=10, seed=0))
    np.testing.assert_array_equal(grouped["Y"][:, 0, 0, :].real, grouped["nn_indices"])


def test_no_object_means_no_Y(clean_scan):
    scan = clean_scan.with_(object=None)
    assert grouped_data(scan, GroupingConfig(n_groups=5, seed=0))["Y"] is None


def test_bad_amplitudes_found_while_grouping(clean_scan):
    diffraction = np.array(clean_scan.diffraction)
    diffraction[7, 3, 3] = np.nan
    scan = ScanData.from_arrays(diffraction=diffraction, xcoords=clean_scan.xcoords, ycoords=clean_scan.ycoords,
                                probe=clean_scan.probe, check_values=False)
    with pytest.raises(ScanDataError, match="diffraction"):
        grouped_data(scan, GroupingConfig())


def test_reassembling_ground_truth_returns_the_object(clean_scan):
    grouped = grouped_data(clean_scan, GroupingConfig(gridsize=2, neighbor_count=6, seed=0))
    canvas, weights = reassemble(grouped["Y"], grouped["coords_nn"][:, 0, 0, :], grouped["coords_nn"][:, 0, 1, :],
                                 clean_scan.object.shape, channels_last=True, return_weights=True)
    covered = weights > 1.0
    rows, cols = np.nonzero(covered)
    assert covered.sum() > 0.3 * covered.size
    inner = covered.copy()
    inner[: rows.min() + 4] = inner[rows.max() - 4 :] = False
    inner[:, : cols.min() + 4] = inner[:, cols.max() - 4 :] = False
    error = np.abs(canvas[inner] - clean_scan.object[inner]) / np.abs(clean_scan.object[inner])
    assert np.median(error) < 1e-2


def test_container_numpy_and_torch(clean_scan):
    grouped = grouped_data(clean_scan, GroupingConfig(gridsize=2, neighbor_count=6, n_groups=8, seed=0,
                                                       nphotons=1e6))
    numpy_container = PtychoDataContainer.from_grouped(grouped, clean_scan.probe, backend="numpy")
    assert isinstance(numpy_container.X, np.ndarray) and numpy_container.X.shape == (8, 32, 32, 4)
    assert numpy_container.coords.dtype == np.float32 and numpy_container.coords.shape == (8, 1, 2, 4)
    np.testing.assert_allclose(numpy_container.Y_I, np.abs(grouped["Y"]))
    np.testing.assert_allclose(numpy_container.Y_phi, np.angle(grouped["Y"]), atol=1e-6)
    assert numpy_container.global_offsets.dtype == np.float64
    assert numpy_container.norm_Y_I == grouped["intensity_scale"]
    assert len(numpy_container) == 8
    torch = pytest.importorskip("torch")
    container = PtychoDataContainer.from_grouped(grouped, clean_scan.probe)
    assert isinstance(container.X, torch.Tensor) and container.X.dtype == torch.float32
    assert container.Y.dtype == torch.complex64 and container.probe.shape == (32, 32)
    assert container.nn_indices.dtype == torch.int64


def test_container_without_Y_uses_ones(clean_scan):
    grouped = grouped_data(clean_scan.with_(object=None), GroupingConfig(n_groups=4, seed=0))
    container = PtychoDataContainer.from_grouped(grouped, clean_scan.probe, backend="numpy")
    np.testing.assert_array_equal(container.Y, np.ones((4, 32, 32, 1), np.complex64))
    assert container.YY_full is None


# ---------------------------------------------------------------- a precomputed group table
def test_int32_table_comes_back_int64_and_same_groups(clean_scan):
    # int32: PtychoPINN's own nn_indices dtype at gridsize 2
    table = np.array([[0, 1, 2, 3], [4, 5, 6, 7]], np.int32)
    grouped = grouped_data(clean_scan, GroupingConfig(gridsize=2), groups=table, with_Y=False)
    assert grouped["nn_indices"].dtype == np.int64
    np.testing.assert_array_equal(grouped["nn_indices"], table)
    np.testing.assert_array_equal(grouped["diffraction"][1, :, :, 2], clean_scan.diffraction[6])


@pytest.mark.parametrize(
    "table, gridsize, message",
    [
        (np.arange(4), 2, r"groups: shape \(4,\) \(1-D\); expected \(B, C=4\) integer indices"),
        (np.zeros((2, 4), np.float64), 2, r"groups: dtype float64; expected \(B, C=4\).*astype\(np.int64\)"),
        (np.zeros((2, 1), bool), 1, r"groups: dtype bool; expected \(B, C=1\)"),
        (np.zeros((2, 9), np.int64), 2, r"groups: shape \(2, 9\) has 9 columns; expected \(B, C=4\)"),
        (np.zeros((0, 4), np.int64), 2, r"groups: shape \(0, 4\) holds no groups"),
        (np.array([[0, 1, -1, 3]]), 2, r"groups\[0, 2\] = -1 \(values span \[-1, 3\]\); expected .*\[0, 100\)"),
        (np.array([[5], [100]]), 1, r"groups\[1, 0\] = 100 .*\[0, 100\) for a scan of M=100 points"),
    ],
)
def test_bad_group_tables_are_named(clean_scan, table, gridsize, message):
    with pytest.raises(GroupingError, match=message):
        grouped_data(clean_scan, GroupingConfig(gridsize=gridsize), groups=table)


def test_group_table_error_names_the_file(scan_file):
    scan = ScanData.load(scan_file)
    with pytest.raises(GroupingError, match=rf"{scan_file.name}: groups\[0, 0\] = 64 "):
        grouped_data(scan, GroupingConfig(), groups=np.array([[64]]))


def test_config_N_checked_with_a_group_table(clean_scan):
    with pytest.raises(GroupingError, match="config N=16 but the patterns are 32×32"):
        grouped_data(clean_scan, GroupingConfig(N=16), groups=np.array([[0]]))


def test_container_coordinates_follow_ptychopinn_loader(clean_scan):
    """§8: coords_nominal = coords_true = coords = coords_start_relative (float32);
    global_offsets = coords_offsets, local_offsets = coords_relative."""
    rng = np.random.default_rng(5)
    scan = clean_scan.with_(xcoords_start=clean_scan.xcoords + rng.uniform(-1, 1, clean_scan.n_points),
                            ycoords_start=clean_scan.ycoords + rng.uniform(-1, 1, clean_scan.n_points))
    grouped = grouped_data(scan, GroupingConfig(gridsize=2, neighbor_count=6, n_groups=12, seed=0))
    container = PtychoDataContainer.from_grouped(grouped, scan.probe, backend="numpy")
    start = grouped["coords_start_relative"].astype(np.float32)
    assert np.abs(start - grouped["coords_relative"]).max() > 0.1  # the two are distinguishable here
    for name in ("coords_nominal", "coords_true", "coords"):
        value = getattr(container, name)
        assert value.dtype == np.float32
        np.testing.assert_array_equal(value, start)
    assert container.global_offsets.dtype == np.float64 and container.local_offsets.dtype == np.float64
    np.testing.assert_array_equal(container.global_offsets, grouped["coords_offsets"])
    np.testing.assert_array_equal(container.local_offsets, grouped["coords_relative"])
