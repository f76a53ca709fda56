import itertools
import math

import numpy as np
import pytest
from scipy.spatial import cKDTree

from ptychodata import GroupingConfig, GroupingError, ScanDataError, group
from ptychodata.errors import ParameterError
from ptychodata.grouping import _oversample, neighbour_pools, raster_order


def grid_positions(side: int, step: float = 5.0, offset: float = 0.37) -> np.ndarray:
    rows, cols = np.mgrid[:side, :side]
    return np.stack([cols.ravel() * step + offset, rows.ravel() * step + offset], axis=1)


def random_positions(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 100, size=(n, 2))


def test_gridsize1_groups_are_distinct_seeds():
    positions = random_positions(200)
    groups = group(positions, GroupingConfig(n_groups=50, seed=1))
    assert groups.shape == (50, 1) and groups.dtype == np.int64
    assert len(np.unique(groups)) == 50


def test_default_is_one_group_per_point():
    positions = random_positions(100)
    groups = group(positions, GroupingConfig(gridsize=2, neighbor_count=6, seed=0))
    assert groups.shape == (100, 4)
    assert all(len(set(row)) == 4 for row in groups.tolist())  # 4 distinct members, not a seed repeated
    _, nearest = cKDTree(positions).query(positions, k=7)  # each seed's pool: itself and K = 6 neighbours
    pools = [set(pool) for pool in nearest.tolist()]
    assert all(any(set(row) <= pool for pool in pools) for row in groups.tolist())  # neighbours, not far points


def test_sequential_sampling_takes_first_points_as_seeds():
    positions = random_positions(100)
    groups = group(positions, GroupingConfig(n_groups=10, sequential_sampling=True))
    np.testing.assert_array_equal(groups[:, 0], np.arange(10))


def test_members_are_distinct_and_within_the_k_nearest_of_their_seed():
    positions = random_positions(500, seed=3)
    config = GroupingConfig(gridsize=2, neighbor_count=7, n_groups=300, seed=5)
    groups = group(positions, config)
    assert groups.shape == (300, 4)
    assert all(len(set(row)) == 4 for row in groups.tolist())
    tree = cKDTree(positions)
    # Each group's members all lie among the 7 nearest other points of some seed.
    _, nearest = tree.query(positions, k=8)
    for row in groups:
        assert any(set(row) <= set(nearest[s, 1:]) for s in range(len(positions)))


def test_pool_excludes_the_seed_and_holds_the_k_nearest():
    positions = grid_positions(6)
    seeds = np.arange(36)
    pools = neighbour_pools(positions, seeds, pool_size=4, C=4)
    assert pools.shape == (36, 4)
    assert not (pools == seeds[:, None]).any()
    distances = np.linalg.norm(positions[pools] - positions[seeds, None], axis=2)
    all_distances = np.linalg.norm(positions[None] - positions[:, None], axis=2)
    np.fill_diagonal(all_distances, np.inf)
    np.testing.assert_allclose(np.sort(distances, axis=1), np.sort(all_distances, axis=1)[:, :4])
    interior = 1 * 6 + 1
    assert set(pools[interior]) == {interior - 1, interior + 1, interior - 6, interior + 6}


def test_seed_joins_its_pool_when_too_few_other_points():
    positions = random_positions(4)
    pools = neighbour_pools(positions, np.arange(4), pool_size=6, C=4)
    assert pools.shape == (4, 4)
    for seed, pool in enumerate(pools):
        assert set(pool) == set(range(4))
        assert seed in pool


def test_duplicate_positions_do_not_put_the_seed_in_its_pool():
    positions = np.zeros((10, 2))
    pools = neighbour_pools(positions, np.arange(10), pool_size=3, C=2)
    assert not (pools == np.arange(10)[:, None]).any()


def test_same_seed_identical_groups_and_global_rng_untouched():
    positions = random_positions(300)
    config = GroupingConfig(gridsize=2, neighbor_count=6, n_groups=100, seed=42)
    np.random.seed(123)
    state = np.random.get_state()
    first = group(positions, config)
    second = group(positions, config)
    after = np.random.get_state()
    np.testing.assert_array_equal(first, second)
    assert state[0] == after[0] and np.array_equal(state[1], after[1]) and state[2:] == after[2:]
    other = group(positions, GroupingConfig(gridsize=2, neighbor_count=6, n_groups=100, seed=43))
    assert not np.array_equal(first, other)


def test_member_choice_is_uniform_over_the_pool():
    positions = grid_positions(3)  # with K=8 the centre point 4 pools all 8 others
    counts = np.zeros(9)
    for seed in range(400):
        config = GroupingConfig(gridsize=2, neighbor_count=8, n_groups=5, sequential_sampling=True, seed=seed)
        counts += np.bincount(group(positions, config)[4], minlength=9)
    assert counts[4] == 0
    fractions = np.delete(counts, 4) / 400
    assert np.all(np.abs(fractions - 0.5) < 0.1)  # each of 8 pool members is in a 4-subset half the time


def test_member_order_is_random_by_default():
    positions = grid_positions(10)
    groups = group(positions, GroupingConfig(gridsize=2, neighbor_count=4, seed=0))
    sorted_rows = (np.diff(groups, axis=1) > 0).all(axis=1)
    assert 0 < sorted_rows.mean() < 0.5


def test_raster_order_puts_rows_by_y_then_x():
    positions = grid_positions(10)
    groups = group(positions, GroupingConfig(gridsize=2, neighbor_count=4, seed=0, order="raster"))
    x, y = positions[groups, 0], positions[groups, 1]
    assert (y[:, :2].max(axis=1) <= y[:, 2:].min(axis=1)).all()
    assert (x[:, 0] <= x[:, 1]).all() and (x[:, 2] <= x[:, 3]).all()
    # raster_order is a permutation of each row
    np.testing.assert_array_equal(np.sort(raster_order(groups, positions), axis=1), np.sort(groups, axis=1))


def test_oversampling_refused_unless_enabled():
    positions = random_positions(20)
    with pytest.raises(GroupingError, match="enable_oversampling"):
        group(positions, GroupingConfig(gridsize=2, neighbor_count=6, n_groups=50, seed=0))


def test_oversampling_draws_distinct_seed_subset_pairs():
    positions = random_positions(20)
    config = GroupingConfig(gridsize=2, neighbor_count=6, n_groups=200, seed=0, enable_oversampling=True)
    groups = group(positions, config)
    assert groups.shape == (200, 4)
    assert all(len(set(row)) == 4 for row in groups.tolist())
    pools = neighbour_pools(positions, np.arange(20), 6, 4)
    for row in groups.tolist():  # every group is a subset of some seed's pool
        assert any(set(row) <= set(pool) for pool in pools.tolist())


def test_oversampled_pairs_are_distinct():
    pools = np.arange(20 * 6).reshape(20, 6)  # disjoint pools: a subset names its seed
    groups = _oversample(pools, 290, 4, np.random.default_rng(0))  # of 20 * C(6, 4) = 300 pairs
    assert len({frozenset(row) for row in groups.tolist()}) == 290


def test_oversampling_is_unbiased_over_pairs():
    positions = random_positions(6, seed=2)
    config = GroupingConfig(gridsize=2, neighbor_count=5, n_groups=6 * math.comb(5, 4), seed=1,
                            enable_oversampling=True)
    groups = group(positions, config)
    # asking for all distinct pairs returns each (seed, subset) exactly once
    pools = neighbour_pools(positions, np.arange(6), 5, 4)
    expected = sorted(tuple(sorted(subset)) for pool in pools for subset in itertools.combinations(pool, 4))
    assert sorted(tuple(sorted(row)) for row in groups.tolist()) == expected


def test_oversampling_beyond_distinct_pairs_warns():
    positions = random_positions(5)
    config = GroupingConfig(gridsize=2, neighbor_count=4, n_groups=100, seed=0, enable_oversampling=True)
    with pytest.warns(UserWarning, match="distinct"):
        groups = group(positions, config)
    assert groups.shape == (100, 4)


def test_errors_k_below_c_and_too_few_points():
    with pytest.raises(GroupingError, match="neighbor_count K=3 < C"):
        GroupingConfig(gridsize=2, neighbor_count=3)
    with pytest.raises(ScanDataError, match="'xcoords'.*3 points, fewer than C"):
        group(random_positions(3), GroupingConfig(gridsize=2, neighbor_count=4))
    with pytest.raises(ParameterError, match="gridsize=0; expected a positive integer"):
        GroupingConfig(gridsize=0)
    with pytest.raises(GroupingError, match="order"):
        GroupingConfig(order="spiral")


def test_config_legacy_round_trip():
    config = GroupingConfig(N=64, gridsize=2, neighbor_count=7, n_groups=1000, seed=3, nphotons=1e9,
                            enable_oversampling=True, neighbor_pool_size=9)
    legacy = config.to_legacy_dict()
    assert legacy["N"] == 64 and legacy["gridsize"] == 2 and legacy["neighbor_count"] == 7
    assert legacy["n_groups"] == 1000 and legacy["nphotons"] == 1e9 and legacy["subsample_seed"] == 3
    assert legacy["enable_oversampling"] is True and legacy["neighbor_pool_size"] == 9
    assert None not in legacy.values()
    assert GroupingConfig.from_legacy_dict({**legacy, "nepochs": 50, "output_prefix": "x"}) == GroupingConfig(
        **{**config.to_dict(), "order": "random"}
    )
    assert "n_groups" not in GroupingConfig().to_legacy_dict()
    assert GroupingConfig.from_dict(config.to_dict()) == config


def test_config_n_must_match_scan(small_scan):
    with pytest.raises(GroupingError, match="N=32"):
        group(small_scan, GroupingConfig(N=32))


def test_sequential_sampling_without_seed_is_deterministic():
    """PtychoPINN fixes the seed at 0 for sequential sampling; so do we (member draw at C > 1)."""
    positions = np.random.default_rng(4).uniform(0, 50, (60, 2))
    config = GroupingConfig(gridsize=2, neighbor_count=7, n_groups=20, sequential_sampling=True)
    first, second = group(positions, config), group(positions, config)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first, group(positions, GroupingConfig(**{**config.to_dict(), "seed": 0})))
    other = group(positions, GroupingConfig(**{**config.to_dict(), "seed": 1}))
    assert not np.array_equal(first, other)  # the member draw does depend on the seed


@pytest.mark.parametrize(
    "settings",
    [
        {"gridsize": 2, "neighbor_count": 7},
        {"gridsize": 2, "neighbor_count": 7, "n_groups": 150, "order": "raster"},
        {"gridsize": 3, "neighbor_count": 12, "neighbor_pool_size": 15},
        {"gridsize": 2, "neighbor_count": 5, "n_groups": 900, "enable_oversampling": True},
        {"gridsize": 2, "neighbor_count": 6, "n_groups": 200, "sequential_sampling": True},
    ],
)
def test_groups_do_not_depend_on_the_seed_chunk_size(monkeypatch, settings):
    """Chunked neighbour queries and member draws give the groups of one whole-table pass."""
    from ptychodata import grouping

    positions = random_positions(400)
    config = GroupingConfig(seed=7, **settings)
    whole = group(positions, config)  # 400 seeds < one chunk
    monkeypatch.setattr(grouping, "_SEED_CHUNK", 13)
    chunked = group(positions, config)
    assert whole.dtype == chunked.dtype == np.int64
    np.testing.assert_array_equal(chunked, whole)


def test_pool_indices_are_int32_internally_and_int64_when_returned():
    from ptychodata.grouping import _index_dtype

    assert _index_dtype(10**6) == np.int32
    assert _index_dtype(2**31) == np.int64
    assert neighbour_pools(random_positions(50), np.arange(50), 4, 4).dtype == np.int64


def test_median_neighbour_step_is_exact_on_a_raster_with_repeats_and_sampled_points():
    from ptychodata.grouping import median_neighbour_step

    rows, cols = np.divmod(np.arange(150 * 150), 150)  # 22 500 points: the median is over a sample
    x, y = cols * 3.0 + 0.25, rows * 1.5 - 7.0
    assert median_neighbour_step(x, y) == pytest.approx(1.5)
    # Each position measured twice (a repeated scan): the distance is to another position.
    assert median_neighbour_step(np.r_[x, x], np.r_[y, y]) == pytest.approx(1.5)
    assert median_neighbour_step(np.array([4.0]), np.array([2.0])) is None
    assert median_neighbour_step(np.full(5, 1.0), np.full(5, 1.0)) is None
    jittered = np.random.default_rng(0).normal(0, 1e-3, (2, x.size))
    assert median_neighbour_step(x + jittered[0], y + jittered[1]) == pytest.approx(1.5, abs=0.01)


def test_more_neighbours_than_other_points_is_refused_by_name():
    with pytest.raises(GroupingError, match=r"neighbor_count K=50, but a point of this 10-point scan has only 9 others"):
        group(random_positions(10), GroupingConfig(gridsize=3, neighbor_count=50))
    assert group(random_positions(10), GroupingConfig(gridsize=3, neighbor_count=9, seed=0)).shape == (10, 9)
