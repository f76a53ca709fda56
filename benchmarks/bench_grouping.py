"""Grouping speed against the bare cKDTree build + query it cannot avoid.

    python benchmarks/bench_grouping.py [--sizes 10000 100000 1000000]

Target (2 cores): grouping 10⁶ points at gridsize 2, K=7 in at most 2× the bare
cKDTree build + query time on the same points.
"""

from __future__ import annotations

import argparse

import numpy as np
from _common import best_time, machine, peak_rss_mib
from scipy.spatial import cKDTree

from ptychodata import GroupingConfig, group


def jittered_raster(n_points: int, step: float = 6.4, seed: int = 0) -> np.ndarray:
    """(M, 2) positions on a square raster with ±0.25-step jitter, like a real scan."""
    side = int(np.ceil(np.sqrt(n_points)))
    rows, cols = np.divmod(np.arange(n_points), side)
    jitter = np.random.default_rng(seed).uniform(-0.25, 0.25, (n_points, 2)) * step
    return np.stack([cols * step, rows * step], axis=1) + jitter


def bare_kdtree(positions: np.ndarray, k: int) -> np.ndarray:
    return cKDTree(positions).query(positions, k=k + 1, workers=-1)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--gridsize", type=int, default=2)
    parser.add_argument("--neighbors", type=int, default=7)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print(f"grouping: gridsize {args.gridsize}, K={args.neighbors}, one group per point, seed 0\n")
    print(f"{'M':>9} {'group() s':>10} {'cKDTree s':>10} {'ratio':>6} {'groups/s':>12} {'peak RSS MiB':>13}")
    for n_points in args.sizes:
        positions = jittered_raster(n_points)
        config = GroupingConfig(gridsize=args.gridsize, neighbor_count=args.neighbors, seed=0)
        grouped_s, groups = best_time(lambda p=positions, c=config: group(p, c))
        group_rss = peak_rss_mib()  # before the bare query, whose (M, K+1) results are larger
        tree_s, _ = best_time(lambda p=positions: bare_kdtree(p, args.neighbors))
        assert groups.shape == (n_points, args.gridsize**2)
        print(
            f"{n_points:>9} {grouped_s:>10.3f} {tree_s:>10.3f} {grouped_s / tree_s:>6.2f} "
            f"{n_points / grouped_s:>12,.0f} {group_rss:>13.0f}"
        )
    print("\nratio = group() time / bare cKDTree build+query time (target <= 2 at 10^6); peak RSS = this "
          "process's peak after group() at this size (positions and the (M, C) int64 output included; target "
          "< 1 GiB at 10^6)")


if __name__ == "__main__":
    main()
