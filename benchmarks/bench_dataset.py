"""Datasets of many scans: the cost of changing one, the loader over one, the epoch order.

    python benchmarks/bench_dataset.py [--scans 100] [--points 256] [--N 64] [--workdir DIR]
                                       [--only {changes,loader,order,descriptors}]

Targets, each printed beside its figure from the same run:
  add 1 scan to a dataset of --scans   <= 1.1 x prepare_scan of it alone in a fresh process + 0.5 s;
                                       bytes written <= its build + 1 MiB; the other builds' files
                                       keep their inode and mtime
  remove 1 scan                        <= 0.5 s
  add of every scan again (all built)  <= 1 s
  host loader over the dataset         >= 0.9 x groups/s of the same patterns as one store
                                       (gridsize 2, batch 64, no workers)
  epoch order of 10^7 groups           <= 1.5 s on one core, <= 80 MB of extra memory
  weighted epoch order (1.25 x 10^7)   <= 1.5 s per 10^7 items
  a dataset of 1000 small scans        opens and serves every group under ulimit -n 1024
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
from _common import machine

from ptychodata import Dataset, GroupingConfig, ScanData, open_dataset, prepare
from ptychodata.dataset import GroupKeys, Mixing

CONFIG = GroupingConfig(gridsize=2, neighbor_count=7, seed=0)


def write_scans(folder: Path, count: int, points: int, N: int) -> list[Path]:
    """``count`` random-pattern scans of ``points`` positions on a jittered raster."""
    rng = np.random.default_rng(0)
    side = int(np.ceil(np.sqrt(points)))
    rows, cols = np.divmod(np.arange(points), side)
    paths = []
    for k in range(count):
        jitter = rng.uniform(-0.5, 0.5, (2, points))
        scan = ScanData.from_arrays(
            diffraction=rng.random((points, N, N), dtype=np.float32),
            xcoords=cols * 6.0 + 40 + jitter[0],
            ycoords=rows * 6.0 + 40 + jitter[1],
            probe=np.ones((N, N), np.complex64),
        )
        paths.append(scan.save(folder / f"scan{k:04d}.npz"))
    return paths


def tree_state(root: Path) -> dict[Path, tuple[int, int, int]]:
    return {p: (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*") if p.is_file()}


def alone_in_fresh_process(path: Path, workdir: Path) -> float:
    """Seconds ``prepare_scan`` of ``path`` takes in a new interpreter with an empty cache."""
    code = (
        "import sys, time; from ptychodata import DatasetSpec, GroupingConfig, prepare_scan; "
        f"spec = DatasetSpec(GroupingConfig(gridsize=2, neighbor_count=7, seed=0)); t = time.perf_counter(); "
        f"prepare_scan({str(path)!r}, spec, cache_dir={str(workdir / 'alone')!r}); print(time.perf_counter() - t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def report(label: str, value: str, bound: str, ok: bool) -> None:
    print(f"{label:<44} {value:>22}   bound {bound:<28} {'ok' if ok else 'NOT met'}")


def bench_changes(paths: list[Path], extra: Path, workdir: Path) -> None:
    cache = workdir / "cache"
    dataset = Dataset.create("bench", CONFIG, cache_dir=cache)
    start = time.perf_counter()
    dataset.add(paths)
    print(f"setup: {len(paths)} scans added in {time.perf_counter() - start:.1f} s")
    before = tree_state(cache)
    start = time.perf_counter()
    change = dataset.add(extra)
    added = time.perf_counter() - start
    alone = alone_in_fresh_process(extra, workdir)
    after = tree_state(cache)
    build = next(b for b in dataset.scans() if b.source.path == change.added[0])
    written = sum(size for p, (_, _, size) in after.items() if p not in before or before[p] != after[p])
    untouched = all(after.get(p, (None,))[:2] == state[:2] for p, state in before.items() if "builds" in p.parts)
    report("add 1 scan (s)", f"{added:.2f}", f"1.1 x {alone:.2f} + 0.5 = {1.1 * alone + 0.5:.2f}",
           added <= 1.1 * alone + 0.5)
    report("  bytes written", f"{written:,}", f"{build.bytes:,} + 1 MiB", written <= build.bytes + 2**20)
    report("  other builds' files: inode and mtime kept", str(untouched), "True", untouched)
    start = time.perf_counter()
    dataset.remove(extra.name)
    removed = time.perf_counter() - start
    report("remove 1 scan (s)", f"{removed:.3f}", "0.5", removed <= 0.5)
    start = time.perf_counter()
    again = dataset.add(paths)
    rebuilt = time.perf_counter() - start
    report(f"add of {len(paths)} built scans (s)", f"{rebuilt:.3f}", "1.0", rebuilt <= 1.0 and not again.added)


def epoch_groups_per_second(data, epochs: int = 2) -> float:
    from ptychodata.torch import make_loader

    loader = make_loader(data, batch_size=64, num_workers=0, seed=0)
    best = 0.0
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        start, groups = time.perf_counter(), 0
        for batch in loader:
            groups += len(batch["X"])
        best = max(best, groups / (time.perf_counter() - start))
    return best


def bench_loader(paths: list[Path], workdir: Path) -> None:
    with open_dataset("bench", cache_dir=workdir / "cache") as data:
        dataset_rate = epoch_groups_per_second(data)
    with prepare(paths, CONFIG, cache_dir=workdir / "one-store", progress=False) as store:
        store_rate = epoch_groups_per_second(store)
    report(
        f"host loader, dataset of {len(paths)} (groups/s)",
        f"{dataset_rate:,.0f}",
        f"0.9 x one store {store_rate:,.0f}",
        dataset_rate >= 0.9 * store_rate,
    )


OPEN_UNDER_LIMIT = """
import os, resource, sys
import numpy as np
from ptychodata import open_dataset
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[2]), int(sys.argv[2])))
with open_dataset("many", cache_dir=sys.argv[1]) as data:
    served = sum(len(data.batch(part)["X"]) for part in np.array_split(np.arange(len(data)), 64))
    print(data.n_experiments, served, len(data), len(os.listdir("/proc/self/fd")))
"""


def bench_descriptors(workdir: Path, n_scans: int = 1000, limit: int = 1024) -> None:
    """Open a dataset of ``n_scans`` small scans in a process whose descriptor limit is ``limit``."""
    (workdir / "scans").mkdir()
    paths = write_scans(workdir / "scans", n_scans, 16, 16)
    dataset = Dataset.create("many", CONFIG, cache_dir=workdir / "cache")
    start = time.perf_counter()
    dataset.add(paths)
    print(f"setup: {n_scans} scans of 16 patterns added in {time.perf_counter() - start:.1f} s")
    run = subprocess.run([sys.executable, "-c", OPEN_UNDER_LIMIT, str(workdir / "cache"), str(limit)],
                         capture_output=True, text=True)
    fields = run.stdout.split()
    ok = run.returncode == 0 and len(fields) == 4 and fields[0] == str(n_scans) and fields[1] == fields[2]
    value = f"{fields[1]} groups, {fields[3]} fds" if ok else (run.stderr.strip().splitlines() or ["failed"])[-1][:60]
    report(f"open {n_scans} scans, serve every group", value, f"ulimit -n {limit}", ok)


def bench_order(n_groups: int = 10_000_000, n_scans: int = 1000) -> None:
    uids = [f"{k:020x}" for k in range(n_scans)]
    scan = np.repeat(np.arange(n_scans), n_groups // n_scans)
    local = np.tile(np.arange(n_groups // n_scans), n_scans)
    keys = GroupKeys.of(uids, scan, local, "bench")
    del scan, local
    tracemalloc.start()
    start = time.perf_counter()
    keys.order(0, 1)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] / 1e6
    tracemalloc.stop()
    report("epoch order of 10^7 groups (s)", f"{seconds:.2f}", "1.5", seconds <= 1.5)
    report("  extra memory (MB)", f"{peak:.0f}", "80", peak <= 80)
    # Block order (a corpus larger than memory): blocks of 4096 groups, windows of 16 blocks.
    tracemalloc.start()
    start = time.perf_counter()
    keys.epoch(0, 1, block=4096, window=16)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] / 1e6
    tracemalloc.stop()
    report("block order of 10^7 groups, block 4096 (s)", f"{seconds:.2f}", "1.5", seconds <= 1.5)
    report("  extra memory (MB)", f"{peak:.0f}", "320", peak <= 320)  # the order and 3 int64 arrays
    # Weights that ask 1.25 x each scan's groups: each group once, a quarter of them twice.
    per_scan = n_groups // n_scans
    mixing = Mixing(counts=np.full(n_scans, per_scan + per_scan // 4, np.int64), strata=np.zeros(n_scans, np.int64),
                    strata_names=("all",), description="1.25 x every scan")
    weighted = GroupKeys(keys.identities, "bench", keys.uids, mixing, np.repeat(np.arange(n_scans, dtype=np.int32), per_scan))
    start = time.perf_counter()
    items = len(weighted.epoch(0, 1))
    seconds = time.perf_counter() - start
    bound = 1.5 * items / 1e7
    report(f"weighted epoch order, {items / 1e7:.3g} x 10^7 items (s)", f"{seconds:.2f}", f"{bound:.2f}", seconds <= bound)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scans", type=int, default=100)
    parser.add_argument("--points", type=int, default=256)
    parser.add_argument("--N", type=int, default=64)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--only", choices=("changes", "loader", "order", "descriptors"),
                        help="run one part (default all)")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    if args.only in (None, "changes", "loader"):
        print(f"dataset of {args.scans} scans x {args.points} patterns, N={args.N}; gridsize 2, K=7\n")
        with tempfile.TemporaryDirectory(dir=args.workdir) as folder:
            workdir = Path(folder)
            (workdir / "scans").mkdir()
            paths = write_scans(workdir / "scans", args.scans + 1, args.points, args.N)
            bench_changes(paths[:-1], paths[-1], workdir)  # the loader reads the dataset made here
            if args.only != "changes":
                bench_loader(paths[:-1], workdir)
    if args.only in (None, "order"):
        bench_order()
    if args.only in (None, "descriptors"):
        with tempfile.TemporaryDirectory(dir=args.workdir) as folder:
            bench_descriptors(Path(folder))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
