"""normalize.py: PtychoPINN's probe rules and ptycho_torch's per-experiment constants, checked
against hand-computed values (the fixture comparison is in test_ptychopinn_parity.py)."""

import math

import numpy as np
import pytest

from ptychodata import ScanDataError, simulate
from ptychodata.normalize import (
    normalize_probe,
    pattern_amplitude_sums,
    pattern_energies,
    physics_scaling_constant,
    rms_scaling_constant,
    x_scale,
)


def test_tf_rule_averages_the_masked_probe_over_all_pixels():
    """N=8: the disk d < N//4 = 2 around the half-pixel-shifted centre holds 12 of the 64 pixels,
    so a uniform |P| = 2 gives factor 4 · 2 · 12/64 = 1.5 (PtychoPINN's own parity example)."""
    probe = np.full((8, 8), 2.0, np.complex64)
    normalised, factor = normalize_probe(probe)
    assert factor == pytest.approx(1.5, rel=1e-12)
    assert normalised.dtype == np.complex64 and normalised.shape == (8, 8)
    np.testing.assert_allclose(normalised, np.full((8, 8), 2 / 1.5), rtol=1e-7)


def test_tf_rule_ignores_the_probe_outside_the_disk():
    probe = np.ones((16, 16), np.complex64)
    centred = np.arange(16) - 8 + 0.5
    outside = np.hypot(centred[:, None], centred[None, :]) >= 4
    bright_outside = np.where(outside, 100.0, 1.0).astype(np.complex64)
    assert normalize_probe(bright_outside)[1] == pytest.approx(normalize_probe(probe)[1], rel=1e-12)
    # exactly the pixels with d < 4, d from the half-pixel-shifted centre, count
    assert normalize_probe(probe)[1] == pytest.approx(4 * (~outside).sum() / 256, rel=1e-12)


def test_ptycho_torch_rule_is_the_plain_mean_amplitude():
    rng = np.random.default_rng(0)
    probe = (rng.normal(size=(16, 16)) + 1j * rng.normal(size=(16, 16))).astype(np.complex64)
    normalised, factor = normalize_probe(probe, 3.0, rule="ptycho_torch")
    assert factor == pytest.approx(3.0 * np.abs(probe.astype(np.complex128)).mean(), rel=1e-12)
    np.testing.assert_allclose(normalised, probe / factor, rtol=1e-6)
    assert factor != pytest.approx(normalize_probe(probe, 3.0)[1], rel=1e-3)


@pytest.mark.parametrize(
    "probe, kwargs, error, message",
    [
        (np.zeros((8, 8), np.complex64), {}, ScanDataError, r"mean amplitude over the disk d < N//4 = 2 is 0.0"),
        (np.ones((8, 6), np.complex64), {}, ScanDataError, r"probe: shape \(8, 6\); expected \(N, N\)"),
        (np.ones((8, 8), np.complex64), {"rule": "torch"}, ValueError, r"rule='torch'; expected one of"),
        (np.ones((8, 8), np.complex64), {"probe_scale": 0.0}, ValueError, r"probe_scale=0.0; expected a positive"),
    ],
)
def test_probe_errors(probe, kwargs, error, message):
    with pytest.raises(error, match=message):
        normalize_probe(probe, **kwargs)


def test_ptycho_torch_constants_from_per_pattern_sums():
    scan = simulate(n_points=30, N=16, seed=2)
    amplitudes = np.asarray(scan.diffraction, np.float64)
    energies = pattern_energies(scan.diffraction)
    sums = pattern_amplitude_sums(scan.diffraction)
    np.testing.assert_allclose(sums, amplitudes.sum(axis=(1, 2)), rtol=1e-12)
    rms = rms_scaling_constant(energies, N=16)
    assert rms == pytest.approx(math.sqrt(256 / (amplitudes**2).sum(axis=(1, 2)).mean()), rel=1e-12)
    assert physics_scaling_constant(sums) == pytest.approx(1 / amplitudes.sum(axis=(1, 2)).mean(), rel=1e-12)
    # each pattern grouped once: the §5 scale targets (N/2)² instead of N², so it is half of rms
    assert rms == pytest.approx(2 * x_scale(scan.diffraction, np.arange(30)[:, None]), rel=1e-12)


def test_amplitude_sums_of_some_patterns_in_chunks(monkeypatch):
    import ptychodata.normalize as normalize

    monkeypatch.setattr(normalize, "_CHUNK_BYTES", 3 * 16 * 16 * 4)  # three patterns per chunk
    diffraction = np.random.default_rng(1).uniform(0, 1, (10, 16, 16)).astype(np.float32)
    indices = np.array([9, 0, 4, 4, 7])
    np.testing.assert_allclose(
        pattern_amplitude_sums(diffraction, indices), diffraction[indices].sum(axis=(1, 2), dtype=np.float64)
    )


@pytest.mark.parametrize(
    "function, values, message",
    [
        (lambda v: rms_scaling_constant(v, N=8), np.zeros(4), r"energies \(Σ A²\): mean 0.0; expected a positive"),
        (physics_scaling_constant, np.zeros(3), r"amplitude sums \(Σ A\): mean 0.0; expected a positive"),
        (physics_scaling_constant, np.zeros((2, 2)), r"amplitude sums \(Σ A\): shape \(2, 2\); expected \(M,\)"),
        (physics_scaling_constant, np.array([]), r"shape \(0,\); expected \(M,\) with M >= 1"),
    ],
)
def test_constant_errors(function, values, message):
    with pytest.raises(ScanDataError, match=message):
        function(values)


@pytest.mark.parametrize("shape", [(300, 64, 64), (70, 100, 100), (3, 256, 256), (0, 8, 8)])
def test_energies_and_sums_in_one_pass_equal_float64_sums(shape, monkeypatch):
    from ptychodata import normalize
    from ptychodata.normalize import checked_energies_and_sums

    monkeypatch.setattr(normalize, "_BLOCK_BYTES", 64 << 10)  # several blocks, a ragged last one
    chunk = np.random.default_rng(0).random(shape, dtype=np.float32) * 50
    energies, sums = checked_energies_and_sums(chunk, np.arange(len(chunk)))
    wide = chunk.astype(np.float64).reshape(len(chunk), math.prod(shape[1:]))
    np.testing.assert_allclose(energies, (wide**2).sum(axis=1), rtol=1e-13)
    np.testing.assert_allclose(sums, wide.sum(axis=1), rtol=1e-13)
    assert energies.dtype == sums.dtype == np.float64


@pytest.mark.parametrize(
    ("value", "dtype"), [(np.nan, np.float32), (np.inf, np.float32), (-0.5, np.float32), (-3, np.int32)]
)
def test_energies_and_sums_name_the_first_bad_pattern(value, dtype, monkeypatch):
    from ptychodata import normalize
    from ptychodata.normalize import checked_energies_and_sums

    monkeypatch.setattr(normalize, "_BLOCK_BYTES", 1 << 10)
    chunk = np.ones((40, 8, 8), dtype)
    chunk[23, 4, 5] = value
    chunk[31, 0, 0] = value
    with pytest.raises(ScanDataError, match=r"scan\.npz: pattern 1023 holds NaN, Inf or negative amplitudes"):
        checked_energies_and_sums(chunk, np.arange(1000, 1040), where="scan.npz: ")
    unsigned = np.full((5, 8, 8), 7, np.uint16)
    energies, sums = checked_energies_and_sums(unsigned, np.arange(5))
    assert energies.tolist() == [49.0 * 64] * 5 and sums.tolist() == [7.0 * 64] * 5
