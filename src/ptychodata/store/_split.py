"""Train/validation splits of a store that do not leak patterns across the split.

Neighbouring groups share patterns, so a random split of groups puts the same measured
pattern in both sets. ``by="region"`` holds out contiguous tiles of each scan and drops
every training group that touches a held-out pattern.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from ptychodata.errors import ParameterError

__all__ = ["split_groups"]


def split_groups(
    centres: np.ndarray,
    group_experiment: np.ndarray,
    groups: np.ndarray,
    val_fraction: float,
    *,
    by: Literal["region", "random"] = "region",
    seed: int | None = 0,
    tiles: int = 4,
    n_patterns: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Positions (in the given groups) of a (train, val) split.

    Parameters
    ----------
    centres : ndarray of shape (B, 2)
        Group centres (x, y).
    group_experiment : ndarray of shape (B,)
        The experiment of each group; tiles are drawn per experiment.
    groups : ndarray of shape (B, C)
        Pattern indices of each group's members.
    val_fraction : float in (0, 1)
        Target share of groups held out (region splits reach it by whole tiles).
    by : {"region", "random"}
        ``"region"``: each experiment's scan area is cut into ``tiles`` × ``tiles`` tiles;
        tiles are held out at random (seeded) until ``val_fraction`` of the experiment's
        groups, by group centre, are in them. Training groups that share any pattern with
        a validation group are dropped, so no pattern index is in both sets.
        ``"random"``: groups drawn at random; neighbouring groups then share patterns.
    """
    if not 0 < val_fraction < 1:
        raise ParameterError(f"val_fraction={val_fraction}; expected a number in (0, 1)")
    if by not in ("region", "random"):
        raise ParameterError(f"by={by!r}; expected one of {{'region', 'random'}}")
    rng = np.random.default_rng(seed)
    n_groups = len(groups)
    if n_groups < 2:
        raise ParameterError(f"cannot split {n_groups} group(s) into a training and a validation set")
    if by == "random":
        is_val = np.zeros(n_groups, bool)
        is_val[rng.choice(n_groups, size=max(1, round(val_fraction * n_groups)), replace=False)] = True
        return np.flatnonzero(~is_val), np.flatnonzero(is_val)
    centres = np.asarray(centres)
    experiment = np.asarray(group_experiment)
    groups = np.asarray(groups)
    is_val = np.zeros(n_groups, bool)
    for experiment_id in np.unique(experiment):
        mine = np.flatnonzero(experiment == experiment_id)
        is_val[mine] = _held_out_tiles(centres[mine], val_fraction, tiles, rng)
    n_patterns = int(groups.max()) + 1 if n_patterns is None else n_patterns
    val_patterns = np.zeros(n_patterns, bool)
    val_patterns[groups[is_val].ravel()] = True
    touches_val = val_patterns[groups].any(axis=1)
    return np.flatnonzero(~is_val & ~touches_val), np.flatnonzero(is_val)


def _held_out_tiles(centres: np.ndarray, val_fraction: float, tiles: int, rng: np.random.Generator) -> np.ndarray:
    """Mask of the groups whose centres fall in randomly chosen tiles covering ~val_fraction of them."""
    low, high = centres.min(axis=0), centres.max(axis=0)
    cell = np.minimum(((centres - low) / np.maximum(high - low, 1e-12) * tiles).astype(int), tiles - 1)
    tile_of = cell[:, 1] * tiles + cell[:, 0]
    counts = np.bincount(tile_of, minlength=tiles * tiles)
    order = rng.permutation(tiles * tiles)
    taken = np.cumsum(counts[order])
    n_tiles = int(np.searchsorted(taken, val_fraction * len(centres))) + 1
    return np.isin(tile_of, order[:n_tiles])
