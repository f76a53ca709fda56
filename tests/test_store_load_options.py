"""Load options that mean the same make one store; unknown ones are refused by name."""

import numpy as np
import pytest

from ptychodata import GroupingConfig
from ptychodata.errors import ParameterError
from ptychodata.store import prepare


@pytest.fixture
def counts_file(tmp_path):
    rng = np.random.default_rng(2)
    rows, cols = np.mgrid[:5, :5]
    patterns = rng.poisson(20.0, (25, 20, 20)).astype(np.uint16)
    patterns[:, 9:11, 9:11] += 400
    path = tmp_path / "counts.npz"
    np.savez(path, diffraction=patterns, xcoords=cols.ravel() * 3.0 + 10, ycoords=rows.ravel() * 3.0 + 10)
    return path


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ({"crop": 16, "center": (10, 10)}, {"crop": 16.0, "center": [10.0, 10.0]}),
        ({}, {"bin": 1, "probe_modes": "first", "clip_negative": None, "transpose": False}),
        ({"mask": np.ones((20, 20), bool)}, {"mask": np.ones((20, 20), np.uint8)}),
    ],
)
def test_spellings_of_the_same_options_open_the_same_build(tmp_path, counts_file, a, b):
    config = GroupingConfig(gridsize=1, neighbor_count=4, seed=0)
    with pytest.warns(UserWarning):
        first = prepare(counts_file, config, cache_dir=tmp_path / "cache", load_options=a, progress=False)
    second = prepare(counts_file, config, cache_dir=tmp_path / "cache", load_options=b, progress=False)
    try:
        assert second.path == first.path
        assert second.frames_build_id == first.frames_build_id
    finally:
        first.close()
        second.close()


def test_other_options_make_another_build(tmp_path, counts_file):
    config = GroupingConfig(gridsize=1, neighbor_count=4, seed=0)
    with pytest.warns(UserWarning):
        whole = prepare(counts_file, config, cache_dir=tmp_path, progress=False)
        cropped = prepare(counts_file, config, cache_dir=tmp_path, load_options={"crop": 16}, progress=False)
    try:
        assert cropped.frames_build_id != whole.frames_build_id and cropped.N == 16 and whole.N == 20
    finally:
        whole.close()
        cropped.close()


def test_an_unknown_load_option_is_refused_naming_it(tmp_path, counts_file):
    with pytest.raises(ParameterError, match=r"load_options: unknown option\(s\) 'cropp'"):
        prepare(counts_file, GroupingConfig(), cache_dir=tmp_path / "cache", load_options={"cropp": 16}, progress=False)
    assert not any((tmp_path / "cache").rglob("frames-*"))
