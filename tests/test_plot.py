import numpy as np
import pytest

from ptychodata import GroupingConfig, ScanData, grouped_data
from ptychodata.plot import plot_groups, plot_scan

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def read_png(path):
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == PNG_MAGIC
    return imread(path)


def test_plot_scan_writes_a_png(small_scan, tmp_path):
    path = plot_scan(small_scan, tmp_path / "nested" / "scan.png", n_patterns=3)
    assert path == tmp_path / "nested" / "scan.png"
    image = read_png(path)
    assert image.ndim == 3 and image.shape[0] > 400 and image.shape[1] > 800
    assert image[..., :3].std() > 0.05  # not a blank canvas


def test_plot_groups_writes_a_png(small_scan, tmp_path):
    grouped = grouped_data(small_scan, GroupingConfig(gridsize=2, neighbor_count=6, seed=0))
    image = read_png(plot_groups(grouped, tmp_path / "groups.png", n_groups=2))
    assert image[..., :3].std() > 0.05


def test_plots_without_object_and_with_few_points(tmp_path):
    """No object (fewer panels), fewer points than patterns asked for, gridsize 1 (one channel)."""
    rng = np.random.default_rng(0)
    scan = ScanData.from_arrays(
        diffraction=rng.random((3, 8, 8), dtype=np.float32),
        xcoords=[0.0, 2.0, 4.0],
        ycoords=[1.0, 1.0, 3.0],
        probe=np.ones((8, 8), np.complex64),
    )
    assert read_png(plot_scan(scan, tmp_path / "scan.png", n_patterns=4)).std() > 0
    grouped = grouped_data(scan, GroupingConfig(gridsize=1, seed=0))
    assert grouped["objectGuess"] is None
    assert read_png(plot_groups(grouped, tmp_path / "groups.png")).std() > 0


def test_plot_arguments_are_checked(small_scan, tmp_path):
    with pytest.raises(ValueError, match="n_patterns"):
        plot_scan(small_scan, tmp_path / "x.png", n_patterns=0)
