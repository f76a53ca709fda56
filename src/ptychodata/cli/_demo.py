"""``ptychodata demo``: simulate, group and normalise a scan in memory, with timings."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from ptychodata._runtime import rows_per_chunk
from ptychodata.cli._arguments import int_at_least, positive_int


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``demo`` command to ``commands``; returns its parser."""
    demo = commands.add_parser(
        "demo",
        help="simulate, group and normalise a scan in memory, with timings",
        description="The whole pipeline on a synthetic scan: simulate -> group -> grouped_data; "
        "prints the grouped dict's arrays, x_scale, the mean pattern energy and the time of each stage.",
    )
    demo.add_argument("--points", type=positive_int, default=2048, help="scan points M (default 2048)")
    demo.add_argument("--N", type=int_at_least(2), default=64, help="pattern size (default 64)")
    demo.add_argument(
        "--gridsize", type=positive_int, default=2, help="g, C = g² patterns a group (default 2)"
    )
    demo.add_argument("--neighbors", type=positive_int, default=7, help="neighbour pool K (default 7)")
    demo.add_argument("--seed", type=int, default=0, help="seed of simulation and grouping (default 0)")
    demo.add_argument("--out", type=Path, metavar="DIR", help="also save the scan (.npz) and figures there")
    return demo


def run(args: argparse.Namespace) -> int:
    """Run the pipeline, printing what each stage made and how long it took; returns 0."""
    from ptychodata.grouped import grouped_data
    from ptychodata.grouping import GroupingConfig, group
    from ptychodata.simulate import simulate

    # Built first, so an impossible grouping request fails before any work is done.
    config = GroupingConfig(N=args.N, gridsize=args.gridsize, neighbor_count=args.neighbors, seed=args.seed)
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    scan = simulate(n_points=args.points, N=args.N, seed=args.seed)
    timings["simulate"], clock = time.perf_counter() - clock, time.perf_counter()
    groups = group(scan, config)
    timings["group"], clock = time.perf_counter() - clock, time.perf_counter()
    grouped = grouped_data(scan, config, groups=groups)
    timings["grouped_data"], clock = time.perf_counter() - clock, time.perf_counter()
    energy = _mean_pattern_energy(grouped["X_full"])

    obj = "none" if scan.object is None else "×".join(map(str, scan.object.shape))
    print(
        f"scan      M={scan.n_points} points, N={scan.N}, object {obj}, {scan.metadata.get('pattern')} "
        f"pattern, step {scan.metadata.get('step', float('nan')):.2f} px"
    )
    print(
        f"grouping  gridsize={config.gridsize} (C={config.C}), neighbor_count={config.neighbor_count}, "
        f"seed={config.seed} -> B={groups.shape[0]} groups"
    )
    print("grouped_data:")
    for key, value in grouped.items():
        print(f"  {key:<22} {_describe(value)}")
    target = (scan.N / 2) ** 2
    print(f"mean ΣX² per pattern   {energy:.6g}  (expected (N/2)² = {target:g}; ratio {energy / target:.6f})")
    if args.out is not None:
        clock = time.perf_counter()
        written = _save(scan, grouped, args.out)
        timings["save+plots"] = time.perf_counter() - clock
        print("wrote     " + ", ".join(str(path) for path in written))
    total = sum(timings.values())
    print(
        "timings   "
        + ", ".join(f"{stage} {seconds:.2f} s" for stage, seconds in timings.items())
        + f"; total {total:.2f} s"
    )
    return 0


def _save(scan: Any, grouped: dict[str, Any], out: Path) -> list[Path]:
    """Write the scan and its two figures into ``out``; returns their paths."""
    from ptychodata.plot import plot_groups, plot_scan

    return [
        scan.save(out / "demo_scan.npz"),
        plot_scan(scan, out / "demo_scan.png"),
        plot_groups(grouped, out / "demo_groups.png"),
    ]


def _mean_pattern_energy(X: np.ndarray) -> float:
    """Mean over groups and channels of Σ_pixels X², in float64, a chunk of groups at a time."""
    n_groups, C = X.shape[0], X.shape[-1]
    step = rows_per_chunk(X[:1].nbytes * 2, 32 << 20)
    total = 0.0
    for start in range(0, n_groups, step):
        chunk = np.asarray(X[start : start + step], dtype=np.float64)
        total += float(np.einsum("bijc,bijc->", chunk, chunk))
    return total / (n_groups * C)


def _describe(value: Any) -> str:
    if value is None:
        return "None"
    if isinstance(value, np.ndarray):
        return f"{value.shape!s:<20} {value.dtype}"
    if isinstance(value, float):
        return f"{value:.6g}"
    return repr(value)
