import tracemalloc

import numpy as np
import pytest
from scipy.spatial import cKDTree

from ptychodata.errors import ParameterError, SimulationError
from ptychodata.scan import ScanData
from ptychodata.simulate import FFT_NORM, simulate


def reference_window(obj, x, y, N):
    """Bilinear window centred on (x, y), written with slices: integer part plus fraction (§4)."""
    ix, iy = int(np.floor(x)), int(np.floor(y))
    fx, fy = x - ix, y - iy
    top, left = iy - N // 2, ix - N // 2
    o = obj.astype(np.complex128)
    a = o[top : top + N, left : left + N]
    b = o[top : top + N, left + 1 : left + N + 1]
    c = o[top + 1 : top + N + 1, left : left + N]
    d = o[top + 1 : top + N + 1, left + 1 : left + N + 1]
    return (1 - fy) * ((1 - fx) * a + fx * b) + fy * ((1 - fx) * c + fx * d)


def assert_scans_equal(a, b):
    for key in ("diffraction", "xcoords", "ycoords", "xcoords_start", "ycoords_start", "probe", "object"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key), err_msg=key)
    assert a.metadata == b.metadata


# ---------------------------------------------------------------- shapes and metadata
def test_shapes_dtypes_and_metadata():
    scan = simulate(50, 16, seed=1)
    assert isinstance(scan, ScanData) and scan.n_points == 50 and scan.N == 16
    assert scan.diffraction.shape == (50, 16, 16) and scan.diffraction.dtype == np.float32
    assert scan.xcoords.dtype == scan.ycoords.dtype == np.float64
    assert scan.probe.shape == (16, 16) and scan.probe.dtype == np.complex64
    assert scan.object.dtype == np.complex64
    np.testing.assert_array_equal(scan.xcoords_start, scan.xcoords)
    assert (scan.diffraction >= 0).all() and np.isfinite(scan.diffraction).all()
    meta = scan.metadata
    assert meta["simulated"] is True and meta["pattern"] == "raster" and meta["seed"] == 1
    assert meta["nphotons"] is None and meta["fft_norm"] == FFT_NORM == "ortho"
    amplitude = np.abs(scan.object)
    assert amplitude.min() >= 0.5 - 1e-6 and amplitude.max() <= 1 + 1e-6
    assert np.abs(np.angle(scan.object)).max() <= np.pi / 2 + 1e-6


@pytest.mark.parametrize("probe", ["disk", "gaussian"])
def test_probe_is_centred_and_fits_the_window(probe):
    scan = simulate(4, 32, probe=probe, seed=0)
    amplitude = np.abs(scan.probe)
    assert np.unravel_index(amplitude.argmax(), amplitude.shape) == (16, 16)
    assert amplitude.max() == pytest.approx(1, abs=1e-6)
    assert amplitude[0].max() < 0.05 and amplitude[:, 0].max() < 0.05  # support well inside
    assert np.ptp(np.angle(scan.probe[16, 10:23])) > 0  # defocus phase


# ---------------------------------------------------------------- randomness
def test_deterministic_for_a_seed_and_different_for_another():
    first = simulate(40, 16, pattern="jittered", nphotons=1e3, seed=5)
    assert_scans_equal(first, simulate(40, 16, pattern="jittered", nphotons=1e3, seed=5))
    other = simulate(40, 16, pattern="jittered", nphotons=1e3, seed=6)
    assert not np.array_equal(first.object, other.object)
    assert not np.array_equal(first.xcoords, other.xcoords)
    assert not np.array_equal(first.diffraction, other.diffraction)


def test_seed_none_is_recorded_and_reproduces_the_scan():
    scan = simulate(20, 16, nphotons=1e3)
    again = simulate(20, 16, nphotons=1e3, seed=scan.metadata["seed"])
    assert_scans_equal(scan, again)


def test_accepts_a_generator():
    a = simulate(20, 16, seed=np.random.default_rng(3))
    b = simulate(20, 16, seed=np.random.default_rng(3))
    np.testing.assert_array_equal(a.diffraction, b.diffraction)
    assert a.metadata["seed"] is None


@pytest.mark.parametrize("pattern", ["raster", "jittered", "fermat"])
def test_chunk_size_does_not_change_the_result(pattern):
    kwargs = {"n_points": 150, "N": 16, "pattern": pattern, "nphotons": 1e4, "seed": 11}
    reference = simulate(**kwargs, chunk_size=4096)
    for chunk_size in (1, 7, 64):
        assert_scans_equal(reference, simulate(**kwargs, chunk_size=chunk_size))


def test_numpy_global_rng_is_untouched():
    np.random.seed(1234)
    before = np.random.get_state()
    simulate(30, 16, pattern="jittered", nphotons=1e3, seed=2)
    simulate(30, 16, pattern="fermat")
    after = np.random.get_state()
    assert before[0] == after[0] and before[2:] == after[2:]
    np.testing.assert_array_equal(before[1], after[1])


# ---------------------------------------------------------------- physics and geometry
@pytest.mark.parametrize("pattern", ["raster", "jittered", "fermat"])
@pytest.mark.parametrize("N", [16, 17])
def test_patterns_are_the_far_field_of_probe_times_centred_window(pattern, N):
    scan = simulate(30, N, pattern=pattern, seed=4, chunk_size=8)
    fractions = np.concatenate([scan.xcoords % 1, scan.ycoords % 1])
    assert (fractions > 0.01).any()  # sub-pixel positions exercise interpolation
    for m in (0, 9, 29):
        window = reference_window(scan.object, scan.xcoords[m], scan.ycoords[m], N)
        exit_wave = scan.probe.astype(np.complex128) * window
        expected = np.fft.fftshift(np.abs(np.fft.fft2(exit_wave, norm="ortho")))
        np.testing.assert_allclose(scan.diffraction[m], expected, rtol=1e-4, atol=1e-5 * expected.max())
        # Unitary FFT: total intensity equals the exit-wave energy (Parseval).
        assert np.sum(scan.diffraction[m].astype(np.float64) ** 2) == pytest.approx(
            np.sum(np.abs(exit_wave) ** 2), rel=1e-4
        )


@pytest.mark.parametrize("pattern", ["raster", "jittered", "fermat"])
@pytest.mark.parametrize("N", [16, 17])
def test_every_window_lies_inside_the_object(pattern, N):
    scan = simulate(77, N, pattern=pattern, overlap=0.5, seed=8)
    H, W = scan.object.shape
    x0, y0 = np.floor(scan.xcoords), np.floor(scan.ycoords)
    assert (y0 - N // 2 >= 0).all() and (x0 - N // 2 >= 0).all()
    # The last row/column of a window and its bilinear +1 neighbour.
    assert (y0 - N // 2 + N <= H - 1).all() and (x0 - N // 2 + N <= W - 1).all()


@pytest.mark.parametrize("overlap", [0.5, 0.7, 0.85])
def test_raster_step_follows_overlap(overlap):
    scan = simulate(64, 32, overlap=overlap, seed=0)
    distances, _ = cKDTree(scan.positions).query(scan.positions, k=2)
    step = (1 - overlap) * 2 * 32 / 4
    assert scan.metadata["step"] == pytest.approx(step)
    assert np.median(distances[:, 1]) == pytest.approx(step, rel=1e-9)


def test_fermat_neighbours_sit_about_one_step_apart():
    scan = simulate(400, 32, pattern="fermat", overlap=0.6, seed=0)
    distances, _ = cKDTree(scan.positions).query(scan.positions, k=2)
    assert np.median(distances[:, 1]) == pytest.approx(scan.metadata["step"], rel=0.1)


@pytest.mark.parametrize("pattern", ["jittered", "fermat"])
def test_patterns_give_n_points_distinct_positions(pattern):
    scan = simulate(101, 16, pattern=pattern, seed=3)
    assert len(np.unique(scan.positions, axis=0)) == 101


def test_jittered_keeps_the_nominal_grid_as_start_coordinates():
    scan = simulate(49, 16, pattern="jittered", jitter=0.25, seed=3)
    raster = simulate(49, 16, pattern="raster", seed=3)
    step = scan.metadata["step"]
    start = np.stack([scan.xcoords_start, scan.ycoords_start], axis=1)
    jitter = scan.positions - start
    assert np.abs(jitter).max() <= 0.25 * step and np.abs(jitter).max() > 0.05 * step
    # The nominal grid is the raster grid up to a translation (the centring in the object).
    np.testing.assert_allclose(np.diff(start, axis=0), np.diff(raster.positions, axis=0))


# ---------------------------------------------------------------- noise
def test_poisson_noise_counts_average_nphotons():
    clean = simulate(200, 16, seed=9)
    noisy = simulate(200, 16, seed=9, nphotons=1e4)
    assert not np.array_equal(clean.diffraction, noisy.diffraction)
    np.testing.assert_array_equal(clean.object, noisy.object)
    scale = noisy.metadata["count_scale"]
    counts = noisy.diffraction.astype(np.float64) ** 2 * scale
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-2)
    assert counts.sum(axis=(1, 2)).mean() == pytest.approx(1e4, rel=0.01)
    # Amplitudes stay on the noise-free scale.
    clean_energy = (clean.diffraction.astype(np.float64) ** 2).sum(axis=(1, 2)).mean()
    assert (counts.sum(axis=(1, 2)).mean() / scale) == pytest.approx(clean_energy, rel=0.01)
    assert noisy.nphotons == 1e4 and noisy.metadata["simulated"] is True


# ---------------------------------------------------------------- writing to disk
def test_out_writes_a_memory_mapped_scan(tmp_path):
    path = tmp_path / "sub" / "sim.npz"
    scan = simulate(60, 16, pattern="jittered", nphotons=1e3, seed=2, chunk_size=16, out=path)
    assert path.exists() and [p.name for p in path.parent.iterdir()] == ["sim.npz"]  # temp removed
    assert isinstance(scan.diffraction, np.memmap)
    loaded = ScanData.load(path)
    assert isinstance(loaded.diffraction, np.memmap)
    assert_scans_equal(loaded, scan)
    assert_scans_equal(loaded, simulate(60, 16, pattern="jittered", nphotons=1e3, seed=2))


def test_out_keeps_less_than_one_copy_of_the_patterns_in_ram(tmp_path):
    M, N = 8192, 32
    nbytes = M * N * N * 4  # 32 MiB of float32 patterns
    tracemalloc.start()
    try:
        simulate(M, N, seed=0, chunk_size=256, out=tmp_path / "big.npz")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 0.75 * nbytes


# ---------------------------------------------------------------- objects and errors
def test_object_image_real_is_amplitude_and_complex_is_used_as_is():
    rng = np.random.default_rng(0)
    image = rng.uniform(0.2, 1.0, (90, 100))
    scan = simulate(25, 16, object_image=image, seed=0)
    np.testing.assert_allclose(scan.object, image.astype(np.complex64))
    field = (image * np.exp(0.5j * image)).astype(np.complex64)
    np.testing.assert_array_equal(simulate(25, 16, object_image=field, seed=0).object, field)
    assert scan.metadata["object"] == "image"


def test_object_shape_is_honoured_and_too_small_is_an_error():
    scan = simulate(25, 16, object_shape=(120, 130), seed=0)
    assert scan.object.shape == (120, 130)
    with pytest.raises(SimulationError, match=r"cannot hold the scan's 16x16 windows"):
        simulate(400, 16, object_shape=(40, 40), seed=0)
    with pytest.raises(SimulationError, match="cannot hold"):
        simulate(25, 16, object_image=np.ones((20, 20)))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"pattern": "spiral"}, SimulationError, "pattern='spiral'; expected one of"),
        ({"probe": "square"}, SimulationError, "probe='square'"),
        ({"overlap": 1.0}, SimulationError, "expected 0 <= overlap < 1"),
        ({"probe_radius": 20.0}, SimulationError, "expected 0 < radius <= N/2"),
        ({"nphotons": -5.0}, SimulationError, "nphotons=-5.0"),
        ({"n_points": 0}, ParameterError, "n_points=0; expected a positive integer"),
        ({"n_points": 2.5}, ParameterError, "n_points=2.5; expected a positive integer"),
        ({"chunk_size": 0}, ParameterError, "chunk_size=0; expected a positive integer"),
        ({"object_shape": (10,)}, SimulationError, "expected two positive integers"),
    ],
)
def test_invalid_arguments_are_rejected(kwargs, error, match):
    with pytest.raises(error, match=match):
        simulate(**{"n_points": 10, "N": 16, **kwargs})


def test_progress_bar_runs(capsys):
    scan = simulate(20, 16, chunk_size=5, progress=True, seed=0)
    assert scan.n_points == 20
    assert "simulate" in capsys.readouterr().err


def test_simulate_from_a_reconstruction_probe_object_positions():
    """The LCLS case: a real probe, object and positions, no patterns; |FFT(P·Y_c)| = X_c (§4)."""
    from ptychodata import GroupingConfig, grouped_data
    from ptychodata.errors import SimulationError

    rng = np.random.default_rng(3)
    N = 16
    yy, xx = np.mgrid[:N, :N] - N / 2
    probe = (np.exp(-(xx**2 + yy**2) / 18) * np.exp(1j * 0.05 * (xx**2 + yy**2))).astype(np.complex64)
    obj = (np.exp(1j * rng.uniform(-1, 1, (60, 70)))).astype(np.complex64)
    positions = np.stack([rng.uniform(12, 58, 40), rng.uniform(12, 48, 40)], axis=1)
    scan = simulate(probe=probe, object=obj, positions=positions, seed=0)
    assert scan.N == N and scan.n_points == 40 and scan.metadata["positions"] == "given"
    np.testing.assert_array_equal(scan.xcoords, positions[:, 0])  # used as given, not re-centred
    np.testing.assert_array_equal(scan.probe, probe)
    grouped = grouped_data(scan, GroupingConfig(N=N, gridsize=2, neighbor_count=4, seed=0))
    Y, X = grouped["Y"], grouped["diffraction"]
    far_field = np.abs(np.fft.fftshift(np.fft.fft2(probe[None, :, :, None] * Y, axes=(1, 2), norm="ortho"),
                                       axes=(1, 2)))
    np.testing.assert_allclose(far_field, X, rtol=1e-3, atol=1e-4 * X.max())
    with pytest.raises(SimulationError, match="positions= are pixels of a given object: pass object="):
        simulate(probe=probe, positions=positions)
    with pytest.raises(SimulationError, match=r"probe array of shape \(16, 8\); expected \(N, N\)"):
        simulate(probe=np.ones((16, 8), np.complex64), object=obj, positions=positions)
