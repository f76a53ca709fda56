import numpy as np
import pytest


@pytest.fixture(scope="module")
def small_scan():
    """A noise-free 64-point scan at N=16 with an object, made by the library's simulator."""
    from ptychodata import simulate

    return simulate(n_points=64, N=16, seed=7)


@pytest.fixture(scope="module")
def scan_file(tmp_path_factory, small_scan):
    path = tmp_path_factory.mktemp("scans") / "scan.npz"
    small_scan.save(path)
    return path


@pytest.fixture
def rng():
    return np.random.default_rng(0)
