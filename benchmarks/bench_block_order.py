"""The host loader over a store read from disk (not from the page cache): block order against
the fully random order, beside the disk's sequential read rate.

    sudo python benchmarks/bench_block_order.py [--gib 4] [--N 64] [--batch 256] [--block 4096]
                                                [--window 16[,8...]] [--seconds 60] [--workdir DIR]
                                                [--memory-gib G] [--scans K]

A store of --gib GiB of random patterns (gridsize 1: a group reads one pattern) is prepared,
then, each time after dropping the page cache (root: ``/proc/sys/vm/drop_caches``):
  sequential   the patterns file read start to end in 8 MiB reads: the disk's rate, read before
               and after block order (a virtual disk's rate drifts); the bound takes their mean
  block        ``make_loader(store, batch, block=..., window=...)``, one epoch (or --seconds);
               where the store is larger than the memory available, each window served is dropped;
               then the next epoch without dropping the cache (the loader's own rate where the store
               fits; from the disk again where windows are dropped as served); each --window in turn,
               each between its own two sequential reads; then, for the first --window and where
               windows are dropped, one epoch with every window kept (left to the kernel's reclaim)
  random       ``make_loader(store, batch)``, the full permutation, one epoch (or --seconds)
The loaders' rates count pattern bytes delivered. Target: block >= 0.8 x sequential.

With --scans K the same patterns are K scan files of a dataset (``open_dataset``): block order
takes blocks within each scan, ordered by keys, and reads a window ahead scan by scan; the
sequential rate reads the scans' patterns files one after another.

With --memory-gib, the process first moves itself into a new cgroup (v2) whose ``memory.max`` is
G GiB, page cache included: a store larger than that cannot stay cached, as on a machine whose
memory is smaller than its data. Each loader's line gives how long its first batch took (in block
order, the first window's read, which no serving overlaps), the rate after it, and, in the
cgroup, what the kernel reclaimed meanwhile (``memory.stat``: pages stolen, and file pages read
again soon after).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from _common import machine
from bench_store import random_source

from ptychodata import Dataset, GroupingConfig, open_dataset, prepare
from ptychodata.torch import make_loader

CONFIG = GroupingConfig(gridsize=1, neighbor_count=4, seed=0)


def limit_memory(gib: float) -> str:
    """Move this process into a new child cgroup with ``memory.max`` = ``gib`` GiB; its path."""
    root = Path("/sys/fs/cgroup")
    if "memory" not in (root / "cgroup.controllers").read_text().split():
        raise SystemExit(f"{root}: no cgroup v2 memory controller here; run without --memory-gib")
    if "memory" not in (root / "cgroup.subtree_control").read_text().split():
        (root / "cgroup.subtree_control").write_text("+memory\n")
    group = root / f"bench-block-order-{os.getpid()}"
    group.mkdir()
    (group / "memory.max").write_text(f"{int(gib * 2**30)}\n")
    (group / "cgroup.procs").write_text(f"{os.getpid()}\n")
    return str(group)


def drop_page_cache() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as handle:
        handle.write("1\n")


def sequential_rate(paths: list[Path]) -> float:
    drop_page_cache()
    start, done = time.perf_counter(), 0
    for path in paths:
        with open(path, "rb", buffering=0) as handle:
            while chunk := handle.read(8 << 20):
                done += len(chunk)
    return done / (time.perf_counter() - start)


def reclaim_counts(group: str | None) -> dict[str, int]:
    """The cgroup's reclaim counters (pages) from its ``memory.stat``; empty without a cgroup."""
    if group is None:
        return {}
    fields = dict(line.split() for line in Path(group, "memory.stat").read_text().splitlines())
    return {key: int(fields.get(key, 0)) for key in ("pgsteal", "workingset_refault_file")}


def loader_rate(store, batch: int, seconds: float, *, group: str | None, cold: bool = True, keep: bool = False,
                **order) -> tuple[float, float, str]:
    """Pattern bytes per second over one epoch (or ``seconds``), the share of the epoch done, and
    what happened meanwhile: how long the first batch took (block order: the first window's
    read, which nothing overlaps) and what the kernel reclaimed in ``group``; ``cold``: the
    page cache dropped first; ``keep``: windows served are never dropped."""
    loader = make_loader(store, batch, num_workers=0, background=2, **order)
    if keep:
        loader.sampler.release = None
    if cold:
        drop_page_cache()
    before = reclaim_counts(group)
    start, groups, first = time.perf_counter(), 0, None
    for batch_arrays in loader:
        if first is None:
            first, first_groups = time.perf_counter() - start, len(batch_arrays["X"])
        groups += len(batch_arrays["X"])
        if time.perf_counter() - start > seconds:
            break
    elapsed = time.perf_counter() - start
    after = reclaim_counts(group)
    page = os.sysconf("SC_PAGE_SIZE") / 2**20
    notes = ""
    if first is not None and elapsed > first:
        after_first = (groups - first_groups) * store.N * store.N * 4 / (elapsed - first) / 2**20
        notes = f"   first batch after {first:.2f} s, {after_first:.0f} MiB/s after it"
    if after:
        notes += (f", reclaimed {(after['pgsteal'] - before['pgsteal']) * page:.0f} MiB, read again "
                  f"{(after['workingset_refault_file'] - before['workingset_refault_file']) * page:.0f} MiB")
    return groups * store.N * store.N * 4 / elapsed, groups / len(store), notes


def dropping(store, batch: int, block: int, window: int) -> bool:
    """Whether block order drops the windows it has served from this store (make_loader decides)."""
    return make_loader(store, batch, block=block, window=window, background=0).sampler.release is not None


def block_runs(store, patterns: list[Path], args, window: int, group: str | None) -> bool:
    """Block order with ``window`` blocks a window, first epoch and next, between two sequential
    reads of the patterns file; whether windows are dropped as served."""
    drops = dropping(store, args.batch, args.block, window)
    size = window * args.block * store.N * store.N * 4 / 2**20
    print(f"\n  window of {window} blocks ({size:.0f} MiB of patterns): block order drops each window served "
          f"from memory: {'yes, the store is larger than the memory available' if drops else 'no, the store fits'}")
    before = sequential_rate(patterns)
    print(f"{'sequential read of patterns.npy':<40} {before / 2**20:>8.0f} MiB/s")
    order = {"block": args.block, "window": window}
    block, done, notes = loader_rate(store, args.batch, args.seconds, group=group, **order)
    again, again_done, again_notes = loader_rate(store, args.batch, args.seconds, group=group, cold=False, **order)
    after = sequential_rate(patterns)
    disk = (before + after) / 2
    print(f"{'sequential read of patterns.npy, again':<40} {after / 2**20:>8.0f} MiB/s   mean {disk / 2**20:.0f} MiB/s")
    verdict = "ok" if block >= 0.8 * disk else "NOT met"
    print(f"{'loader, block order':<40} {block / 2**20:>8.0f} MiB/s   ({done:.0%} of an epoch)   "
          f"bound 0.8 x sequential = {0.8 * disk / 2**20:.0f}  {verdict}{notes}")
    where = ("windows were dropped as served: read from the disk again" if drops
             else "what the page cache kept (all of a store that fits): the loader's own rate")
    print(f"{'loader, block order, next epoch':<40} {again / 2**20:>8.0f} MiB/s   ({again_done:.0%} of an epoch)   "
          f"{again / disk:.2f} x sequential; {where}{again_notes}")
    return drops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=4.0)
    parser.add_argument("--N", type=int, default=64)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--block", type=int, default=4096)
    parser.add_argument("--window", type=lambda text: [int(w) for w in text.split(",")], default=[16],
                        help="blocks a window; several, comma-separated, are measured in turn on one store")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--memory-gib", type=float, help="run in a cgroup with this memory.max (page cache included)")
    parser.add_argument("--scans", type=int, default=0, help="the patterns as a dataset of this many scans")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench_block_order needs root: it drops the page cache before each run")
    print(f"machine: {machine()}")
    group = None
    if args.memory_gib is not None:
        group = limit_memory(args.memory_gib)
        print(f"memory: cgroup {group}, memory.max {args.memory_gib:g} GiB (page cache included)")
    points = int(args.gib * 2**30 / (4 * args.N * args.N))
    with tempfile.TemporaryDirectory(dir=args.workdir) as folder:
        with corpus(Path(folder), points, args) as store:
            patterns = sorted(Path(folder, "cache").rglob("patterns.npy"))
            size = sum(path.stat().st_size for path in patterns) / 2**30
            what = f"a dataset of {args.scans} scans" if args.scans else "one store"
            print(f"{what}: {points} patterns of {args.N}x{args.N} float32 ({size:.2f} GiB), batch {args.batch}, "
                  f"block {args.block} groups")
            drops = [block_runs(store, patterns, args, window, group) for window in args.window]
            print()
            disk = sequential_rate(patterns)
            if drops[0]:
                kept, done, notes = loader_rate(store, args.batch, args.seconds, group=group, keep=True,
                                                block=args.block, window=args.window[0])
                print(f"{'loader, block order, windows kept':<40} {kept / 2**20:>8.0f} MiB/s   ({done:.0%} of an "
                      f"epoch)   {kept / disk:.2f} x sequential ({disk / 2**20:.0f} MiB/s), window of "
                      f"{args.window[0]} blocks{notes}")
            randomly, done, notes = loader_rate(store, args.batch, args.seconds, group=group)
            print(f"{'loader, random order':<40} {randomly / 2**20:>8.0f} MiB/s   ({done:.0%} of an epoch)   "
                  f"{randomly / disk:.2f} x sequential{notes}")


def corpus(folder: Path, points: int, args):
    """``points`` random patterns prepared as one store, or with ``--scans`` as a dataset of that
    many scans (each source removed once prepared, to spare the disk); open, to be closed."""
    if not args.scans:
        source = random_source(folder / "source.npz", points, args.N)
        return prepare(source, CONFIG, cache_dir=folder / "cache", progress=False)
    dataset = Dataset.create("bench", CONFIG, cache_dir=folder / "cache")
    for k in range(args.scans):
        source = random_source(folder / f"scan{k}.npz", points // args.scans, args.N, seed=k)
        dataset.add(source)
        source.unlink()
    return open_dataset("bench", cache_dir=folder / "cache")


if __name__ == "__main__":
    main()
