"""The Store object: what it serves, and what it refuses when opened."""

import numpy as np
import pytest

from ptychodata import GroupingConfig, prepare, simulate
from ptychodata.errors import GroupIndexError
from ptychodata.store import Store, remove_store


@pytest.fixture
def store(tmp_path):
    scan = simulate(n_points=60, N=16, seed=1)
    return prepare(scan, GroupingConfig(gridsize=2, neighbor_count=6, seed=0), cache_dir=tmp_path, progress=False)


@pytest.mark.parametrize(
    ("groups", "message"),
    [([-1, 3], r"groups must lie in \[0, 60\); got -1\.\.3"), ([[0, 1]], r"groups must be 1-D integers; got shape \(1, 2\)"),
     ([0.5], r"groups must be 1-D integers; got shape \(1,\) float64")],
)
def test_a_bad_selection_of_groups_is_refused_and_the_build_released(store, groups, message):
    path = store.path
    frames_store = path.parent.parent
    store.close()
    with pytest.raises(GroupIndexError, match=message):
        Store(path, groups=groups)
    remove_store(frames_store)  # no reader left holding the build
    assert not frames_store.exists()


def test_a_subset_serves_the_groups_it_names(store):
    part = store.subset([5, 2])
    np.testing.assert_array_equal(part.group_indices, [5, 2])
    np.testing.assert_array_equal(part.batch([1, 0], reuse=False)["X"], store.batch([2, 5], reuse=False)["X"])
