"""The store: prepare throughput and memory, zero-copy, compact frames, reopen time, batch throughput.

    python benchmarks/bench_store.py prepare [--gib 4] [--repeat 3] [--workdir DIR]
    python benchmarks/bench_store.py batch [--points 20000]
    python benchmarks/bench_store.py frames [--points 20000]     # disk, batch, loader, error per frames dtype
    python benchmarks/bench_store.py million [--points 1000000] [--workdir DIR]  # 10⁶ at N=64: ~32 GiB of disk

Targets (2 cores): prepare ≥ 80 % of ``cp`` throughput on the same file (cp and
prepare alternate, ``--repeat`` pairs); peak RSS < 1 GiB at 10⁶ patterns; a zero-copy
prepare (``copy=False``) of 10⁶ patterns in about the time of the grouping alone (it still
reads every pattern once for the energies: a plain read of the file is printed beside
it); reopen ≤ 10 ms; ``store.batch`` ≥ 80 % of the in-RAM NumPy fancy-index bound on the
same arrays, from the page cache. Each prepare runs in a child process so its peak RSS is
its own.
"""

from __future__ import annotations

import argparse
import json
import os
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
import json, sys, time
from ptychodata import GroupingConfig, prepare
start = time.perf_counter()
store = prepare(sys.argv[1], GroupingConfig(gridsize=2, neighbor_count=7, seed=0), cache_dir=sys.argv[2],
                progress=False, **json.loads(sys.argv[3]))
seconds = time.perf_counter() - start
# VmHWM is this process's own peak RSS; ru_maxrss would include the parent's, inherited across exec.
with open("/proc/self/status") as status:
    peak_kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))
print(seconds, peak_kib / 1024)
"""


def run_child(source: Path, cache: Path, **options) -> tuple[float, float]:
    """Prepare in a child process; return (seconds inside prepare, child's peak RSS in MiB)."""
    result = subprocess.run([sys.executable, "-c", CHILD, str(source), str(cache), json.dumps(options)],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"prepare failed: {result.stderr}")
    seconds, peak_mib = result.stdout.split()[-2:]
    return float(seconds), float(peak_mib)


def random_source(path: Path, n_points: int, N: int, seed: int = 0) -> Path:
    """An uncompressed .npz of random float32 patterns, written in chunks (never whole in RAM)."""
    side = int(np.ceil(np.sqrt(n_points)))
    rows, cols = np.divmod(np.arange(n_points), side)
    scratch = path.with_suffix(".patterns.npy")
    patterns = np.lib.format.open_memmap(scratch, mode="w+", dtype=np.float32, shape=(n_points, N, N))
    rng = np.random.default_rng(seed)
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


def timed_read(source: Path) -> float:
    """Seconds to read the file once (from the page cache when it is there)."""
    start = time.perf_counter()
    with open(source, "rb", buffering=0) as handle:
        buffer = bytearray(64 << 20)
        while handle.readinto(buffer):
            pass
    return time.perf_counter() - start


def bench_prepare(source: Path, workdir: Path, repeat: int) -> None:
    size = source.stat().st_size
    n_points = np.load(source, mmap_mode="r")["xcoords"].shape[0]
    timed_read(source)  # warm the page cache for both contenders
    print(f"source       {size / 2**30:.2f} GiB, {n_points} patterns; cp and prepare alternate, each followed by sync")
    cache = workdir / "cache"
    ratios, rss = [], 0.0
    for run in range(repeat):
        cp_seconds = timed_cp(source, workdir / "copy.npz")
        shutil.rmtree(cache, ignore_errors=True)
        start = time.perf_counter()
        prepare_seconds, peak = run_child(source, cache)
        os.sync()
        prepare_seconds = time.perf_counter() - start  # child start-up and the final sync included
        rss = max(rss, peak)
        ratios.append(cp_seconds / prepare_seconds)
        print(f"run {run + 1}        cp {cp_seconds:.2f} s ({size / cp_seconds / 1e9:.2f} GB/s)   prepare "
              f"{prepare_seconds:.2f} s ({size / prepare_seconds / 1e9:.2f} GB/s) = {ratios[-1]:.0%} of cp")
    print(f"prepare/cp   {min(ratios):.0%}-{max(ratios):.0%} (median {np.median(ratios):.0%}; target >= 80 %; "
          "copy + hash + check + energies + grouping)")
    print(f"peak RSS     {rss:.0f} MiB while preparing (target < 1 GiB)")
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
          f"open_store() {min(reopen) * 1e3:.1f} ms (best of 5; target <= 10 ms)")
    shutil.rmtree(cache, ignore_errors=True)
    in_place = []
    for _ in range(repeat):
        shutil.rmtree(cache, ignore_errors=True)
        in_place.append(run_child(source, cache, copy=False))
    read_seconds = timed_read(source)
    print(f"zero-copy    prepare(copy=False) {min(t for t, _ in in_place):.2f} s (best of {repeat}; peak RSS "
          f"{max(r for _, r in in_place):.0f} MiB) vs reading the file once {read_seconds:.2f} s and cp "
          f"{cp_seconds:.2f} s")


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
                    np.take(patterns, groups[indices].reshape(-1), axis=0, out=out, mode="clip")

                def blocked_take(indices, out=out, rows=rows, patterns=patterns, groups=groups):
                    flat = groups[indices].reshape(-1)
                    for start in range(0, len(flat), rows):
                        np.take(patterns, flat[start : start + rows], axis=0, out=out[start : start + rows],
                                mode="clip")

                store_seconds = _per_batch(store.batch, batches)
                bound_seconds = min(_per_batch(one_take, batches), _per_batch(blocked_take, batches))
                nbytes = batch_size * store.C * N * N * 4
                print(f"{N:>4} {store.C:>2} {batch_size:>6} {batch_size / store_seconds:>11,.0f} "
                      f"{nbytes / store_seconds / 1e9:>6.2f} {nbytes / bound_seconds / 1e9:>11.2f} "
                      f"{bound_seconds / store_seconds:>6.0%}")
            del patterns
        shutil.rmtree(workdir / "cache")
        source.unlink()
    print("bound = the faster of one np.take and cache-blocked np.take (mode='clip', written straight into the "
          "buffer) of the same pattern rows from an in-RAM copy into a reused buffer; store.batch also scales X and fills coords, indices and probes; "
          "target: ratio >= 80 %")


def _per_batch(function, batches, repeat: int = 3) -> float:
    function(batches[0])
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for indices in batches:
            function(indices)
        best = min(best, (time.perf_counter() - start) / len(batches))
    return best


def bench_million(workdir: Path, n_points: int) -> None:
    from ptychodata import group

    source = workdir / "million.npz"
    start = time.perf_counter()
    simulate(n_points=n_points, N=64, seed=0, out=source, progress=False)
    simulate_seconds = time.perf_counter() - start
    print(f"simulate     {n_points} patterns at N=64 -> {source.stat().st_size / 2**30:.1f} GiB in "
          f"{simulate_seconds:.0f} s")
    config = GroupingConfig(gridsize=2, neighbor_count=7, seed=0)
    positions = np.stack([np.load(source, mmap_mode="r")[k] for k in ("xcoords", "ycoords")], axis=1)
    start = time.perf_counter()
    group(positions, config)
    group_seconds = time.perf_counter() - start
    del positions
    cold_read = timed_read(source)  # partly from disk when the page cache cannot hold the file beside the rest
    in_place, in_place_rss = run_child(source, workdir / "cache-in-place", copy=False)
    warm_read = timed_read(source)
    print(f"zero-copy    prepare(copy=False) {in_place:.1f} s, peak RSS {in_place_rss:.0f} MiB; bounds in this run: "
          f"group() alone {group_seconds:.1f} s, reading the file once {warm_read:.1f} s right after it "
          f"({cold_read:.1f} s the first time)")
    shutil.rmtree(workdir / "cache-in-place")
    start = time.perf_counter()
    seconds, rss = run_child(source, workdir / "cache")
    os.sync()
    synced = time.perf_counter() - start
    print(f"copy         prepare() {seconds:.0f} s ({synced:.0f} s with the final sync), peak RSS {rss:.0f} MiB "
          "(target < 1 GiB)")


def counts_source(path: Path, n_points: int, N: int, *, amplitudes: bool = False) -> Path:
    """Poisson counts (uint16) of a bright centre and a dim halo, like diffraction; or their sqrt
    as float32 amplitudes."""
    side = int(np.ceil(np.sqrt(n_points)))
    rows, cols = np.divmod(np.arange(n_points), side)
    r2 = ((np.arange(N) - N / 2)[:, None] ** 2 + (np.arange(N) - N / 2)[None, :] ** 2) / (N / 8) ** 2
    mean = 2000 * np.exp(-r2) + 2.0
    rng = np.random.default_rng(0)
    patterns = np.lib.format.open_memmap(path.with_suffix(".tmp.npy"), mode="w+", shape=(n_points, N, N),
                                         dtype=np.float32 if amplitudes else np.uint16)
    for start in range(0, n_points, 2048):
        counts = rng.poisson(mean, (min(2048, n_points - start), N, N))
        patterns[start : start + len(counts)] = np.sqrt(counts) if amplitudes else counts
    write_npz(path, {"diff3d": patterns, "xcoords": cols * 4.0 + 0.5, "ycoords": rows * 4.0 + 0.5,
                     "probeGuess": np.ones((N, N), np.complex64)})
    del patterns
    path.with_suffix(".tmp.npy").unlink()
    return path


def loader_rate(store, batch_size: int, repeat: int = 3) -> float:
    """Groups/s of one epoch of make_loader (0 workers, no pinning), best of ``repeat``."""
    from ptychodata.torch import make_loader

    best = 0.0
    for _ in range(repeat):
        loader = make_loader(store, batch_size, num_workers=0, pin_memory=False, seed=0)
        start = time.perf_counter()
        count = sum(len(batch["X"]) for batch in loader)
        best = max(best, count / (time.perf_counter() - start))
    return best


def bench_frames(n_points: int, workdir: Path) -> None:
    N = 64
    counts = counts_source(workdir / "counts.npz", n_points, N)
    amplitudes = counts_source(workdir / "amplitudes.npz", n_points, N, amplitudes=True)
    config = GroupingConfig(gridsize=2, neighbor_count=7, seed=0)
    cache = workdir / "cache"
    print(f"{n_points} patterns, N={N}, gridsize 2; each row beside the float32 store of the same source, same run")
    print(f"{'source':>10} {'stored as':>9} {'patterns MiB':>12} {'batch 64 g/s':>13} {'(f32)':>9} {'batch 256 g/s':>14} "
          f"{'(f32)':>9} {'loader 64 g/s':>14} {'(f32)':>9} {'max rel err X':>14} {'(p99.99)':>9}")
    for source, intensity, dtypes in ((counts, True, ("uint16", "uint32")), (amplitudes, False, ("float16", "bfloat16"))):
        reference = prepare(source, config, cache_dir=cache, intensity=intensity, progress=False)
        X32 = reference.batch(np.arange(len(reference)), reuse=False)["X"]
        for dtype in ("float32", *dtypes):
            store = prepare(source, config, cache_dir=cache, intensity=intensity, frames_dtype=dtype, progress=False)
            rates = {}
            for batch_size in (64, 256):
                rng = np.random.default_rng(0)
                batches = [rng.choice(len(store), batch_size, replace=False) for _ in range(48)]
                pair = [float("inf"), float("inf")]
                for _ in range(5):  # alternate, so both see the same load from other processes
                    pair = [min(pair[0], _per_batch(store.batch, batches, 1)),
                            min(pair[1], _per_batch(reference.batch, batches, 1))]
                rates[batch_size] = (batch_size / pair[0], batch_size / pair[1])
            loader = [0.0, 0.0]
            for _ in range(3):
                loader = [max(loader[0], loader_rate(store, 64, 1)), max(loader[1], loader_rate(reference, 64, 1))]
            X = store.batch(np.arange(len(store)), reuse=False)["X"]
            nonzero = X32 != 0
            relative = np.abs(X - X32)[nonzero] / X32[nonzero]
            size = Path(store.info()["frames_path"], "patterns.npy").stat().st_size / 2**20
            kind = "counts" if intensity else "amplitude"
            print(f"{kind:>10} {dtype:>9} {size:>12.0f} {rates[64][0]:>13,.0f} {rates[64][1]:>9,.0f} "
                  f"{rates[256][0]:>14,.0f} {rates[256][1]:>9,.0f} {loader[0]:>14,.0f} {loader[1]:>9,.0f} "
                  f"{relative.max():>14.2e} {np.quantile(relative, 0.9999):>9.2e}")
            store.close()
        reference.close()
    print("max rel err X = largest |X - X_float32| / |X_float32| over every element of every group (X_float32 != 0);"
          " 0 means bit-identical. (f32) = the float32 store in the same run.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("prepare", "batch", "frames", "million"))
    parser.add_argument("--gib", type=float, default=4.0, help="prepare: source size in GiB")
    parser.add_argument("--repeat", type=int, default=3, help="prepare: cp/prepare pairs")
    parser.add_argument("--points", type=int, help="batch, frames: patterns per store (20000); million: 10^6")
    parser.add_argument("--workdir", type=Path, help="scratch directory (default: a temporary one)")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    workdir = Path(tempfile.mkdtemp(dir=args.workdir, prefix="ptychodata-bench-"))
    try:
        if args.what == "prepare":
            n_points = int(args.gib * 2**30 / (64 * 64 * 4))
            bench_prepare(random_source(workdir / "source.npz", n_points, 64), workdir, args.repeat)
        elif args.what == "batch":
            bench_batch(args.points or 20_000, workdir)
        elif args.what == "frames":
            bench_frames(args.points or 20_000, workdir)
        else:
            bench_million(workdir, args.points or 1_000_000)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
