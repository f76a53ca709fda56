"""Time and peak memory of ``grouped_data`` (the §6 dict) for a large scan.

    python benchmarks/bench_grouped.py [--points 100000] [--N 64 32]

Each case runs in a fresh subprocess so its peak RSS is its own. The scan's arrays are
random (the gather and scaling do not care about physics); with ``--object`` a complex
object is attached and ground-truth patches Y are cut too. Target (2 cores): 10⁵ points
at gridsize 2 in < 5 s with the memory added by the call below 2.5× the output's size.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np
from _common import machine, peak_rss_mib

from ptychodata import GroupingConfig, ScanData, grouped_data


def make_scan(n_points: int, N: int, with_object: bool) -> ScanData:
    rng = np.random.default_rng(0)
    side = int(np.ceil(np.sqrt(n_points)))
    step = N / 8
    rows, cols = np.divmod(np.arange(n_points), side)
    x = cols * step + N + rng.uniform(-1, 1, n_points)
    y = rows * step + N + rng.uniform(-1, 1, n_points)
    diffraction = rng.random((n_points, N, N), dtype=np.float32)
    obj = None
    if with_object:
        shape = (int(y.max()) + 2 * N, int(x.max()) + 2 * N)
        obj = np.exp(1j * rng.random(shape, dtype=np.float32)).astype(np.complex64)
    return ScanData.from_arrays(diffraction=diffraction, xcoords=x, ycoords=y,
                                probe=np.ones((N, N), np.complex64), object=obj, check_values=False)


def run_case(n_points: int, N: int, gridsize: int, with_object: bool) -> dict:
    scan = make_scan(n_points, N, with_object)
    config = GroupingConfig(gridsize=gridsize, neighbor_count=7, seed=0)
    before = peak_rss_mib()
    start = time.perf_counter()
    grouped = grouped_data(scan, config, with_Y=with_object)
    seconds = time.perf_counter() - start
    output_mib = sum(v.nbytes for v in grouped.values() if isinstance(v, np.ndarray)) / 2**20
    return {"M": n_points, "N": N, "gridsize": gridsize, "Y": with_object, "seconds": seconds,
            "output_mib": output_mib, "added_mib": peak_rss_mib() - before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--gridsize", type=int, default=2)
    parser.add_argument("--one", nargs=3, metavar=("N", "OBJECT", "GRIDSIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        N, with_object, gridsize = int(args.one[0]), args.one[1] == "1", int(args.one[2])
        print(json.dumps(run_case(args.points, N, gridsize, with_object)))
        return
    print(f"machine: {machine()}")
    print(f"grouped_data: M={args.points}, gridsize {args.gridsize}, K=7, one group per point\n")
    print(f"{'N':>4} {'Y':>4} {'seconds':>8} {'output MiB':>11} {'added RSS MiB':>14} {'added/output':>13}")
    for N, with_object in [(64, False), (32, False), (32, True)]:
        command = [sys.executable, __file__, "--points", str(args.points),
                   "--one", str(N), "1" if with_object else "0", str(args.gridsize)]
        result = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
        print(f"{N:>4} {'yes' if with_object else 'no':>4} {result['seconds']:>8.2f} {result['output_mib']:>11.0f} "
              f"{result['added_mib']:>14.0f} {result['added_mib'] / result['output_mib']:>13.2f}")
    print("\nadded RSS = peak RSS of the process during grouped_data minus its peak before (input resident)")
    print("target (2 cores): 10^5 points at gridsize 2 in < 5 s, added/output < 2.5")


if __name__ == "__main__":
    main()
