"""Deprecated Store members keep working, warn, and say where the same values are."""

import numpy as np
import pytest

from ptychodata import GroupingConfig, prepare, simulate


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    scan = simulate(n_points=60, N=16, seed=1, pattern="jittered")
    config = GroupingConfig(gridsize=2, neighbor_count=6, seed=0)
    return prepare(scan, config, cache_dir=tmp_path_factory.mktemp("cache"), progress=False).subset(np.arange(10, 20))


def test_group_start_centres_warns_and_equals_the_nominal_centres_of_grouped_data(store):
    with pytest.warns(DeprecationWarning, match=r"Store\.group_start_centres is deprecated.*grouped_data\(\)"):
        centres = store.group_start_centres
    assert centres.shape == (10, 2)
    np.testing.assert_array_equal(centres, store.grouped_data()["coords_start_offsets"][:, 0, :, 0])
    batch = store.batch(np.arange(10), layout="ptycho_torch", reuse=False)
    np.testing.assert_array_equal(batch["coords_start_center"][:, 0, 0, :], centres.astype(np.float32))


def test_group_start_relative_warns_and_equals_the_nominal_offsets_of_grouped_data(store):
    with pytest.warns(DeprecationWarning, match=r"Store\.group_start_relative is deprecated"):
        relative = store.group_start_relative
    assert relative.shape == (10, store.C, 2)
    np.testing.assert_array_equal(relative, store.grouped_data()["coords_start_relative"][:, 0].transpose(0, 2, 1))
