"""The store: prepare throughput and memory, reopen time, batch throughput.

    python benchmarks/bench_store.py prepare [--gib 4] [--workdir DIR]
    python benchmarks/bench_store.py batch [--points 20000]
    python benchmarks/bench_store.py million [--workdir DIR]     # 10⁶ patterns at N=64, ~32 GiB of disk

Targets (2 cores): prepare ≥ 50 % of ``cp`` throughput on the same file; peak RSS while
preparing a 4 GiB source ≤ 512 MiB plus O(M); reopen ≤ 10 ms; ``store.batch`` ≥ 80 % of
the in-RAM NumPy fancy-index bound on the same arrays, from the page cache. Each prepare
runs in a child process so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import machine

from ptychodata import GroupingConfig, ScanData, open_store, prepare, simulate
from ptychodata.io import write_npz

CHILD = """
import sys, time
from ptychodata import GroupingConfig, prepare
start = time.perf_counter()
store = prepare(sys.argv[1], GroupingConfig(gridsize=2, neighbor_count=7, seed=0), cache_dir=sys.argv[2],
                progress=False)
seconds = time.perf_counter() - start
# VmHWM is this process's own peak RSS; ru_maxrss would include the parent's, inherited across exec.
with open("/proc/self/status") as status:
    peak_kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))
print(seconds, peak_kib / 1024)
"""


def run_child(source: Path, cache: Path) -> tuple[float, float]:
    """Prepare in a child process; return (seconds inside prepare, child's peak RSS in MiB)."""
    result = subprocess.run([sys.executable, "-c", CHILD, str(source), str(cache)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"prepare failed: {result.stderr}")
    seconds, peak_mib = result.stdout.split()[-2:]
    return float(seconds), float(peak_mib)


def random_source(path: Path, n_points: int, N: int) -> Path:
    """An uncompressed .npz of random float32 patterns, written in chunks (never whole in RAM)."""
    side = int(np.ceil(np.sqrt(n_points)))
    rows, cols = np.divmod(np.arange(n_points), side)
    scratch = path.with_suffix(".patterns.npy")
    patterns = np.lib.format.open_memmap(scratch, mode="w+", dtype=np.float32, shape=(n_points, N, N))
    rng = np.random.default_rng(0)
    for start in range(0, n_points, 4096):
        patterns[start : start + 4096] = rng.random((min(4096, n_points - start), N, N), dtype=np.float32)
    patterns.flush()
    scan = ScanData.from_arrays(diffraction=patterns, xcoords=cols * 4.0 + 0.5, ycoords=rows * 4.0 + 0.5,
                                probe=np.ones((N, N), np.complex64), check_values=False)
    write_npz(path, {"diff3d": scan.diffraction, "xcoords": scan.xcoords, "ycoords": scan.ycoords,
                     "probeGuess": scan.probe})
    del patterns, scan
    scratch.unlink()
    return path


def timed_cp(source: Path, target: Path) -> float:
    start = time.perf_counter()
    subprocess.run(["cp", str(source), str(target)], check=True)
    os.sync()
    seconds = time.perf_counter() - start
    target.unlink()
    return seconds


def bench_prepare(source: Path, workdir: Path) -> None:
    size = source.stat().st_size
    with open(source, "rb") as handle:  # warm the page cache for both contenders
        while handle.read(64 << 20):
            pass
    cp_seconds = timed_cp(source, workdir / "copy.npz")
    cache = workdir / "cache"
    prepare_seconds, rss = run_child(source, cache)
    os.sync()
    n_points = np.load(source, mmap_mode="r")["xcoords"].shape[0]
    print(f"source       {size / 2**30:.2f} GiB, {n_points} patterns")
    print(f"cp           {cp_seconds:.2f} s   {size / cp_seconds / 1e9:.2f} GB/s")
    print(f"prepare      {prepare_seconds:.2f} s   {size / prepare_seconds / 1e9:.2f} GB/s   "
          f"= {cp_seconds / prepare_seconds:.0%} of cp   (copy + hash + check + energies + grouping)")
    print(f"peak RSS     {rss:.0f} MiB while preparing (target <= 512 MiB + O(M); "
          f"O(M) here ~ {n_points * 8 * 12 / 2**20:.0f} MiB of coordinates and groups)")
    config = GroupingConfig(gridsize=2, neighbor_count=7, seed=0)
    timings = []
    for _ in range(5):
        start = time.perf_counter()
        store = prepare(source, config, cache_dir=cache, progress=False)
        timings.append(time.perf_counter() - start)
    reopen = []
    for _ in range(5):
        start = time.perf_counter()
        open_store(store.path)
        reopen.append(time.perf_counter() - start)
    print(f"reuse        prepare() of an up-to-date store {min(timings) * 1e3:.1f} ms, "
          f"open_store() {min(reopen) * 1e3:.1f} ms (best of 5)")


def bench_batch(n_points: int, workdir: Path) -> None:
    print(f"{'N':>4} {'C':>2} {'batch':>6} {'groups/s':>11} {'GB/s':>6} {'bound GB/s':>11} {'ratio':>6}")
    for N in (64, 128):
        source = random_source(workdir / f"batch{N}.npz", n_points, N)
        for gridsize in (1, 2):
            store = prepare(source, GroupingConfig(gridsize=gridsize, neighbor_count=7, seed=0),
                            cache_dir=workdir / "cache", progress=False)
            patterns = np.array(store.patterns)  # the bound: same arrays, in RAM
            groups = np.array(store.groups)
            for batch_size in (64, 256, 1024):
                rng = np.random.default_rng(0)
                batches = [rng.choice(len(store), batch_size, replace=False) for _ in range(24)]
                out = np.empty((batch_size * store.C, N, N), np.float32)
                rows = max(1, (512 << 10) // (N * N * 4))

                def one_take(indices, out=out, patterns=patterns, groups=groups):
                    np.take(patterns, groups[indices].reshape(-1), axis=0, out=out)

                def blocked_take(indices, out=out, rows=rows, patterns=patterns, groups=groups):
                    flat = groups[indices].reshape(-1)
                    for start in range(0, len(flat), rows):
                        np.take(patterns, flat[start : start + rows], axis=0, out=out[start : start + rows])

                store_seconds = _per_batch(store.batch, batches)
                bound_seconds = min(_per_batch(one_take, batches), _per_batch(blocked_take, batches))
                nbytes = batch_size * store.C * N * N * 4
                print(f"{N:>4} {store.C:>2} {batch_size:>6} {batch_size / store_seconds:>11,.0f} "
                      f"{nbytes / store_seconds / 1e9:>6.2f} {nbytes / bound_seconds / 1e9:>11.2f} "
                      f"{bound_seconds / store_seconds:>6.0%}")
            del patterns
        shutil.rmtree(workdir / "cache")
        source.unlink()
    print("bound = the faster of one np.take and cache-blocked np.take of the same pattern rows from an "
          "in-RAM copy into a reused buffer; store.batch also scales X and fills coords, indices and probes")


def _per_batch(function, batches) -> float:
    function(batches[0])
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for indices in batches:
            function(indices)
        best = min(best, (time.perf_counter() - start) / len(batches))
    return best


def bench_million(workdir: Path) -> None:
    source = workdir / "million.npz"
    start = time.perf_counter()
    simulate(n_points=1_000_000, N=64, seed=0, out=source, progress=True)
    simulate_seconds = time.perf_counter() - start
    simulate_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"simulate     10^6 patterns at N=64 -> {source.stat().st_size / 2**30:.1f} GiB in {simulate_seconds:.0f} s, "
          f"peak RSS {simulate_rss:.0f} MiB")
    seconds, rss = run_child(source, workdir / "cache")
    print(f"prepare      {seconds:.0f} s, peak RSS {rss:.0f} MiB (the reference pipeline needs ~47 GB "
          "for 10^5 patterns at gridsize 2)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("prepare", "batch", "million"))
    parser.add_argument("--gib", type=float, default=4.0, help="prepare: source size in GiB")
    parser.add_argument("--points", type=int, default=20_000, help="batch: patterns per store")
    parser.add_argument("--workdir", type=Path, help="scratch directory (default: a temporary one)")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    workdir = Path(tempfile.mkdtemp(dir=args.workdir, prefix="ptychodata-bench-"))
    try:
        if args.what == "prepare":
            n_points = int(args.gib * 2**30 / (64 * 64 * 4))
            bench_prepare(random_source(workdir / "source.npz", n_points, 64), workdir)
        elif args.what == "batch":
            bench_batch(args.points, workdir)
        else:
            bench_million(workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
