"""ptycho_torch's own grouping rule, so a ptycho_torch user can reproduce the kind of groups
its ``PtychoDataset`` builds (``GroupingConfig(method="ptycho_torch")``).

The rule, as ptycho_torch defines it (``DataConfig`` names kept):

1. **Bounds.** Only scan points inside ``x_bounds`` × ``y_bounds`` — fractions of each
   axis' coordinate range, inclusive — are centres (ptycho_torch drops the scan's edges).
2. **One centre per bounded point**, in index order, each giving ``n_subsample`` groups in
   consecutive rows: B = (number of centres) · n_subsample. There is no ``n_groups``.
3. ``neighbor_function="Nearest"``: the candidates of a centre are the K + 1 bounded points
   nearest to it, **the centre itself included** (K = ``neighbor_count``, ptycho_torch's
   ``K``); each group is C distinct candidates drawn uniformly, in random order.
4. ``neighbor_function="4_quadrant"`` (C = 4 only): the candidates are the centre's
   ``K_quadrant`` nearest other points of the whole scan with
   ``min_neighbor_distance`` <= d < ``max_neighbor_distance``, sorted into quadrants by
   dx, dy from the centre, with ptycho_torch's +y-up names: TL (dx < 0, dy > 0),
   TR (dx > 0, dy > 0), BL (dx < 0, dy < 0), BR (dx > 0, dy < 0), each limited by the
   ``scan_pattern`` window (``"Isotropic"``: |dx| < 10, dy < 10 above; ``"Rectangular"``:
   |dx| < 12, -0.7 < dy < 2 above and dy < -2 below). The centre joins every quadrant; a
   centre with two or more quadrants holding only itself gives no group. A group is one
   uniform pick per quadrant, **in the order TL, TR, BL, BR**, drawn again until the centre
   occurs at most once.
5. C = 1: each bounded point is a group, repeated ``n_subsample`` times.

Randomness comes from the one ``numpy.random.Generator`` of :func:`~ptychodata.grouping.group`
(seed 0 when no seed is given, as ptycho_torch's planner defaults), so groups are
reproducible but not draw-for-draw identical to ptycho_torch's own random stream.
Everything is vectorised: one batched cKDTree query, then array operations.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

import numpy as np
from scipy.spatial import cKDTree

from ptychodata._runtime import check_int
from ptychodata.errors import GroupingError

__all__ = ["PtychoTorchGroups", "PtychoTorchRule", "bounded_points", "ptycho_torch_groups"]

_QUADRANTS = ("TL", "TR", "BL", "BR")
# scan_pattern -> (x_lower, x_upper, y_lower, y_upper, y_bound), ptycho_torch's quadrant windows
_WINDOWS = {"Isotropic": (0.0, 10.0, 0.0, 10.0, 0.0), "Rectangular": (0.0, 12.0, 0.7, 2.0, 2.0)}
# Redraws of the groups that hold their centre twice; each round redraws only those rows.
_MAX_REDRAWS = 1000


@dataclass(frozen=True)
class PtychoTorchRule:
    """ptycho_torch's grouping settings (its ``DataConfig`` names and defaults).

    Parameters
    ----------
    neighbor_function : {"Nearest", "4_quadrant"}
        ptycho_torch's ``"Min_dist"`` is not offered.
    n_subsample : int
        Groups drawn per centre.
    x_bounds, y_bounds : tuple of float
        (low, high) fractions in [0, 1] of the x (column) and y (row) coordinate range
        whose points are centres.
    K_quadrant : int
        Nearest points searched for quadrant candidates (``"4_quadrant"``).
    min_neighbor_distance, max_neighbor_distance : float
        Quadrant candidates lie at min <= d < max object pixels from the centre.
    scan_pattern : {"Isotropic", "Rectangular"}
        The quadrant window (see the module docstring).
    """

    neighbor_function: Literal["Nearest", "4_quadrant"] = "Nearest"
    n_subsample: int = 7
    x_bounds: tuple[float, float] = (0.1, 0.9)
    y_bounds: tuple[float, float] = (0.1, 0.9)
    K_quadrant: int = 30
    min_neighbor_distance: float = 0.0
    max_neighbor_distance: float = 3.0
    scan_pattern: Literal["Isotropic", "Rectangular"] = "Isotropic"

    def __post_init__(self) -> None:
        if self.neighbor_function not in ("Nearest", "4_quadrant"):
            offered = self.neighbor_function == "Min_dist"
            hint = " (ptycho_torch's 'Min_dist' is not offered)" if offered else ""
            raise GroupingError(
                f"neighbor_function={self.neighbor_function!r}; expected one of "
                f"{{'Nearest', '4_quadrant'}}{hint}"
            )
        if self.scan_pattern not in _WINDOWS:
            raise GroupingError(
                f"scan_pattern={self.scan_pattern!r}; expected one of {{'Isotropic', 'Rectangular'}}"
            )
        for name in ("n_subsample", "K_quadrant"):
            check_int(name, getattr(self, name))
        if self.K_quadrant <= 4:
            raise GroupingError(
                f"K_quadrant={self.K_quadrant}; expected > 4 to find candidates in four quadrants"
            )
        for name in ("x_bounds", "y_bounds"):
            value = tuple(getattr(self, name))
            if len(value) != 2 or not (0.0 <= value[0] < value[1] <= 1.0):
                raise GroupingError(f"{name}={value!r}; expected (low, high) with 0 <= low < high <= 1")
            object.__setattr__(self, name, (float(value[0]), float(value[1])))
        low, high = self.min_neighbor_distance, self.max_neighbor_distance
        if not (low >= 0 and high > low and not math.isnan(high)):
            raise GroupingError(
                f"min_neighbor_distance={low!r}, max_neighbor_distance={high!r}; expected 0 <= min < max"
            )

    @classmethod
    def parse(cls, value: PtychoTorchRule | Mapping[str, Any] | None) -> PtychoTorchRule:
        """A rule from itself, a dict (e.g. :meth:`GroupingConfig.to_dict` output) or None (defaults)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            unknown = set(value) - {f.name for f in fields(cls)}
            if unknown:
                raise GroupingError(f"unknown ptycho_torch grouping setting(s) {sorted(unknown)}")
            return cls(**value)
        raise GroupingError(
            f"ptycho_torch={value!r}; expected a PtychoTorchRule, a dict of its fields, or None"
        )


@dataclass(frozen=True)
class PtychoTorchGroups:
    """Groups made by :func:`ptycho_torch_groups`.

    Attributes
    ----------
    groups : ndarray of shape (B, C), int64
    centres : ndarray of shape (B,), int64
        The centre each group was drawn around (repeated ``n_subsample`` times).
    """

    groups: np.ndarray
    centres: np.ndarray


def bounded_points(
    positions: np.ndarray, x_bounds: tuple[float, float], y_bounds: tuple[float, float]
) -> np.ndarray:
    """Indices of the points inside the bounds, fractions of each axis' range (inclusive).

    Parameters
    ----------
    positions : ndarray of shape (M, 2), columns (x, y)

    Returns
    -------
    ndarray of shape (V,), int64, increasing
    """
    inside = np.ones(len(positions), bool)
    for axis, (low, high) in enumerate((x_bounds, y_bounds)):
        values = positions[:, axis]
        start, stop = float(values.min()), float(values.max())
        span = stop - start if stop > start else 1.0
        lower = start + low * span
        upper = start + high * span if stop > start else lower
        inside &= (values >= lower) & (values <= upper)
    return np.flatnonzero(inside).astype(np.int64)


def ptycho_torch_groups(
    positions: np.ndarray, *, C: int, K: int, rule: PtychoTorchRule, rng: np.random.Generator
) -> PtychoTorchGroups:
    """Group scan points by ptycho_torch's rule (module docstring).

    Parameters
    ----------
    positions : ndarray of shape (M, 2), float64
        Columns (x, y) in object pixels.
    C : int
        gridsize², members per group.
    K : int
        ptycho_torch's ``K``: a ``"Nearest"`` centre draws from itself and its K nearest.
    rule : PtychoTorchRule
    rng : numpy.random.Generator
    """
    centres = bounded_points(positions, rule.x_bounds, rule.y_bounds)
    if len(centres) == 0:
        raise GroupingError(
            f"no scan point lies inside x_bounds={rule.x_bounds}, y_bounds={rule.y_bounds} (fractions of the "
            "coordinate range); widen the bounds"
        )
    if C == 1:
        repeated = np.repeat(centres, rule.n_subsample)
        return PtychoTorchGroups(groups=repeated[:, None], centres=repeated)
    if rule.neighbor_function == "Nearest":
        return _nearest_groups(positions, centres, C, K, rule.n_subsample, rng)
    if C != 4:
        raise GroupingError(f"neighbor_function='4_quadrant' makes groups of 4 (gridsize 2); got C={C}")
    return _quadrant_groups(positions, centres, rule, rng)


def _nearest_groups(positions, centres, C, K, repeats, rng) -> PtychoTorchGroups:
    bounded = positions[centres]
    k = min(K + 1, len(centres))
    if k < C:
        raise GroupingError(
            f"only {len(centres)} scan points lie inside the bounds, fewer than C={C} a group needs; "
            "widen x_bounds/y_bounds or lower gridsize"
        )
    _, local = cKDTree(bounded).query(bounded, k=k, workers=-1)
    # (V, K+1): each centre's candidates, the centre itself among them
    candidates = centres[np.asarray(local, np.int64).reshape(len(centres), k)]
    candidates = np.repeat(candidates, repeats, axis=0)
    chosen = rng.random(candidates.shape).argsort(axis=1)[:, :C]  # C distinct, uniform, in random order
    return PtychoTorchGroups(
        groups=np.take_along_axis(candidates, chosen, axis=1), centres=np.repeat(centres, repeats)
    )


def _quadrant_groups(positions, centres, rule: PtychoTorchRule, rng) -> PtychoTorchGroups:
    n_points = len(positions)
    k = min(rule.K_quadrant + 1, n_points)
    distances, found = cKDTree(positions).query(positions[centres], k=k, workers=-1)
    distances = np.asarray(distances, np.float64).reshape(len(centres), k)
    found = np.asarray(found, np.int64).reshape(len(centres), k)
    usable = (
        (found != centres[:, None])
        & (distances >= rule.min_neighbor_distance)
        & (distances < rule.max_neighbor_distance)
    )
    delta = positions[found] - positions[centres][:, None, :]
    labels = _quadrant_labels(delta[..., 0], delta[..., 1], rule.scan_pattern)
    labels[~usable] = len(_QUADRANTS)  # not a candidate
    counts = np.stack([(labels == q).sum(axis=1) for q in range(len(_QUADRANTS))], axis=1)  # (V, 4)
    keep = (counts == 0).sum(axis=1) < 2  # ptycho_torch drops a centre alone in two or more quadrants
    if not keep.any():
        raise GroupingError(
            "no centre has candidates in at least three of the four quadrants within "
            f"[{rule.min_neighbor_distance}, {rule.max_neighbor_distance}) pixels among its "
            f"{rule.K_quadrant} nearest points; raise max_neighbor_distance or K_quadrant"
        )
    centres, found, labels, counts = centres[keep], found[keep], labels[keep], counts[keep]
    # Candidates sorted by quadrant within each row (stable: nearest first), and where each quadrant starts.
    by_quadrant = np.take_along_axis(found, np.argsort(labels, axis=1, kind="stable"), axis=1)
    starts = np.concatenate([np.zeros((len(counts), 1), np.int64), np.cumsum(counts, axis=1)[:, :-1]], axis=1)
    rows = np.repeat(np.arange(len(centres)), rule.n_subsample)
    picks = rng.integers(0, counts[rows] + 1)  # (B, 4); a pick equal to the count is the centre itself
    for _ in range(_MAX_REDRAWS):
        twice = (picks == counts[rows]).sum(axis=1) > 1
        if not twice.any():
            break
        picks[twice] = rng.integers(0, counts[rows[twice]] + 1)
    else:  # unreachable in practice: at most one quadrant holds only the centre
        raise GroupingError("could not draw quadrant groups holding their centre at most once")
    is_centre = picks == counts[rows]
    column = np.minimum(starts[rows] + picks, found.shape[1] - 1)
    members = np.take_along_axis(by_quadrant[rows], column, axis=1)
    groups = np.where(is_centre, centres[rows][:, None], members)
    return PtychoTorchGroups(groups=groups.astype(np.int64), centres=centres[rows])


def _quadrant_labels(dx: np.ndarray, dy: np.ndarray, scan_pattern: str) -> np.ndarray:
    """0..3 for TL, TR, BL, BR (ptycho_torch's +y-up names), 4 for none of them."""
    x_lower, x_upper, y_lower, y_upper, y_bound = _WINDOWS[scan_pattern]
    left = (dx < x_lower) & (dx > -x_upper)
    right = (dx > x_lower) & (dx < x_upper)
    upper = (dy > -y_lower) & (dy < y_upper)
    lower = dy < -y_bound
    labels = np.full(dx.shape, len(_QUADRANTS), np.int64)
    for label, mask in enumerate((left & upper, right & upper, left & lower, right & lower)):
        labels[mask & (labels == len(_QUADRANTS))] = label
    return labels
