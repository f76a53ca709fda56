"""Sample-then-group: pick seed points, give each gridsize² nearby members (contract §2).

All randomness comes from one ``numpy.random.Generator`` built from ``config.seed``;
numpy's global RNG is never touched. Neighbours come from batched ``cKDTree`` queries;
member choice is a row-wise random permutation, so nothing loops over single groups in
Python. Seeds are grouped in chunks of bounded size (query, drop the seed, draw the
members), with pool indices as int32 where the scan fits, so memory beyond the (B, C)
int64 output stays bounded; the random stream is consumed in the same order as one
whole-table draw, so the groups do not depend on the chunk size.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import numpy as np
from scipy.spatial import cKDTree

from ptychodata._runtime import check_int
from ptychodata.errors import GroupingError, ScanDataError
from ptychodata.grouping_ptycho_torch import PtychoTorchRule, ptycho_torch_groups
from ptychodata.io import median_neighbour_step

__all__ = ["GroupingConfig", "check_groups", "group", "median_neighbour_step", "neighbour_pools"]

# Oversampling enumerates all C-subsets of a pool through a lookup table up to this size.
_MAX_SUBSET_TABLE = 1 << 20
# Seeds per chunk of neighbour queries and member draws (bounds the temporaries).
_SEED_CHUNK = 1 << 16

# PtychoPINN's legacy ``params.cfg`` names for GroupingConfig fields, where they differ.
_LEGACY_NAMES = {"seed": "subsample_seed"}
_LEGACY_ALIASES = {"K": "neighbor_count", "nsamples": "n_groups", "subsample_seed": "seed"}


@dataclass(frozen=True)
class GroupingConfig:
    """How to sample and group scan points (§2); field names follow PtychoPINN's TrainingConfig.

    Parameters
    ----------
    N : int or None
        Pattern size; None takes it from the scan, an int must match it.
    gridsize : int
        g; each group has C = g² members.
    neighbor_count : int
        K, the number of nearest other points a seed's members are drawn from.
    n_groups : int or None
        Number of groups B; None means one group per scan point.
    seed : int or None
        Seed of the one ``numpy.random.Generator``; None is nondeterministic, except with
        ``sequential_sampling`` where it means 0 (as PtychoPINN fixes it).
    sequential_sampling : bool
        Take points 0..n_groups-1 as seeds instead of a uniform random draw; without a
        seed the member draw is seeded with 0, so the groups are reproducible.
    enable_oversampling : bool
        Allow n_groups > M (at C > 1) by drawing distinct (seed, subset) pairs.
    neighbor_pool_size : int or None
        Pool size used for the neighbour query; None means K.
    order : {"random", "raster"}
        Member order within a group: random (as PtychoPINN), or rows by y then x.
    nphotons : float or None
        Photons per pattern, for ``intensity_scale`` (§5); None falls back on the scan's metadata.
    method : {"sample_then_group", "ptycho_torch"}
        ``"sample_then_group"``: the contract's rule (§2, PtychoPINN TF's). ``"ptycho_torch"``:
        ptycho_torch's ``PtychoDataset`` rule (a centre per point inside x/y bounds, its group
        drawn from itself and its K nearest, or one per quadrant in TL, TR, BL, BR order,
        ``n_subsample`` groups per centre); see :mod:`ptychodata.grouping_ptycho_torch`. It
        takes no ``n_groups``, sequential sampling, oversampling or pool size.
    ptycho_torch : PtychoTorchRule, dict or None
        ptycho_torch's settings for ``method="ptycho_torch"`` (None: its defaults).
    """

    N: int | None = None
    gridsize: int = 1
    neighbor_count: int = 4
    n_groups: int | None = None
    seed: int | None = None
    sequential_sampling: bool = False
    enable_oversampling: bool = False
    neighbor_pool_size: int | None = None
    order: Literal["random", "raster"] = "random"
    nphotons: float | None = None
    method: Literal["sample_then_group", "ptycho_torch"] = "sample_then_group"
    ptycho_torch: PtychoTorchRule | None = None

    def __post_init__(self) -> None:
        self._check_method()
        for name in ("gridsize", "neighbor_count"):
            check_int(name, getattr(self, name))
        for name in ("N", "n_groups", "neighbor_pool_size"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name))
        if self.order not in ("random", "raster"):
            raise GroupingError(f"order={self.order!r}; expected one of {{'random', 'raster'}}")
        if self.nphotons is not None and not (math.isfinite(self.nphotons) and self.nphotons > 0):
            raise GroupingError(f"nphotons={self.nphotons!r}; expected a positive finite number")
        nearest_includes_seed = (
            self.method == "ptycho_torch" and self.ptycho_torch.neighbor_function == "Nearest"
        )
        if nearest_includes_seed and self.C > 1 and self.neighbor_count + 1 < self.C:
            raise GroupingError(
                f"neighbor_count K={self.neighbor_count}: ptycho_torch draws a group of "
                f"C=gridsize²={self.C} from the centre and its K nearest, so K >= {self.C - 1} is "
                "needed; raise neighbor_count or lower gridsize"
            )
        contract_rule = self.method == "sample_then_group"
        if contract_rule and self.C > 1 and self.neighbor_count < self.C:
            raise GroupingError(
                f"neighbor_count K={self.neighbor_count} < C=gridsize²={self.C}: a group of {self.C} "
                f"members needs at least {self.C} neighbours; raise neighbor_count or lower gridsize"
            )
        if contract_rule and self.C > 1 and self.pool_size < self.C:
            raise GroupingError(
                f"neighbor_pool_size={self.neighbor_pool_size} < C=gridsize²={self.C}; expected >= {self.C}"
            )

    def _check_method(self) -> None:
        if self.method not in ("sample_then_group", "ptycho_torch"):
            raise GroupingError(
                f"method={self.method!r}; expected one of {{'sample_then_group', 'ptycho_torch'}}"
            )
        if self.method == "sample_then_group":
            if self.ptycho_torch is not None:
                raise GroupingError(
                    "ptycho_torch settings given with method='sample_then_group'; set "
                    "method='ptycho_torch' to use them"
                )
            return
        object.__setattr__(self, "ptycho_torch", PtychoTorchRule.parse(self.ptycho_torch))
        not_applicable = {
            "n_groups": self.n_groups is not None,
            "sequential_sampling": self.sequential_sampling,
            "enable_oversampling": self.enable_oversampling,
            "neighbor_pool_size": self.neighbor_pool_size is not None,
        }
        given = [name for name, set_ in not_applicable.items() if set_]
        if given:
            raise GroupingError(
                f"{', '.join(given)} set with method='ptycho_torch', whose group count is (points "
                "inside the bounds) × ptycho_torch.n_subsample; leave them at their defaults or use "
                "method='sample_then_group'"
            )
        if self.ptycho_torch.neighbor_function == "4_quadrant" and self.gridsize not in (1, 2):
            raise GroupingError(
                "ptycho_torch neighbor_function='4_quadrant' makes groups of 4; "
                f"gridsize={self.gridsize}, expected 2"
            )

    @property
    def C(self) -> int:
        """Members per group, gridsize²."""
        return self.gridsize * self.gridsize

    @property
    def pool_size(self) -> int:
        """Neighbours considered per seed: ``neighbor_pool_size``, else K."""
        return self.neighbor_pool_size if self.neighbor_pool_size is not None else self.neighbor_count

    def to_dict(self) -> dict[str, Any]:
        """All fields as a plain dict (JSON-ready)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> GroupingConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise."""
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise GroupingError(f"unknown GroupingConfig field(s) {sorted(unknown)}")
        return cls(**values)

    def to_legacy_dict(self) -> dict[str, Any]:
        """PtychoPINN ``params.cfg``-style dict; None values are dropped."""
        return {
            _LEGACY_NAMES.get(name, name): value
            for name, value in self.to_dict().items()
            if value is not None and name not in ("order", "method", "ptycho_torch")
        }

    @classmethod
    def from_legacy_dict(cls, legacy: Mapping[str, Any]) -> GroupingConfig:
        """Build from a PtychoPINN params-style dict; keys that are not grouping settings are ignored."""
        names = {f.name for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in legacy.items():
            name = _LEGACY_ALIASES.get(key, key)
            if name in names and value is not None:
                values[name] = value
        return cls(**values)


def group(scan_or_positions: Any, config: GroupingConfig) -> np.ndarray:
    """Sample seed points and group each with gridsize² nearby points (§2).

    Parameters
    ----------
    scan_or_positions : ScanData or ndarray of shape (M, 2)
        The scan, or its positions as columns (x, y) in object pixels.
    config : GroupingConfig

    Returns
    -------
    ndarray of shape (B, C), int64
        Scan-point indices; row b is group b, column c its member c.
    """
    positions = _positions(scan_or_positions, config)
    n_points = positions.shape[0]
    C = config.C
    n_groups = n_points if config.n_groups is None else config.n_groups
    if n_points < C:
        where = f"{scan_or_positions.source}: " if getattr(scan_or_positions, "source", None) else ""
        raise ScanDataError(
            f"{where}key 'xcoords': the scan has {n_points} points, fewer than C=gridsize²={C} a group "
            "needs; lower gridsize or use a larger scan"
        )
    rng = np.random.default_rng(_effective_seed(config))
    if config.method == "ptycho_torch":
        made = ptycho_torch_groups(positions, C=C, K=config.neighbor_count, rule=config.ptycho_torch, rng=rng)
        groups = made.groups
        return raster_order(groups, positions) if config.order == "raster" and C > 1 else groups
    if C == 1:
        return _choose_seeds(n_points, n_groups, config.sequential_sampling, rng)[:, None]
    if config.neighbor_count > n_points - 1:
        where = f"{scan_or_positions.source}: " if getattr(scan_or_positions, "source", None) else ""
        raise GroupingError(
            f"{where}neighbor_count K={config.neighbor_count}, but a point of this {n_points}-point scan has only "
            f"{n_points - 1} others; choose K <= {n_points - 1} (and K >= C={C})"
        )
    if n_groups > n_points:
        if not config.enable_oversampling:
            raise GroupingError(
                f"n_groups={n_groups} > M={n_points} scan points at gridsize {config.gridsize} is "
                "oversampling; set enable_oversampling=True to draw distinct (seed, subset) pairs, "
                f"or ask for at most {n_points} groups"
            )
        pools = _pool_table(positions, np.arange(n_points), config.pool_size, C, _index_dtype(n_points))
        groups = _oversample(pools, n_groups, C, rng).astype(np.int64, copy=False)
    else:
        seeds = _choose_seeds(n_points, n_groups, config.sequential_sampling, rng)
        groups = np.empty((len(seeds), C), np.int64)
        tree = cKDTree(positions)
        for start, pools in _pool_chunks(tree, positions, seeds, config.pool_size, C):
            # Row-major draws chunk after chunk: the same stream as one (B, P) draw.
            order = rng.random(pools.shape).argsort(axis=1)[:, :C]
            groups[start : start + len(pools)] = np.take_along_axis(pools, order, axis=1)
    if config.order == "raster":
        groups = raster_order(groups, positions)
    return groups


def check_groups(groups: Any, *, n_points: int, C: int, where: str = "") -> np.ndarray:
    """Validate a precomputed group table and return it as C-contiguous int64.

    Parameters
    ----------
    groups : array_like of shape (B, C), integer
        Scan-point indices, one row per group, e.g. PtychoPINN's ``nn_indices`` (int32 at
        gridsize 2) or an earlier :func:`group` output.
    n_points : int
        M, the number of scan points; every index must lie in [0, M).
    C : int
        gridsize², the members a group must have.
    where : str
        Prefix for error messages (the scan's file).

    Returns
    -------
    ndarray of shape (B, C), int64

    Raises
    ------
    GroupingError
        Not 2-D, not an integer dtype, a column count other than C, no groups, or an index
        outside [0, M) (a negative index would otherwise silently gather from the end).
    """
    table = np.asarray(groups)
    expected = f"expected (B, C={C}) integer indices with C = gridsize²"
    if table.ndim != 2:
        raise GroupingError(f"{where}groups: shape {table.shape} ({table.ndim}-D); {expected}")
    if table.dtype == np.bool_ or not np.issubdtype(table.dtype, np.integer):
        raise GroupingError(
            f"{where}groups: dtype {table.dtype}; {expected} (cast with .astype(np.int64) if they "
            "are whole numbers)"
        )
    if table.shape[1] != C:
        raise GroupingError(
            f"{where}groups: shape {table.shape} has {table.shape[1]} columns; {expected} "
            "(check the table was made for this gridsize)"
        )
    if table.shape[0] == 0:
        raise GroupingError(f"{where}groups: shape {table.shape} holds no groups; expected B >= 1")
    low, high = int(table.min()), int(table.max())
    if low < 0 or high >= n_points:
        bad = np.argwhere((table < 0) | (table >= n_points))[0]
        raise GroupingError(
            f"{where}groups[{bad[0]}, {bad[1]}] = {int(table[bad[0], bad[1]])} "
            f"(values span [{low}, {high}]); "
            f"expected scan-point indices in [0, {n_points}) for a scan of M={n_points} points"
        )
    return np.ascontiguousarray(table, dtype=np.int64)


def _positions(scan_or_positions: Any, config: GroupingConfig) -> np.ndarray:
    if hasattr(scan_or_positions, "positions"):
        scan = scan_or_positions
        if config.N is not None and config.N != scan.N:
            where = f"{scan.source}: " if getattr(scan, "source", None) else ""
            raise GroupingError(f"{where}config N={config.N} but the patterns are {scan.N}×{scan.N}")
        return scan.positions
    positions = np.asarray(scan_or_positions, dtype=np.float64)
    if positions.ndim != 2 or positions.shape[1] != 2:
        raise GroupingError(f"positions of shape {positions.shape}; expected (M, 2) with columns (x, y)")
    return positions


def _effective_seed(config: GroupingConfig) -> int | None:
    """``config.seed``; with no seed, 0 for ``sequential_sampling`` (PtychoPINN fixes it there)
    and for ``method="ptycho_torch"`` (its planner's default seed)."""
    if config.seed is None and (config.sequential_sampling or config.method == "ptycho_torch"):
        return 0
    return config.seed


def _choose_seeds(n_points: int, n_groups: int, sequential: bool, rng: np.random.Generator) -> np.ndarray:
    count = min(n_groups, n_points)
    if sequential or count == n_points:
        return np.arange(count, dtype=np.int64)
    return rng.choice(n_points, size=count, replace=False).astype(np.int64)


def neighbour_pools(positions: np.ndarray, seeds: np.ndarray, pool_size: int, C: int) -> np.ndarray:
    """The pool of each seed: its ``pool_size`` nearest other points (cKDTree queries in
    chunks of seeds).

    When the scan has fewer than C other points, the seed joins its own pool (§2.3).

    Returns
    -------
    ndarray of shape (len(seeds), P), int64
        P = min(pool_size, M - 1), plus one when the seed joins.
    """
    return _pool_table(positions, seeds, pool_size, C, np.int64)


def _index_dtype(n_points: int) -> np.dtype:
    """int32 when every point index fits, else int64."""
    return np.dtype(np.int32) if n_points <= np.iinfo(np.int32).max else np.dtype(np.int64)


def _pool_table(positions: np.ndarray, seeds: np.ndarray, pool_size: int, C: int, dtype: Any) -> np.ndarray:
    """All pools of ``seeds`` as one (len(seeds), P) table of ``dtype``."""
    tree = cKDTree(positions)
    table = None
    for start, pools in _pool_chunks(tree, positions, seeds, pool_size, C):
        if table is None:
            table = np.empty((len(seeds), pools.shape[1]), dtype)
        table[start : start + len(pools)] = pools
    return table if table is not None else np.empty((0, _pool_width(positions.shape[0], pool_size, C)), dtype)


def _pool_width(n_points: int, pool_size: int, C: int) -> int:
    k_others = min(pool_size, n_points - 1)
    return k_others + 1 if k_others < C else k_others


def _pool_chunks(tree: cKDTree, positions: np.ndarray, seeds: np.ndarray, pool_size: int, C: int):
    """Yield ``(start, pools)`` for chunks of ``seeds``: pools (S, P) of the int32 (or int64)
    point indices of each seed's ``pool_size`` nearest other points (§2.3: the seed joins
    when fewer than C others exist). Only one chunk's query results live at a time."""
    n_points = positions.shape[0]
    k_others = min(pool_size, n_points - 1)
    dtype = _index_dtype(n_points)
    for start in range(0, len(seeds), _SEED_CHUNK):
        chunk = seeds[start : start + _SEED_CHUNK]
        _, found = tree.query(positions[chunk], k=k_others + 1, workers=-1)
        found = np.asarray(found).reshape(len(chunk), k_others + 1).astype(dtype, copy=False)
        # Drop the seed itself; with duplicate positions it may be crowded out, then drop the farthest.
        is_self = found == chunk[:, None]
        first_self = np.where(is_self.any(axis=1), is_self.argmax(axis=1), k_others)
        keep = np.ones_like(is_self)
        keep[np.arange(len(chunk)), first_self] = False
        pools = found[keep].reshape(len(chunk), k_others)
        if k_others < C:
            pools = np.concatenate([pools, chunk[:, None].astype(dtype)], axis=1)
        yield start, pools


def _oversample(pools: np.ndarray, n_groups: int, C: int, rng: np.random.Generator) -> np.ndarray:
    """Draw n_groups distinct (seed, C-subset of pool) pairs uniformly (§2.4), members in random order."""
    n_seeds, pool_width = pools.shape
    n_subsets = math.comb(pool_width, C)
    n_pairs = n_seeds * n_subsets
    if n_subsets > _MAX_SUBSET_TABLE:
        # Too many subsets to enumerate; a random C-subset per draw repeats with negligible probability.
        seeds = rng.integers(0, n_seeds, size=n_groups)
        columns = rng.random((n_groups, pool_width)).argsort(axis=1)[:, :C]
        return np.take_along_axis(pools[seeds], columns, axis=1)
    if n_groups > n_pairs:
        warnings.warn(
            f"n_groups={n_groups} exceeds the {n_pairs} distinct (seed, subset) pairs; every pair is used "
            "once and the rest are drawn again with replacement",
            stacklevel=3,
        )
        pair_ids = np.concatenate([rng.permutation(n_pairs), rng.integers(0, n_pairs, n_groups - n_pairs)])
    else:
        pair_ids = rng.choice(n_pairs, size=n_groups, replace=False)
    subsets = np.array(list(itertools.combinations(range(pool_width), C)), dtype=np.int64)
    seeds, subset_ids = np.divmod(pair_ids, n_subsets)
    columns = subsets[subset_ids]
    shuffle = rng.random(columns.shape).argsort(axis=1)
    columns = np.take_along_axis(columns, shuffle, axis=1)
    return np.take_along_axis(pools[seeds], columns, axis=1)


def raster_order(groups: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Sort each group's members into g rows by y, then by x within a row (top-left first, §2.6).

    Parameters
    ----------
    groups : ndarray of shape (B, C), C = g²
    positions : ndarray of shape (M, 2), columns (x, y)
    """
    n_groups, C = groups.shape
    g = math.isqrt(C)
    result = np.empty_like(groups)
    for start in range(0, n_groups, _SEED_CHUNK):  # chunks keep the float64 keys small
        part = groups[start : start + _SEED_CHUNK]
        by_y = np.take_along_axis(part, positions[part, 1].argsort(axis=1, kind="stable"), axis=1)
        rows = by_y.reshape(len(part), g, g)
        by_x = np.take_along_axis(rows, positions[rows, 0].argsort(axis=2, kind="stable"), axis=2)
        result[start : start + len(part)] = by_x.reshape(len(part), C)
    return result
