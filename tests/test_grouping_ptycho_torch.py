"""ptycho_torch's grouping rule (GroupingConfig(method="ptycho_torch")): its properties."""

import numpy as np
import pytest
from scipy.spatial import cKDTree

from ptychodata import GroupingConfig, GroupingError, group, grouped_data, simulate
from ptychodata.grouping_ptycho_torch import PtychoTorchRule, bounded_points, ptycho_torch_groups


def raster(n=12, step=2.0, jitter=0.2, seed=0):
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.arange(n) * step, np.arange(n) * step)
    return np.stack([x.ravel(), y.ravel()], axis=1) + rng.uniform(-jitter, jitter, (n * n, 2))


def test_bounds_are_fractions_of_each_axis_range_inclusive():
    positions = np.stack([np.arange(11.0), np.arange(11.0)[::-1] * 2], axis=1)  # x 0..10, y 20..0
    np.testing.assert_array_equal(bounded_points(positions, (0.1, 0.9), (0.0, 1.0)), np.arange(1, 10))
    np.testing.assert_array_equal(bounded_points(positions, (0.0, 1.0), (0.5, 1.0)), np.arange(0, 6))
    assert bounded_points(positions, (0.0, 1.0), (0.0, 1.0)).dtype == np.int64


def test_nearest_draws_from_the_centre_and_its_k_nearest_bounded_points():
    positions = raster()
    rule = PtychoTorchRule(n_subsample=5)
    result = ptycho_torch_groups(positions, C=4, K=6, rule=rule, rng=np.random.default_rng(1))
    centres = bounded_points(positions, rule.x_bounds, rule.y_bounds)
    assert result.groups.shape == (len(centres) * 5, 4) and result.groups.dtype == np.int64
    # centre-major: n_subsample consecutive rows per centre
    np.testing.assert_array_equal(result.centres, np.repeat(centres, 5))
    assert np.isin(result.groups, centres).all()  # members come from the bounded points only
    _, nearest = cKDTree(positions[centres]).query(positions[centres], k=7)
    candidates = centres[nearest]  # the centre and its 6 nearest bounded points
    for row, centre_row in zip(result.groups, np.repeat(np.arange(len(centres)), 5)):
        assert len(set(row)) == 4
        assert set(row) <= set(candidates[centre_row])
    # the centre is a candidate like the others: it is a member in about C/(K+1) = 4/7 of the groups
    holds_centre = (result.groups == result.centres[:, None]).any(axis=1).mean()
    assert 0.45 < holds_centre < 0.7


def test_quadrant_groups_are_ordered_tl_tr_bl_br():
    positions = raster(n=14)
    rule = PtychoTorchRule(neighbor_function="4_quadrant", n_subsample=3, max_neighbor_distance=4.0)
    result = ptycho_torch_groups(positions, C=4, K=6, rule=rule, rng=np.random.default_rng(2))
    delta = positions[result.groups] - positions[result.centres][:, None, :]  # (B, 4, 2)
    is_centre = result.groups == result.centres[:, None]
    assert (is_centre.sum(axis=1) <= 1).all()
    assert not is_centre.all(axis=0).any() and is_centre.any()
    dx, dy = delta[..., 0], delta[..., 1]
    # ptycho_torch's +y-up names: T = dy > 0, B = dy < 0; L = dx < 0, R = dx > 0
    expected = [(dx[:, 0] < 0) & (dy[:, 0] > 0), (dx[:, 1] > 0) & (dy[:, 1] > 0),
                (dx[:, 2] < 0) & (dy[:, 2] < 0), (dx[:, 3] > 0) & (dy[:, 3] < 0)]
    for column, ok in enumerate(expected):
        assert (ok | is_centre[:, column]).all(), column
    distance = np.hypot(dx, dy)
    assert (distance[~is_centre] < 4.0).all()


def test_quadrant_rule_drops_centres_alone_in_two_quadrants():
    positions = raster(n=6, jitter=0.0)  # exact grid: a corner sees neighbours in one quadrant only
    rule = PtychoTorchRule(neighbor_function="4_quadrant", n_subsample=40, x_bounds=(0.0, 1.0),
                           y_bounds=(0.0, 1.0), max_neighbor_distance=3.0)
    result = ptycho_torch_groups(positions, C=4, K=6, rule=rule, rng=np.random.default_rng(0))
    corner, edge, interior = 0, 2, 6 * 2 + 2
    assert corner not in result.centres and edge not in result.centres and interior in result.centres
    # On an exact grid only the diagonal neighbours (distance 2.83 < 3; dx or dy = 0 is no quadrant)
    # are candidates: one per quadrant, beside the centre itself.
    groups = result.groups[result.centres == interior]
    diagonal = interior + np.array([6 - 1, 6 + 1, -6 - 1, -6 + 1])  # TL, TR, BL, BR in +y-up terms
    assert ((groups == diagonal) | (groups == interior)).all()
    assert ((groups == interior).sum(axis=1) <= 1).all()
    assert (groups == diagonal).all(axis=1).any() and (groups == interior).any()


def test_group_with_method_ptycho_torch_is_deterministic_without_seed():
    positions = raster()
    config = GroupingConfig(gridsize=2, neighbor_count=6, method="ptycho_torch")
    first = group(positions, config)
    np.testing.assert_array_equal(first, group(positions, config))
    direct = ptycho_torch_groups(positions, C=4, K=6, rule=PtychoTorchRule(), rng=np.random.default_rng(0))
    np.testing.assert_array_equal(first, direct.groups)
    other = group(positions, GroupingConfig(gridsize=2, neighbor_count=6, method="ptycho_torch", seed=5))
    assert first.shape == other.shape and not np.array_equal(first, other)


def test_gridsize_1_repeats_each_bounded_point():
    positions = raster(n=5)
    config = GroupingConfig(method="ptycho_torch", ptycho_torch={"n_subsample": 3})
    groups = group(positions, config)
    centres = bounded_points(positions, (0.1, 0.9), (0.1, 0.9))
    np.testing.assert_array_equal(groups, np.repeat(centres, 3)[:, None])


def test_grouped_data_and_config_round_trip():
    scan = simulate(n_points=100, N=16, seed=3, pattern="raster")
    config = GroupingConfig(gridsize=2, neighbor_count=6, method="ptycho_torch",
                            ptycho_torch=PtychoTorchRule(n_subsample=2, x_bounds=(0.2, 0.8)))
    grouped = grouped_data(scan, config, with_Y=False)
    assert grouped["X_full"].shape[0] == 2 * len(bounded_points(scan.positions, (0.2, 0.8), (0.1, 0.9)))
    assert GroupingConfig.from_dict(config.to_dict()) == config
    assert "method" not in config.to_legacy_dict()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "torch"}, r"method='torch'; expected one of \{'sample_then_group', 'ptycho_torch'\}"),
        ({"ptycho_torch": {"n_subsample": 2}}, "ptycho_torch settings given with method='sample_then_group'"),
        ({"method": "ptycho_torch", "n_groups": 10}, r"n_groups set with method='ptycho_torch'.*n_subsample"),
        ({"method": "ptycho_torch", "sequential_sampling": True}, "sequential_sampling set with method='ptycho_torch'"),
        ({"method": "ptycho_torch", "gridsize": 2, "neighbor_count": 2}, r"K >= 3 is needed"),
        ({"method": "ptycho_torch", "gridsize": 3, "ptycho_torch": {"neighbor_function": "4_quadrant"}},
         "makes groups of 4; gridsize=3, expected 2"),
        ({"method": "ptycho_torch", "ptycho_torch": {"neighbor_function": "Min_dist"}}, "'Min_dist' is not offered"),
        ({"method": "ptycho_torch", "ptycho_torch": {"x_bounds": (0.9, 0.1)}}, r"x_bounds=\(0.9, 0.1\); expected"),
        ({"method": "ptycho_torch", "ptycho_torch": {"K_quadrant": 4}}, "K_quadrant=4; expected > 4"),
        ({"method": "ptycho_torch", "ptycho_torch": {"nsub": 4}}, r"unknown ptycho_torch grouping setting\(s\) \['nsub'\]"),
    ],
)
def test_config_errors(kwargs, message):
    with pytest.raises(GroupingError, match=message):
        GroupingConfig(**kwargs)


def test_no_point_inside_the_bounds_or_too_few():
    positions = np.array([[0.0, 0.0], [10.0, 10.0], [0.0, 10.0], [10.0, 0.0]])
    with pytest.raises(GroupingError, match=r"no scan point lies inside x_bounds=\(0.4, 0.6\)"):
        group(positions, GroupingConfig(method="ptycho_torch", ptycho_torch={"x_bounds": (0.4, 0.6)}))
    with pytest.raises(GroupingError, match="only 2 scan points lie inside the bounds, fewer than C=4"):
        group(positions, GroupingConfig(gridsize=2, method="ptycho_torch",
                                        ptycho_torch={"x_bounds": (0.0, 1.0), "y_bounds": (0.0, 0.5)}))
