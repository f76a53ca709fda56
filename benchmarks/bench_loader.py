"""DataLoader throughput over a prepared store, against a naive Dataset, an in-RAM TensorDataset
and the in-RAM gather bound.

    python benchmarks/bench_loader.py [--quick] [--points 20000] [--repeat R] [--workdir DIR]

Stores are built from random-pattern sources (N=64, K=7, gridsize 1 and 2) small enough to stay
in the page cache. Each loader runs a few warm-up batches (persistent workers start there), then
full, timed epochs (fresh passes through the same persistent workers): best of 3 without workers,
where an epoch takes well under a second, one epoch with workers (``--repeat`` to choose).
Contenders, all at the same batch size, worker count and shuffling:

  ptychodata   ``make_loader(store, batch)``: GroupedDataset.__getitems__ (one ``store.batch``
               gather per batch) through a DataLoader, persistent workers
  naive        a per-item ``__getitem__`` Dataset over ``np.load(mmap_mode="r")`` of the
               store's patterns/groups/coords/probes, default collate
  in-RAM TDS   ``torch.utils.data.TensorDataset`` of the grouped X (B, C, N, N), coordinates,
               indices and the probe (an expanded view), default collate
  bound (c)    ``np.take`` of the batch's pattern rows from an in-RAM copy into a reused buffer
               (``mode="clip"``: written straight into it)
               (the faster of one take and cache-sized takes); no DataLoader, one thread

Every DataLoader contender delivers the same per-group content (X, coords_relative,
coords_offsets, nn_indices, group_index, experiment_id, probe). GB/s counts X + probe bytes
(C·N²·4 + N²·8 per group); the bound moves X bytes only, so ratios are taken in groups/s.
Target: >= 60 000 groups/s at gridsize 2, N 64, batch 64 on 2 cores.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import machine, peak_rss_mib
from bench_store import random_source

from ptychodata import GroupingConfig, prepare
from ptychodata.torch import make_loader

TARGET = 60_000


class NaiveDataset(torch.utils.data.Dataset):
    """One group per ``__getitem__`` from memmaps of the store's files (the usual first attempt)."""

    def __init__(self, store):
        self.patterns = store.patterns
        self.probes = np.stack([store.probe(e) for e in range(store.n_experiments)])
        self.groups = store.groups
        self.group_experiment = store.group_experiment
        self.coords_relative = store.group_relative
        self.coords_offsets = store.group_centres
        self.x_scale = np.asarray(store.grouping.x_scale, np.float32)

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        members = np.asarray(self.groups[i])
        experiment = int(self.group_experiment[i])
        X = np.asarray(self.patterns[members]) * self.x_scale[experiment]
        return {
            "X": torch.from_numpy(X),
            "coords_relative": torch.from_numpy(np.asarray(self.coords_relative[i], np.float32)[:, None, :]),
            "coords_offsets": torch.from_numpy(np.asarray(self.coords_offsets[i], np.float32)[None, None, :]),
            "nn_indices": torch.from_numpy(members.astype(np.int64)),
            "group_index": torch.tensor(i, dtype=torch.int64),
            "experiment_id": torch.tensor(experiment, dtype=torch.int64),
            "probe": torch.from_numpy(np.array(self.probes[experiment])),
        }


def tensor_dataset(store) -> torch.utils.data.TensorDataset:
    """The whole grouped store in RAM as tensors (what fits-in-memory training code does)."""
    batch = store.batch(np.arange(len(store)), reuse=False)
    B, N = len(store), store.N
    probe = torch.from_numpy(np.array(store.probe(0)))[None].expand(B, N, N)
    keys = ("X", "coords_relative", "coords_offsets", "nn_indices", "group_index", "experiment_id")
    return torch.utils.data.TensorDataset(*(torch.from_numpy(batch[key]) for key in keys), probe)


def _n_groups(batch) -> int:
    return len(batch["X"]) if isinstance(batch, dict) else len(batch[0])


def time_epoch(loader, warmup: int, repeat: int = 1) -> float:
    """Groups/s over one full epoch (best of ``repeat``), after ``warmup`` batches of an
    abandoned pass (which start the persistent workers)."""
    iterator = iter(loader)
    for _ in range(warmup):
        if next(iterator, None) is None:
            break
    if hasattr(iterator, "close"):
        iterator.close()
    del iterator
    best = 0.0
    for _ in range(repeat):
        groups = 0
        start = time.perf_counter()
        for batch in loader:
            groups += _n_groups(batch)
        best = max(best, groups / (time.perf_counter() - start))
    return best


def torch_loader(dataset, batch_size: int, workers: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=False,
        generator=torch.Generator().manual_seed(0),
    )


def shutdown(loader) -> None:
    """Stop a loader's persistent workers now rather than at garbage collection."""
    inner = getattr(loader, "loader", loader)
    iterator = getattr(inner, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
    inner._iterator = None


def epoch_batches(n_groups: int, batch_size: int, seed: int = 0) -> list[np.ndarray]:
    order = np.random.default_rng(seed).permutation(n_groups)
    return [order[start : start + batch_size] for start in range(0, n_groups, batch_size)]


def bound_rate(patterns: np.ndarray, groups: np.ndarray, batches: list[np.ndarray]) -> float:
    """Groups/s of the in-RAM gather of the same pattern rows into a reused buffer (best of
    one np.take per batch and cache-sized np.takes; ``mode="clip"``, which writes straight
    into the buffer, where the default ``"raise"`` gathers into a temporary first)."""
    N = patterns.shape[-1]
    C = groups.shape[1]
    out = np.empty((len(batches[0]) * C, N, N), np.float32)
    out.fill(0)
    rows = max(1, (512 << 10) // (N * N * 4))

    def one_take(indices):
        flat = groups[indices].reshape(-1)
        np.take(patterns, flat, axis=0, out=out[: len(flat)], mode="clip")

    def blocked_take(indices):
        flat = groups[indices].reshape(-1)
        for start in range(0, len(flat), rows):
            stop = min(start + rows, len(flat))
            np.take(patterns, flat[start:stop], axis=0, out=out[start:stop], mode="clip")

    best = 0.0
    total = sum(len(b) for b in batches)
    for function in (one_take, blocked_take):
        function(batches[0])
        for _ in range(3):
            start = time.perf_counter()
            for indices in batches:
                function(indices)
            best = max(best, total / (time.perf_counter() - start))
    return best


def worker_costs(store, batches: list[np.ndarray]) -> dict[str, float]:
    """Milliseconds per batch of what a loader does before a batch leaves its worker."""
    batches = batches[: max(2, min(len(batches), 40))]
    if len(batches) > 1 and len(batches[-1]) != len(batches[0]):
        batches = batches[:-1]

    def reused(indices):
        store.batch(indices)

    def fresh(indices):
        store.batch(indices, reuse=False)

    def fresh_shared(indices):  # what a DataLoader worker does to send a from_numpy batch
        for value in store.batch(indices, reuse=False).values():
            torch.from_numpy(value).share_memory_()

    costs = {}
    for name, function in (("reuse", reused), ("fresh", fresh), ("fresh+share", fresh_shared)):
        function(batches[0])
        start = time.perf_counter()
        for indices in batches:
            function(indices)
        costs[name] = (time.perf_counter() - start) / len(batches) * 1e3
    return costs


def run(args: argparse.Namespace, workdir: Path) -> None:
    N = 64
    source = random_source(workdir / "source.npz", args.points, N)
    print(
        f"source: {args.points} random patterns, N={N}, {source.stat().st_size / 2**20:.0f} MiB; "
        f"K=7; stores under {workdir}"
    )
    header = (
        f"{'g':>2} {'C':>2} {'batch':>5} {'wk':>3} | {'ptychodata':>10} {'GB/s':>5} | {'naive':>8} "
        f"{'in-RAM TDS':>10} | {'bound (c)':>9} | {'ptd/c':>6} {'naive/c':>7} {'TDS/c':>6}"
    )
    rows, diagnostics, best_target = [], [], None
    for gridsize in args.gridsizes:
        store = prepare(
            source,
            GroupingConfig(gridsize=gridsize, neighbor_count=7, seed=0),
            cache_dir=workdir / "cache",
            progress=False,
        )
        C = store.C
        group_bytes = C * N * N * 4 + N * N * 8
        patterns = np.array(store.patterns)
        groups = np.array(store.groups)
        naive = NaiveDataset(store)
        tds = tensor_dataset(store)
        for batch_size in args.batches:
            batches = epoch_batches(len(store), batch_size)
            bound = bound_rate(patterns, groups, batches)
            costs = worker_costs(store, batches)
            diagnostics.append((gridsize, C, batch_size, costs))
            for workers in args.workers:
                warmup = 2 * workers + 2
                repeat = args.repeat or (3 if workers == 0 else 1)
                rates = {}
                loader = make_loader(store, batch_size, num_workers=workers, pin_memory=False, seed=0,
                                     shared_ring=args.shared_ring if workers else 0)
                rates["ptd"] = time_epoch(loader, warmup, repeat)
                shutdown(loader)
                for name, dataset in (("naive", naive), ("tds", tds)):
                    loader = torch_loader(dataset, batch_size, workers)
                    rates[name] = time_epoch(loader, warmup, repeat)
                    shutdown(loader)
                row = (
                    f"{gridsize:>2} {C:>2} {batch_size:>5} {workers:>3} | {rates['ptd']:>10,.0f} "
                    f"{rates['ptd'] * group_bytes / 1e9:>5.2f} | {rates['naive']:>8,.0f} "
                    f"{rates['tds']:>10,.0f} | {bound:>9,.0f} | {rates['ptd'] / bound:>6.0%} "
                    f"{rates['naive'] / bound:>7.0%} {rates['tds'] / bound:>6.0%}"
                )
                rows.append(row)
                print(row if len(rows) > 1 else header + "\n" + row, flush=True)
                if (
                    gridsize == 2
                    and batch_size == 64
                    and (best_target is None or rates["ptd"] > best_target[0])
                ):
                    best_target = (rates["ptd"], workers)
        del patterns, groups, naive, tds, store
    repeats = f"best of {args.repeat}" if args.repeat else "best of 3 at wk=0, one epoch with workers"
    print(
        f"groups/s over full epochs ({repeats}; shuffled; warm-up batches first, persistent workers "
        "started before timing); GB/s = ptychodata's (X + probe) bytes, C*N*N*4 + N*N*8 per group; "
        "wk = DataLoader workers"
    )
    print(
        "bound (c) = in-RAM np.take of the pattern rows into a reused buffer, X only, one thread, no loader"
    )
    print()
    print("where a worker's time goes, ms per batch (store.batch in this process, no DataLoader):")
    print(
        f"{'g':>2} {'C':>2} {'batch':>5} | {'reuse=True':>10} {'reuse=False':>11} {'+share_memory_':>14} | "
        f"{'groups/s at reuse=False':>23} {'+share':>8}"
    )
    for gridsize, C, batch_size, costs in diagnostics:
        print(
            f"{gridsize:>2} {C:>2} {batch_size:>5} | {costs['reuse']:>10.2f} {costs['fresh']:>11.2f} "
            f"{costs['fresh+share']:>14.2f} | {batch_size / costs['fresh'] * 1e3:>23,.0f} "
            f"{batch_size / costs['fresh+share'] * 1e3:>8,.0f}"
        )
    print(
        "reuse=False is what GroupedDataset asks for; '+share_memory_' adds moving every tensor into shared "
        "memory, as a DataLoader worker must to send a batch"
    )
    print()
    if best_target is not None:
        rate, workers = best_target
        verdict = "met" if rate >= TARGET else "NOT met"
        print(
            f"target >= {TARGET:,} groups/s at gridsize 2, N 64, batch 64: best ptychodata loader "
            f"{rate:,.0f} groups/s (workers={workers}) -> {verdict}"
        )
    print(f"peak RSS {peak_rss_mib():.0f} MiB")


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="8000 patterns, batch 64 and 512, workers 0 and 2 (about a minute)",
    )
    parser.add_argument(
        "--points", type=int, help="patterns in the source (default 20000; 8000 with --quick)"
    )
    parser.add_argument("--batches", type=_ints, help="comma-separated batch sizes (default 64,256,512)")
    parser.add_argument("--workers", type=_ints, help="comma-separated worker counts (default 0,1,2)")
    parser.add_argument("--shared-ring", type=int, default=0,
                        help="workers gather into a ring of this many reused shared-memory batches (default 0)")
    parser.add_argument("--gridsizes", type=_ints, default=[1, 2], help="comma-separated (default 1,2)")
    parser.add_argument(
        "--repeat",
        type=int,
        help="timed epochs per loader, best kept (default 3 without workers, 1 with workers)",
    )
    parser.add_argument(
        "--workdir", type=Path, help="scratch directory (default: a temporary one under /tmp)"
    )
    args = parser.parse_args()
    args.points = args.points or (8000 if args.quick else 20_000)
    args.batches = args.batches or ([64, 512] if args.quick else [64, 256, 512])
    args.workers = args.workers or ([0, 2] if args.quick else [0, 1, 2])
    print(f"machine: {machine()}")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, sharing strategy "
        f"{torch.multiprocessing.get_sharing_strategy()}"
    )
    workdir = Path(tempfile.mkdtemp(dir=args.workdir, prefix="ptychodata-bench-loader-"))
    start = time.perf_counter()
    try:
        run(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
