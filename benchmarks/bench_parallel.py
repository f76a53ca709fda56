"""Preparing many scans in parallel: throughput with 1, 2, 4, 8 workers, against one worker's
and against copying the same files with as many parallel ``cp``.

    python benchmarks/bench_parallel.py [--scans 32] [--mib 512] [--N 64] [--workers 1,2,4,8]
                                        [--workdir DIR]

Each run prepares every scan into an empty cache with ``Dataset.add(executor=...)`` on a
spawned process pool of W workers (hash, read, copy and group each file; publish one manifest),
from the time ``add`` is called until it returns, pool start-up included. A build's files are
fsync-ed before it is published, so the copy bound is W ``cp`` processes copying the same files at
once (``xargs -P W``), each copy then fsync-ed (``sync FILE``); plain ``cp`` (into the page cache)
is printed beside it. The sources are written just before, so every run reads them from the page
cache where memory allows.

Targets, each printed beside its figure from the same run:
  throughput with W workers   >= 0.8 x W x one worker's, or >= 0.8 x W parallel cp + sync of the files
  each worker's peak RSS      <= 1.1 x a lone worker's
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import Executor, ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from _common import machine

from ptychodata import Dataset, GroupingConfig, ScanData

CONFIG = GroupingConfig(gridsize=2, neighbor_count=7, seed=0)


def write_scan(path: Path, points: int, N: int, seed: int) -> int:
    """One scan of random patterns on a jittered raster; its size in bytes."""
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(points)))
    rows, cols = np.divmod(np.arange(points), side)
    scan = ScanData.from_arrays(
        diffraction=rng.random((points, N, N), dtype=np.float32),
        xcoords=cols * 6.0 + 40 + rng.uniform(-0.5, 0.5, points),
        ycoords=rows * 6.0 + 40 + rng.uniform(-0.5, 0.5, points),
        probe=np.ones((N, N), np.complex64),
    )
    return scan.save(path).stat().st_size


def _measured(folder: str, task, args, kwargs):
    """Run ``task`` in a worker, then record the worker's peak RSS (KiB) under ``folder``."""
    result = task(*args, **kwargs)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    Path(folder, f"{os.getpid()}.rss").write_text(str(peak))
    return result


class MeasuredPool(Executor):
    """A spawned process pool whose workers each leave their peak RSS in a folder."""

    def __init__(self, workers: int, folder: Path):
        self.pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"))
        self.folder = folder

    def submit(self, fn, /, *args, **kwargs):
        return self.pool.submit(_measured, str(self.folder), fn, args, kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.pool.shutdown(wait=wait, cancel_futures=cancel_futures)

    def peaks_mib(self) -> list[float]:
        return [int(p.read_text()) / 1024 for p in self.folder.glob("*.rss")]


def prepare_with(workers: int, paths: list[Path], workdir: Path) -> tuple[float, list[float]]:
    """Seconds to add every scan to an empty dataset on ``workers`` processes; each worker's peak RSS."""
    cache, rss = workdir / f"cache-{workers}", workdir / f"rss-{workers}"
    rss.mkdir()
    dataset = Dataset.create("bench", CONFIG, cache_dir=cache)
    pool = MeasuredPool(workers, rss)
    try:
        start = time.perf_counter()
        change = dataset.add(paths, executor=pool)
        seconds = time.perf_counter() - start
    finally:
        pool.shutdown()
    assert len(change.added) == len(paths), change
    peaks = pool.peaks_mib()
    shutil.rmtree(cache)
    shutil.rmtree(rss)
    return seconds, peaks


def copy_with(workers: int, paths: list[Path], workdir: Path, *, durable: bool) -> float:
    """Seconds for ``workers`` parallel cp processes to copy every file; with ``durable``, each
    copy is also fsync-ed (``sync FILE``), as a build's files are."""
    target = workdir / f"copy-{workers}"
    target.mkdir()
    listing = "\n".join(map(str, paths)) + "\n"
    copy = 'cp "$0" "$1" && sync "$1/$(basename "$0")"' if durable else 'cp "$0" "$1"'
    start = time.perf_counter()
    subprocess.run(["xargs", "-P", str(workers), "-I", "{}", "sh", "-c", copy, "{}", str(target)],
                   input=listing.encode(), check=True)
    seconds = time.perf_counter() - start
    shutil.rmtree(target)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=32)
    parser.add_argument("--mib", type=float, default=512, help="size of each scan's patterns")
    parser.add_argument("--N", type=int, default=64)
    parser.add_argument("--workers", default="1,2,4,8")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    points = max(16, int(args.mib * 2**20 / (4 * args.N * args.N)))
    print(f"# {machine()}")
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="bench-parallel-") as folder:
        workdir = Path(folder)
        sources = workdir / "scans"
        sources.mkdir()
        paths = [sources / f"scan{k:03d}.npz" for k in range(args.scans)]
        with ProcessPoolExecutor(min(8, os.cpu_count() or 1), mp_context=get_context("spawn")) as pool:
            sizes = list(pool.map(write_scan, paths, [points] * len(paths), [args.N] * len(paths), range(len(paths))))
        total = sum(sizes) / 2**30
        print(f"{args.scans} scans x {points} patterns of {args.N}x{args.N} float32: {total:.2f} GiB in all")
        print(f"{'workers':>7} {'prepare GiB/s':>14} {'W x one':>9} {'cp+sync GiB/s':>14} {'cp GiB/s':>9} "
              f"{'peak RSS MiB':>13} {'<= 1.1 x lone':>14}")
        one, lone_rss = None, None
        for count in workers:
            seconds, peaks = prepare_with(count, paths, workdir)
            durable = total / copy_with(count, paths, workdir, durable=True)
            cached = total / copy_with(count, paths, workdir, durable=False)
            rate = total / seconds
            if one is None:
                one, lone_rss = rate / count, max(peaks)
            scaled = count * one
            met = "met" if rate >= 0.8 * scaled or rate >= 0.8 * durable else "NOT met"
            rss_met = "met" if max(peaks) <= 1.1 * lone_rss else "NOT met"
            print(f"{count:>7} {rate:>14.2f} {scaled:>9.2f} {durable:>14.2f} {cached:>9.2f} "
                  f"{max(peaks):>13.0f} {f'{lone_rss * 1.1:.0f} {rss_met}':>14}  "
                  f"{rate / scaled:.2f} x W x one, {rate / durable:.2f} x cp+sync; target >= 0.8 x either: {met}")

if __name__ == "__main__":
    main()
