"""Train/validation splits of a store that do not leak patterns across the split.

Neighbouring groups share patterns, so a random split of groups puts the same measured
pattern in both sets. ``by="region"`` holds out contiguous tiles of each scan and drops
every training group that touches a held-out pattern.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    from ptychodata.store._store import Store

__all__ = ["StoreView", "split_groups"]


class StoreView:
    """A subset of a store's groups with the store's batch API.

    ``len(view)`` counts the subset; ``view.batch(i)`` serves the subset's i-th groups
    (``group_index`` in the batch stays the index in the whole store).
    """

    def __init__(self, store: Store, group_indices: np.ndarray):
        self.store = store
        self.group_indices = np.asarray(group_indices, np.int64)

    def __len__(self) -> int:
        return len(self.group_indices)

    def __getattr__(self, name: str) -> Any:  # N, C, n_experiments, array(), ... of the store
        if name in ("store", "group_indices"):
            raise AttributeError(name)
        return getattr(self.store, name)

    def batch(self, indices: Any, **kwargs: Any) -> dict[str, np.ndarray]:
        """:meth:`Store.batch` of the view's groups ``indices`` (positions within the view)."""
        index = np.asarray(indices, np.int64)
        if index.size and (index.min() < -len(self) or index.max() >= len(self)):
            raise IndexError(f"group index out of range for a view of {len(self)} groups")
        return self.store.batch(self.group_indices[index], **kwargs)

    def __repr__(self) -> str:
        return f"StoreView({self.store!r}, groups={len(self)})"


def split_groups(
    store: Store,
    val_fraction: float,
    *,
    by: Literal["region", "random"] = "region",
    seed: int | None = 0,
    tiles: int = 4,
) -> tuple[np.ndarray, np.ndarray]:
    """Group indices of a (train, val) split.

    Parameters
    ----------
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
        raise ValueError(f"val_fraction={val_fraction}; expected a number in (0, 1)")
    if by not in ("region", "random"):
        raise ValueError(f"by={by!r}; expected one of {{'region', 'random'}}")
    rng = np.random.default_rng(seed)
    n_groups = len(store)
    if by == "random":
        is_val = np.zeros(n_groups, bool)
        is_val[rng.choice(n_groups, size=max(1, round(val_fraction * n_groups)), replace=False)] = True
        return np.flatnonzero(~is_val), np.flatnonzero(is_val)
    centres = np.asarray(store.array("coords_offsets"))
    experiment = np.asarray(store.array("group_experiment"))
    is_val = np.zeros(n_groups, bool)
    for experiment_id in range(store.n_experiments):
        mine = np.flatnonzero(experiment == experiment_id)
        is_val[mine] = _held_out_tiles(centres[mine], val_fraction, tiles, rng)
    groups = np.asarray(store.array("groups"))
    val_patterns = np.zeros(store.frames.n_patterns, bool)
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
