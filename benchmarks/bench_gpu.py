"""GPU side: host->device copies of loader batches, patch extraction on the device, a DDP epoch.

    python benchmarks/bench_gpu.py h2d      [--workers 0,4] [--batches 64,256,512] [--points 32768]
    python benchmarks/bench_gpu.py patches  [--sizes 1000,4000] [--positions 10000,100000]
    python benchmarks/bench_gpu.py resident [--resident-batches 64,256,1024] [--resident-points 65536] [--diagnose]
    python benchmarks/bench_gpu.py all      # h2d, then patches, then resident
    torchrun --nproc_per_node=2 benchmarks/bench_gpu.py ddp [--batch 256] [--ddp-workers 0] [--compute conv]
                                                            [--resident [--shard-by block]] [--epochs 1]

Run from the repository root; the package is imported from the installed one, else from ``src/``.
Each run makes its own data (a random-pattern source prepared into a store under a temporary
directory, or ``--workdir``) and removes it. Without CUDA the GPU parts are skipped with a
message and the CPU parts still run (loader throughput; NumPy and torch-CPU patch extraction;
DDP over gloo on the CPU).

h2d      loader batches (``make_loader``, pin_memory=True, gridsize 2, N 64) moved with
         ``to_device(batch, "cuda", non_blocking=True)``: GB/s of the copies alone (GPU time
         between CUDA events around each batch's copies, all tensors of the batch, queued behind
         a short GPU sleep as in a busy training stream; and, for every other batch, issued to
         an idle stream), and end-to-end loader throughput; against the bound, one pinned host
         tensor of the batch's bytes copied with ``.to("cuda", non_blocking=True)`` in a loop.
         Target: queued copies >= 70 % of the bound.
patches  ``PatchExtractor`` on the GPU (after warm-up, synchronized) against NumPy
         ``extract_patches`` on the CPU into a reused output, N 64, complex64 objects.
resident ``make_loader(store, B, resident=True, device="cuda")`` (a ``DeviceStore``: frames,
         probes and per-group tables on the GPU, each batch gathered there) for frames held as
         float32 pre-scaled (the default for float32 stores: X is one index_select), float32
         scaled in the gather (``prescale=False``), uint16 counts and bfloat16 (compact stores,
         decoded in the gather by one Triton launch per run of batches; counts also with torch
         ops, ``kernel="torch"``): groups/s over whole epochs (set_epoch, iterate, synchronize at
         the end) and the share of that time the host spent issuing them; against the bound of
         the stored dtype, ``torch.index_select`` of the same stored bytes per batch (B·C frames
         + B probes' bytes) from the same resident frames into a preallocated output, with
         random indices, measured in the same run: 3 rounds of a run of each, best of each
         (``--gather-mib`` adds lines for other run sizes). Target: >= 80 % of the bound at every batch
         size for the default gathers. ``--diagnose`` adds the device time of one gather per run
         of batches (CUDA events) against index_select of random rows of the same bytes.
ddp      one process per GPU (NCCL; gloo on the CPU): ``make_loader(store, batch,
         distributed=True)`` over one store, batches to ``cuda:{local_rank}``, a tiny DDP conv
         step (or a sum; the default on the CPU), one warm-up pass then ``--epochs`` timed epochs
         (default 1); rank 0 prints every rank's groups/s and epoch time and checks that the ranks
         together saw every group in the first timed epoch. ``--resident``: each rank's loader is
         ``make_loader(store, batch, distributed=True, resident=True, device=f"cuda:{local_rank}")``
         (every rank holds all frames), batches already on the device; rank 0 also prints each
         rank's DeviceStore bytes, its build time, the peak device memory allocated
         (``torch.cuda.max_memory_allocated``, from before the DeviceStore to the end) and the
         index_select bound of the ``resident`` part on that rank's frames. ``--shard-by block``
         (or ``scan``): each rank holds only its share of the frames
         (``make_loader(..., resident=True, shard_by=...)``) and draws its batches from it; the
         held bytes then show each share, and the coverage check that every group was served.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

try:
    import ptychodata  # noqa: F401
except ImportError:  # a bare checkout on the device machine: use its src/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _common import machine, peak_rss_mib
from bench_store import random_source

from ptychodata import GroupingConfig, open_store, prepare
from ptychodata._runtime import usable_cores
from ptychodata.io import write_npz
from ptychodata.patches import extract_patches
from ptychodata.torch import PatchExtractor, SharedBatch, make_loader, to_device

N = 64
H2D_TARGET = 0.70
QUEUE_CYCLES = 2_000_000  # a GPU sleep of ~1 ms, longer than the host takes to issue a batch's copies
LOG: list[str] = []  # what ran and what was skipped, printed at the end


def note(line: str) -> None:
    LOG.append(line)
    print(line, flush=True)


def cuda_ok() -> bool:
    return torch.cuda.is_available() and torch.cuda.device_count() > 0


def cpus() -> int:
    return usable_cores()


def shm_line() -> str:
    """/dev/shm size: DataLoader workers hand every batch over in shared memory."""
    try:
        total = shutil.disk_usage("/dev/shm").total
    except OSError:
        return "no /dev/shm"
    warn = " (small: workers may fail with 'insufficient shared memory')" if total < 2**30 else ""
    return f"/dev/shm {total / 2**30:.1f} GiB{warn}"


def build_store(workdir: Path, points: int, gridsize: int = 2):
    start = time.perf_counter()
    source = random_source(workdir / f"source{points}.npz", points, N)
    store = prepare(
        source,
        GroupingConfig(gridsize=gridsize, neighbor_count=7, seed=0),
        cache_dir=workdir / "cache",
        progress=False,
    )
    print(
        f"store: {len(store)} groups, gridsize {gridsize}, N {N}, from {points} random patterns "
        f"({time.perf_counter() - start:.1f} s to make and prepare)",
        flush=True,
    )
    return store


def batch_bytes(batch: dict) -> int:
    return sum(value.nbytes for value in batch.values())


def close_pass(loader, warmup: int, step=None) -> None:
    """Run ``warmup`` batches of a pass (starts persistent workers), then abandon the pass."""
    iterator = iter(loader)
    for _ in range(warmup):
        batch = next(iterator, None)
        if batch is None:
            break
        if step is not None:
            step(batch)
    iterator.close()


def stop_workers(loader) -> None:
    inner = loader.loader
    if getattr(inner, "_iterator", None) is not None and hasattr(inner._iterator, "_shutdown_workers"):
        inner._iterator._shutdown_workers()
    inner._iterator = None


# ---------------------------------------------------------------------------------------- h2d
def pinned_bound(nbytes: int, copies: int) -> float:
    """GB/s of ``.to("cuda", non_blocking=True)`` of one pinned host tensor of ``nbytes``."""
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    host.fill_(1)
    for _ in range(3):
        host.to("cuda", non_blocking=True)
    torch.cuda.synchronize()
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(copies):
            host.to("cuda", non_blocking=True)
        torch.cuda.synchronize()
        best = max(best, nbytes * copies / (time.perf_counter() - start) / 1e9)
    return best


def pinned_batch_rate(batch: dict, copies: int) -> float:
    """GB/s of ``to_device`` of one batch's tensors, copied once into pinned memory (per-tensor
    overheads included, loader excluded)."""
    host = {key: value.clone().pin_memory() for key, value in batch.items()}
    nbytes = batch_bytes(host)
    for _ in range(3):
        to_device(host, "cuda")
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(copies):
        to_device(host, "cuda", non_blocking=True)
    torch.cuda.synchronize()
    return nbytes * copies / (time.perf_counter() - start) / 1e9


def bench_h2d(args, workdir: Path) -> None:
    print("\n== h2d: loader batches host -> device ==")
    cuda = cuda_ok()
    if not cuda:
        note(
            "h2d: no CUDA: skipped the host->device copies and the pinned bound; "
            "the loader part runs on the CPU (pin_memory=False)"
        )
    store = build_store(workdir, args.points)
    group_bytes = store.C * N * N * 4 + N * N * 8
    if cuda:
        print(
            f"{'batch':>5} {'wk':>3} | {'copy GB/s':>9} {'bound GB/s':>10} {'ratio':>6} {'dict bound':>10} "
            f"{'idle GB/s':>9} | "
            f"{'loader groups/s':>15} {'e2e GB/s':>8} {'copy share':>10} | pinned, one buffer"
        )
    else:
        print(f"{'batch':>5} {'wk':>3} | {'loader groups/s':>15} {'GB/s':>6}")
    worst = None
    for batch_size in args.batches:
        for workers in args.workers:
            loader = make_loader(store, batch_size, num_workers=workers, pin_memory=cuda, seed=0,
                                 background=args.background)
            move = (lambda b: to_device(b, "cuda", non_blocking=True)) if cuda else None
            close_pass(loader, 2 * workers + 2, move)
            if cuda:
                torch.cuda.synchronize()
            groups = nbytes = batches = pinned = one_buffer = 0
            events = {"queued": [], "idle": []}
            first = None
            start = time.perf_counter()
            for batch in loader:
                if cuda:
                    # Alternate batches: copies queued behind a short GPU sleep (the events then
                    # time the copies alone, as in a busy training stream) or issued to an idle
                    # stream (the events also catch the host's issue latency).
                    kind = "queued" if batches % 2 == 0 else "idle"
                    if kind == "queued":
                        torch.cuda._sleep(QUEUE_CYCLES)
                    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    begin.record()
                    to_device(batch, "cuda", non_blocking=True)
                    end.record()
                    events[kind].append((begin, end, batch_bytes(batch)))
                    pinned += bool(batch["X"].is_pinned())
                    one_buffer += isinstance(batch, SharedBatch)
                groups += len(batch["X"])
                nbytes += batch_bytes(batch)
                batches += 1
                if first is None:
                    first = {key: value.clone() for key, value in batch.items()}
            if cuda:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            copy_rates = {
                kind: sum(b for _, _, b in timed) / (sum(t0.elapsed_time(t1) for t0, t1, _ in timed) / 1e3) / 1e9
                for kind, timed in events.items()
                if timed
            }
            copy_seconds = sum(b for timed in events.values() for *_, b in timed) / 1e9 / copy_rates.get("queued", 1)
            stop_workers(loader)
            if not cuda:
                print(
                    f"{batch_size:>5} {workers:>3} | {groups / seconds:>15,.0f} "
                    f"{groups * group_bytes / seconds / 1e9:>6.2f}",
                    flush=True,
                )
                continue
            copy_rate = copy_rates["queued"]
            idle_rate = copy_rates.get("idle", float("nan"))
            copies = max(20, min(200, int(4e9 // batch_bytes(first))))
            bound = pinned_bound(batch_bytes(first), copies)
            dict_bound = pinned_batch_rate(first, copies)
            ratio = copy_rate / bound
            worst = ratio if worst is None else min(worst, ratio)
            print(
                f"{batch_size:>5} {workers:>3} | {copy_rate:>9.2f} {bound:>10.2f} {ratio:>6.0%} "
                f"{dict_bound:>10.2f} {idle_rate:>9.2f} | {groups / seconds:>15,.0f} {nbytes / seconds / 1e9:>8.2f} "
                f"{copy_seconds / seconds:>10.0%} | {pinned}/{batches} {one_buffer}/{batches}",
                flush=True,
            )
    if cuda:
        print("copy GB/s = all bytes of each batch (X, probe, coords, indices) / GPU time of its to_device,")
        print("  every other batch: its non_blocking copies queued behind a ~1 ms GPU sleep, between CUDA events;")
        print("idle GB/s = the other batches, copied to an idle stream (the events also time the host's issue latency);")
        print("bound = one pinned uint8 tensor of a batch's bytes, .to('cuda', non_blocking=True) in a loop;")
        print("dict bound = to_device of a pinned copy of one batch (its per-tensor overheads, no loader);")
        print(
            "loader groups/s and e2e GB/s = whole epoch wall time, loader + copies; copy share = copies/epoch;"
        )
        print("pinned = batches arriving in pinned memory; one buffer = batches arriving as one SharedBatch buffer")
        verdict = "met" if worst >= H2D_TARGET else "NOT met"
        note(
            f"h2d: ran on {torch.cuda.get_device_name()}; worst copy/bound {worst:.0%} "
            f"(target >= {H2D_TARGET:.0%}: {verdict})"
        )
    else:
        note("h2d: ran the CPU loader part (groups/s; GB/s = X + probe bytes per group)")


# ----------------------------------------------------------------------------------- resident
RESIDENT_TARGET_RATIO = 0.80
# (label, store encoding, DeviceStore options): what is held and how it is gathered.
RESIDENT_VARIANTS = [
    ("float32 pre-scaled", "float32", {}),
    ("float32 scale in gather", "float32", {"prescale": False}),
    ("uint16 counts", "uint16", {}),
    ("uint16 counts, torch ops", "uint16", {"kernel": "torch"}),
    ("bfloat16", "bfloat16", {}),
]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def counts_source(path: Path, n_points: int, N: int) -> Path:
    """An uncompressed .npz of random whole counts (uint16, 0 to 4000), written in chunks."""
    side = int(np.ceil(np.sqrt(n_points)))
    rows, cols = np.divmod(np.arange(n_points), side)
    scratch = path.with_suffix(".patterns.npy")
    patterns = np.lib.format.open_memmap(scratch, mode="w+", dtype=np.uint16, shape=(n_points, N, N))
    rng = np.random.default_rng(0)
    for start in range(0, n_points, 4096):
        patterns[start : start + 4096] = rng.integers(0, 4000, (min(4096, n_points - start), N, N), dtype=np.uint16)
    patterns.flush()
    write_npz(path, {"diff3d": patterns, "xcoords": cols * 4.0 + 0.5, "ycoords": rows * 4.0 + 0.5,
                     "probeGuess": np.ones((N, N), np.complex64)})
    del patterns
    scratch.unlink()
    return path


def build_encoded_store(workdir: Path, points: int, encoding: str):
    """A store of ``points`` random patterns (N 64, gridsize 2) whose frames are stored as
    ``encoding``: float32 or bfloat16 amplitudes, or uint16 counts."""
    if encoding == "float32":
        return build_store(workdir, points)
    start = time.perf_counter()
    config = GroupingConfig(gridsize=2, neighbor_count=7, seed=0)
    if encoding == "uint16":
        source = counts_source(workdir / f"counts{points}.npz", points, N)
        store = prepare(source, config, cache_dir=workdir / "cache", intensity=True, frames_dtype="uint16",
                        progress=False)
    else:
        source = random_source(workdir / f"source{points}.npz", points, N)
        store = prepare(source, config, cache_dir=workdir / "cache", frames_dtype=encoding, progress=False)
    print(f"store: {len(store)} groups, gridsize 2, N {N}, {points} random patterns stored as {encoding} "
          f"({time.perf_counter() - start:.1f} s to make and prepare)", flush=True)
    return store


def resident_windows(loader, device: torch.device, seconds: float):
    """Successive runs of whole epochs of ``loader``, each of at least ``seconds`` (one
    warm-up epoch first; each epoch synchronized at its end, as a training loop that
    validates or logs per epoch): yields each run's groups/s and the share of its time the
    host spent issuing them (each epoch's loop up to its last batch: near 1 when the host
    bounds the rate)."""
    loader.set_epoch(0)
    for _ in loader:
        pass
    sync(device)
    epoch = 0
    while True:
        groups, issued = 0, 0.0
        start = time.perf_counter()
        while True:
            epoch += 1
            loader.set_epoch(epoch)
            begin = time.perf_counter()
            for batch in loader:
                groups += batch["X"].shape[0]
            issued += time.perf_counter() - begin
            sync(device)
            seconds_run = time.perf_counter() - start
            if seconds_run >= seconds:
                break
        yield groups / seconds_run, issued / seconds_run


def resident_rate(loader, device: torch.device, min_seconds: float) -> tuple[float, float]:
    """The best of 3 :func:`resident_windows` of ``min_seconds / 3`` each (the bound's statistic)."""
    windows = resident_windows(loader, device, min_seconds / 3)
    return max(next(windows) for _ in range(3))


def copy_bound(frames: torch.Tensor, batch_size: int, C: int, min_seconds: float, repeat: int = 3) -> float:
    """Groups/s of ``torch.index_select`` of a batch's stored bytes (B·C frames + B probes,
    a complex64 probe being 8 / itemsize frames' bytes) from the resident ``frames`` in
    their held dtype, random rows, into a preallocated output: the best of ``repeat`` runs
    of at least ``min_seconds / repeat`` each."""
    rows = batch_size * (C + 8 // frames.element_size())
    pool = max(8, min(256, int(4 * 2**30 // (rows * frames[0].nbytes)) + 1))
    generator = torch.Generator(device=frames.device).manual_seed(0)
    indices = torch.randint(len(frames), (pool, rows), device=frames.device, generator=generator)
    out = torch.empty((rows, *frames.shape[1:]), dtype=frames.dtype, device=frames.device)
    for k in range(min(pool, 8)):
        torch.index_select(frames, 0, indices[k], out=out)
    sync(frames.device)
    best, calls = 0.0, pool
    for _ in range(repeat):
        start = time.perf_counter()
        done = 0
        while True:
            for k in range(calls):
                torch.index_select(frames, 0, indices[k % pool], out=out)
            done += calls
            sync(frames.device)
            seconds = time.perf_counter() - start
            if seconds >= min_seconds / repeat:
                break
        best = max(best, done * batch_size / seconds)
    return best


def bench_resident(args, workdir: Path) -> None:
    from ptychodata.torch import DeviceStore

    print("\n== resident: make_loader(resident=True), batches gathered (and decoded) on the device ==")
    cuda = cuda_ok()
    device = torch.device("cuda" if cuda else "cpu")
    if not cuda:
        note("resident: no CUDA: ran on the CPU (device='cpu'); the target is for one GPU")
    variants = [v for v in RESIDENT_VARIANTS if cuda or "torch ops" not in v[0]]
    stores = {encoding: build_encoded_store(workdir, args.resident_points, encoding)
              for encoding in dict.fromkeys(encoding for _, encoding, _ in variants)}
    C = next(iter(stores.values())).C
    held, bounds = {}, {}
    for label, encoding, options in variants:
        start = time.perf_counter()
        held[label] = DeviceStore(stores[encoding], device, **options)
        sync(device)
        seconds = time.perf_counter() - start
        frames = held[label].frames
        print(f"DeviceStore {label}: frames {frames.dtype} ({held[label].encoding.dtype} {held[label].encoding.values}), "
              f"{held[label].nbytes / 2**30:.2f} GiB on {device} in {seconds:.2f} s, gather '{held[label].kernel}'",
              flush=True)
    group_bytes = (C + 2) * N * N * 4
    print(f"{'frames':<32} {'batch':>5} {'k':>3} | {'resident groups/s':>17} {'GB/s':>6} {'host':>5} | "
          f"{'bound groups/s':>14} {'ratio':>6} | bound of     | of 4-byte bound")
    worst = {}
    for batch_size in args.resident_batches:
        for label, _, _ in variants:
            store = held[label]
            dtype = store.frames.dtype
            default_bytes = store.gather_bytes
            for gather_mib in [None, *args.gather_mib]:
                name = label if gather_mib is None else f"{label} @{gather_mib} MiB"
                store.gather_bytes = default_bytes if gather_mib is None else gather_mib << 20
                k = store.batches_per_gather(batch_size)
                # Three rounds, each a run of the bound and a run of the loader: the host's speed
                # drifts, and the two then see the same drift.
                rate, host, bound = 0.0, 0.0, 0.0
                try:
                    windows = resident_windows(make_loader(store, batch_size, resident=True, seed=0), device,
                                               args.min_seconds / 3)
                    for _ in range(3):
                        bound = max(bound, copy_bound(store.frames, batch_size, C, args.min_seconds / 3, repeat=1))
                        rate, host = max((rate, host), next(windows))
                except Exception as error:  # noqa: BLE001 - print it, measure the other variants
                    print(f"{name:<32} {batch_size:>5} FAILED: {type(error).__name__}: {str(error)[:300]}", flush=True)
                    rate, host = 0.0, 0.0
                finally:
                    store.gather_bytes = default_bytes
                if bound:
                    bounds[dtype.itemsize, batch_size] = bound
                ratio = rate / bound if bound else 0.0
                if gather_mib is None:  # the target is for the default gather
                    worst[batch_size, label] = ratio
                if not rate:
                    continue
                # A compact gather writes float32 X: beside its own rows' bound, that of 4-byte rows (the same X).
                wide = bounds.get((4, batch_size))
                versus_wide = f"{rate / wide:>6.0%}" if wide and dtype.itemsize != 4 else ""
                print(f"{name:<32} {batch_size:>5} {k:>3} | {rate:>17,.0f} "
                      f"{rate * group_bytes / 1e9:>6.0f} {host:>5.0%} | {bound:>14,.0f} {ratio:>6.0%} | "
                      f"{dtype.itemsize}-byte rows | {versus_wide}", flush=True)
    print(
        f"groups/s over whole epochs of {len(next(iter(stores.values())))} groups (gridsize 2, N {N}), set_epoch + "
        "iterate, each epoch synchronized at its end, after a warm-up epoch; GB/s = groups/s x "
        f"{group_bytes} bytes of X (float32) and probe written per group; host = the loops' time to their last "
        "batches / the whole time (near 100%: the host bounds the rate);"
    )
    print(
        "bound = torch.index_select of the same stored bytes per batch (B·C frames + B probes' bytes, as rows of "
        "the held dtype) from the resident frames, random rows, preallocated output, measured in this run: "
        "each line's figures are the best of 3 rounds of a run of the bound and a run of the loader (the 4-byte "
        f"bound is the latest line's of float32 frames at that batch); k = batches written by one gather (gather_bytes {next(iter(held.values())).gather_bytes / 2**20:.0f} "
        "MiB, the default)"
    )
    if worst:
        defaults = {key: ratio for key, ratio in worst.items() if "torch ops" not in key[1]} or worst
        low = min(defaults, key=defaults.get)
        ok = all(ratio >= RESIDENT_TARGET_RATIO for ratio in defaults.values())
        where = torch.cuda.get_device_name() if cuda else "the CPU"
        note(
            f"resident: ran on {where}; lowest resident/bound of a default gather {worst[low]:.0%} ({low[1]}, batch "
            f"{low[0]}); "
            f"target >= {RESIDENT_TARGET_RATIO:.0%} for every default gather: {'met' if ok else 'NOT met'}"
        )
    if args.gc_check:
        # The Python garbage collector's share: the same loops with it paused.
        import gc

        for label in [v[0] for v in variants if v[0] in ("float32 pre-scaled", "uint16 counts")]:
            for batch_size in [b for b in args.resident_batches if b <= 256]:
                gc.collect()
                gc.disable()
                try:
                    rate, host = resident_rate(make_loader(held[label], batch_size, resident=True, seed=0), device,
                                               args.min_seconds)
                finally:
                    gc.enable()
                print(f"{label}, batch {batch_size}, garbage collector paused: {rate:,.0f} groups/s "
                      f"({rate / bounds[held[label].frames.element_size(), batch_size]:.0%} of the bound, "
                      f"host {host:.0%})", flush=True)
    if args.diagnose and cuda:
        diagnose_resident(held, args)
    del held
    if cuda:
        torch.cuda.empty_cache()


def diagnose_resident(held: dict, args) -> None:
    """Where a resident batch's time goes, on the device: the gather alone (one run of
    batches, planned once, timed with CUDA events) against index_select of random rows of
    the same bytes; a pre-scaled run's index_select with its own rows (the probe rows
    repeat the same few rows) against random rows; and a fused gather's X rows alone
    (:func:`decode_alone`)."""
    print("\n-- resident diagnosis: device time of one gather per run of batches (CUDA events, median of 20) --")
    print(f"{'frames':<32} {'batch':>5} {'k':>3} | {'gather us/batch':>15} {'random rows us/batch':>20} "
          f"{'ratio':>6}")
    for label, store in held.items():
        for batch_size in args.resident_batches:
            k = store.batches_per_gather(batch_size)
            n = k * batch_size
            positions = np.random.default_rng(0).permutation(len(store))[:n]
            plan = store.plan(positions, [batch_size] * k)
            gather = median_event_time(lambda: store._gather_run(plan, 0, k, False))
            rows = k * batch_size * (store.C + 8 // store.frames.element_size())
            index = torch.randint(len(store.frames), (rows,), device=store.device)
            out = torch.empty((rows, N, N), dtype=store.frames.dtype, device=store.device)
            random = median_event_time(lambda: torch.index_select(store.frames, 0, index, out=out))
            print(f"{label:<32} {batch_size:>5} {k:>3} | {gather / k * 1e6:>15.1f} {random / k * 1e6:>20.1f} "
                  f"{random / gather:>6.0%}", flush=True)
            if plan.rows is not None:
                own = plan.rows[: rows]
                mine = median_event_time(lambda: torch.index_select(store._table, 0, own))
                print(f"{'':<32} {'':>5} {'':>3} | index_select of the run's own rows (probe rows repeated): "
                      f"{mine / k * 1e6:.1f} us/batch")
            elif store.kernel == "triton":
                decode_alone(store, plan, n)


def decode_alone(store, plan, n: int) -> None:
    """The fused gather's X rows alone (no probes) against ``index_select`` of the same rows in
    the held dtype and as float32 rows (the bytes the decode writes): a gather bound by memory
    comes near the float32 rows' time, whatever it reads."""
    from ptychodata.torch._held_frames import gather_decode

    rows = plan.members[:n].reshape(-1)
    X = torch.empty((len(rows), N, N), device=store.device)
    held = torch.empty((len(rows), N, N), dtype=store.frames.dtype, device=store.device)
    wide = torch.empty((len(store.frames), N, N), device=store.device)  # float32 rows to time, never read
    nothing = torch.empty(0, dtype=torch.int64, device=store.device)
    no_probes = torch.empty((0, N, N), dtype=torch.complex64, device=store.device)
    scale = None if plan.scale is None else plan.scale[:n]
    decode = median_event_time(lambda: gather_decode(store.kernel, store.encoding, store._table, rows, scale, store.C,
                                                     X, store.probes, nothing, no_probes))
    same = median_event_time(lambda: torch.index_select(store.frames, 0, rows, out=held))
    wider = median_event_time(lambda: torch.index_select(wide, 0, rows, out=X))
    print(f"{'':<32} {'':>5} {'':>3} | X rows alone: decode {decode * 1e6:.0f} us; index_select of these rows "
          f"{same * 1e6:.0f} us ({same / decode:.0%}) as {str(store.frames.dtype).removeprefix('torch.')}, "
          f"{wider * 1e6:.0f} us ({wider / decode:.0%}) as float32", flush=True)


def median_event_time(function, repeat: int = 20) -> float:
    """Median seconds of device time of ``function`` (after 3 warm-up calls)."""
    for _ in range(3):
        function()
    times = []
    for _ in range(repeat):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        function()
        end.record()
        end.synchronize()
        times.append(begin.elapsed_time(end) / 1e3)
    return float(np.median(times))


# ------------------------------------------------------------------------------------ patches
def best_seconds(function, repeat: int, sync: bool = False) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        if sync:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def gpu_extract(extractor, xs, ys, out) -> None:
    extractor(xs, ys, out=out)


def bench_patches(args) -> None:
    print("\n== patches: PatchExtractor on the GPU vs NumPy extract_patches on the CPU ==")
    cuda = cuda_ok()
    if not cuda:
        note(
            "patches: no CUDA: skipped PatchExtractor on the GPU; NumPy and torch-CPU rows run "
            f"(torch-CPU only for <= {args.torch_cpu_max} positions)"
        )
    rng = np.random.default_rng(0)
    print(
        f"{'object':>9} {'positions':>9} | {'NumPy CPU':>10} | {'torch CPU':>10} | {'GPU':>11} "
        f"{'GPU/NumPy':>9} {'max |diff|':>12} {'GPU peak':>9}"
    )
    for side in args.sizes:
        obj = (rng.standard_normal((side, side)) + 1j * rng.standard_normal((side, side))).astype(
            np.complex64
        )
        extractor_cpu = PatchExtractor([obj], N)
        extractor_gpu = PatchExtractor([obj], N).to("cuda") if cuda else None
        for P in args.positions:
            x, y = rng.uniform(0, side, P), rng.uniform(0, side, P)  # some patches cross the border
            out = np.empty((P, N, N), np.complex64)
            out.fill(0)  # first touch outside the timing
            repeat = 3 if P <= 20_000 else 2
            extract_patches(obj, x[:1000], y[:1000], N, out=out[:1000])
            numpy_rate = P / best_seconds(partial(extract_patches, obj, x, y, N, out=out), repeat)
            torch_cpu, gpu, ratio, diff, peak = "-", "skipped", "", "", ""
            k = min(P, 2000)
            if P <= args.torch_cpu_max:
                xt, yt = torch.from_numpy(x), torch.from_numpy(y)
                extractor_cpu(xt[:100], yt[:100])
                torch_cpu = f"{P / best_seconds(partial(extractor_cpu, xt, yt), repeat):,.0f}"
                if not cuda:
                    cpu_diff = np.abs(extractor_cpu(xt[:k], yt[:k]).numpy() - out[:k]).max()
                    diff = f"{float(cpu_diff):.1e} C"
            if cuda:
                xs, ys = torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda()
                dev_out = torch.empty((P, N, N), dtype=torch.complex64, device="cuda")
                torch.cuda.reset_peak_memory_stats()
                gpu_extract(extractor_gpu, xs, ys, dev_out)  # warm-up
                torch.cuda.synchronize()
                timed = partial(gpu_extract, extractor_gpu, xs, ys, dev_out)
                rate = P / best_seconds(timed, 3, sync=True)
                diff = f"{float(np.abs(dev_out[:k].cpu().numpy() - out[:k]).max()):.1e} G"
                gpu, ratio = f"{rate:,.0f}", f"{rate / numpy_rate:.1f}x"
                peak = f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
                del xs, ys, dev_out
                torch.cuda.empty_cache()
            print(
                f"{side:>4}x{side:<4} {P:>9,} | {numpy_rate:>10,.0f} | {torch_cpu:>10} | {gpu:>11} "
                f"{ratio:>9} {diff:>12} {peak:>9}",
                flush=True,
            )
            del out
    print(
        f"patches/s, N {N}, complex64, positions uniform over the object (some patches cross the border); "
        "NumPy: extract_patches into a reused output, one thread; torch CPU: PatchExtractor.forward "
        "(allocates its output); GPU: PatchExtractor.forward(out=) into a preallocated output, in chunks "
        "of at most max_temp_bytes (1 GiB) of temporaries, "
        "synchronized, best of 3 after a warm-up; max |diff| vs NumPy on the first 2000 patches, of the "
        "GPU (G) or, without CUDA, of torch CPU (C); GPU peak = torch.cuda.max_memory_allocated"
    )
    ran = "NumPy, torch CPU" + (", GPU" if cuda else "")
    note(
        f"patches: ran {ran} for objects {args.sizes} and positions {args.positions} "
        f"(torch CPU up to {args.torch_cpu_max})"
    )


# ---------------------------------------------------------------------------------------- ddp
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bench_ddp(args) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    if "WORLD_SIZE" not in os.environ:
        print(
            "ddp: not launched by torchrun; running a world of 1 "
            "(use: torchrun --nproc_per_node=2 benchmarks/bench_gpu.py ddp)"
        )
        os.environ.update(
            RANK="0",
            LOCAL_RANK="0",
            WORLD_SIZE="1",
            LOCAL_WORLD_SIZE="1",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(free_port()),
        )
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    cuda = cuda_ok() and torch.cuda.device_count() >= local_world
    why_cpu = (
        ("no CUDA" if not cuda_ok() else f"{torch.cuda.device_count()} GPU(s) for {local_world} local ranks")
        if not cuda
        else ""
    )
    if cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        dist.init_process_group("nccl", device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    backend = dist.get_backend()
    if rank == 0:
        print(f"machine: {machine()}")
        print(
            f"torch {torch.__version__}; {shm_line()}; world {world}, backend {backend}, "
            + (
                f"devices cuda:0..{local_world - 1} ({torch.cuda.get_device_name()})"
                if cuda
                else f"CPU ({why_cpu}: GPU part skipped, gloo on the CPU)"
            ),
            flush=True,
        )

    # One store for all ranks: rank 0 makes it, the others open it.
    created = None
    if rank == 0:
        created = Path(tempfile.mkdtemp(dir=args.workdir, prefix="ptychodata-bench-ddp-"))
        store_path = str(build_store(created, args.points).path)
    else:
        store_path = None
    shared = [store_path]
    dist.broadcast_object_list(shared, src=0)
    store = open_store(shared[0])

    workers = args.ddp_workers or 0  # make_loader's default: no workers, a background thread
    if args.resident and workers:
        raise SystemExit("ddp: --resident gathers on the device; it takes no --ddp-workers")
    if args.shard_by and not args.resident:
        raise SystemExit("ddp: --shard-by shares the resident frames among the ranks; it needs --resident")
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    built = time.perf_counter()
    if args.resident:
        loader = make_loader(store, args.batch, distributed=True, resident=True, device=device, seed=0,
                             shard_by=args.shard_by)
        sync(device)
    else:
        loader = make_loader(store, args.batch, distributed=True, num_workers=workers, pin_memory=cuda, seed=0)
    built = time.perf_counter() - built
    C = store.C
    model = torch.nn.Conv2d(C, 8, 3, padding=1).to(device)
    model = DistributedDataParallel(model, device_ids=[local_rank] if cuda else None)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    total = torch.zeros((), device=device)
    if args.compute is None:
        args.compute = "conv" if cuda else "sum"

    def step(batch):
        X = to_device(batch, device, non_blocking=True)["X"]
        if args.compute == "conv":
            loss = model(X).square().mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        else:
            total.add_(X.sum())

    loader.set_epoch(0)
    close_pass(loader, 2 * workers + 2, step)
    # Groups this rank is served in the first timed epoch; resident batches are marked on the
    # device (reading their group_index back would synchronise every step).
    seen = torch.zeros(len(store), dtype=torch.bool, device=device if args.resident else "cpu")
    groups = batches = 0
    if cuda:
        torch.cuda.synchronize()
    dist.barrier()
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        loader.set_epoch(epoch)
        for batch in loader:
            step(batch)
            if epoch == 1:
                seen[batch["group_index"]] = True
            groups += len(batch["X"])
            batches += 1
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    dist.barrier()
    wall = time.perf_counter() - start
    if not args.resident:
        stop_workers(loader)
    mine = {
        "rank": rank,
        "device": str(device),
        "groups": groups,
        "batches": batches,
        "seconds": seconds,
        "workers": workers,
        "seen": np.packbits(seen.cpu().numpy()),
        "peak": torch.cuda.max_memory_allocated(device) if cuda else None,
        "built": built,
    }
    if args.resident:
        held = loader.dataset
        mine["held"] = held.nbytes
        mine["bound"] = copy_bound(held.frames, args.batch, C, args.min_seconds)
    everyone = [None] * world
    dist.all_gather_object(everyone, mine)
    if rank == 0:
        source = f"{workers} loader workers per rank"
        if args.resident:
            source = ("resident loader (DeviceStore per rank" + (f", frames shared by {args.shard_by}" if args.shard_by
                                                                  else ", every frame on every rank") + ")")
        epochs = "one epoch" if args.epochs == 1 else f"{args.epochs} epochs"
        print(
            f"\n== ddp: {epochs}, {len(store)} groups, batch {args.batch} per rank, {source}, "
            f"compute {args.compute} =="
        )
        extra = f" {'held GiB':>8} {'built s':>7} {'bound groups/s':>14}" if args.resident else ""
        peak = f" {'peak alloc GiB':>14}" if cuda else ""
        print(f"{'rank':>4} {'device':>8} {'groups':>8} {'batches':>7} {'timed s':>8} {'groups/s':>10}{peak}{extra}")
        for r in everyone:
            line = (
                f"{r['rank']:>4} {r['device']:>8} {r['groups']:>8,} {r['batches']:>7} {r['seconds']:>8.2f} "
                f"{r['groups'] / r['seconds']:>10,.0f}"
            )
            if cuda:
                line += f" {r['peak'] / 2**30:>14.2f}"
            if args.resident:
                line += f" {r['held'] / 2**30:>8.2f} {r['built']:>7.2f} {r['bound']:>14,.0f}"
            print(line)
        union = np.zeros(len(store), bool)
        counts = np.zeros(len(store), np.int64)
        for r in everyone:
            member = np.unpackbits(r["seen"], count=len(store)).astype(bool)
            union |= member
            counts += member
        total_groups = sum(r["groups"] for r in everyone)
        print(
            f"all ranks: {total_groups:,} groups in {wall:.2f} s (slowest rank + barrier) = "
            f"{total_groups / wall:,.0f} groups/s; {union.sum():,} of {len(store):,} groups seen, "
            f"{int((counts > 1).sum())} seen by more than one rank (padding to equal shards)"
            + (" in the first timed epoch" if args.epochs > 1 else "")
        )
        notes = []
        if cuda:
            notes.append("peak alloc = torch.cuda.max_memory_allocated on the rank's device, from before the loader "
                         "was made to the end of the timed epochs")
        if args.resident:
            notes.append("held = DeviceStore.nbytes (frames, probes, per-group tables); built = make_loader with the "
                         "DeviceStore's copy to the device; bound = torch.index_select of a batch's bytes (B·C frames "
                         "+ B probes) from the rank's resident frames, random rows, as in the resident part")
            if args.shard_by:
                notes.append(f"the whole store's frames take {store.n_patterns * store.N**2 * 4 / 2**30:.2f} GiB as "
                             "float32: each rank holds its share")
        if notes:
            print("; ".join(notes))
        ok = bool(union.all())
        note(
            f"ddp: ran with {world} ranks, backend {backend}" + (", resident loader" if args.resident else "")
            + (f", frames shared by {args.shard_by}" if args.shard_by else "")
            + ("" if cuda else f" ({why_cpu}: GPU part skipped)")
            + ("; every group seen" if ok else "; SOME GROUPS NOT SEEN")
        )
    dist.barrier()
    if created is not None:
        shutil.rmtree(created, ignore_errors=True)
    dist.destroy_process_group()


# --------------------------------------------------------------------------------------- main
def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=("h2d", "patches", "resident", "ddp", "all"))
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a small run: 8192 patterns, batch 256, no workers, 1000² object, 10⁴ positions",
    )
    parser.add_argument(
        "--points", type=int, help="patterns in the source (default 32768; 8192 with --quick)"
    )
    parser.add_argument("--workers", type=_ints, help="h2d: comma-separated loader workers (default 0,4)")
    parser.add_argument(
        "--background", type=int,
        help="h2d: make_loader's background (batches gathered ahead in a thread; default: make_loader's, "
        "2 with pinned memory); 0 = no gather runs while a batch is copied",
    )
    parser.add_argument("--batches", type=_ints, help="h2d: comma-separated batch sizes (default 64,256,512)")
    parser.add_argument(
        "--resident-batches", type=_ints, help="resident: comma-separated batch sizes (default 64,256,1024)"
    )
    parser.add_argument(
        "--resident-points", type=int, help="resident: patterns in the store (default 65536: 1 GiB of frames)"
    )
    parser.add_argument(
        "--min-seconds", type=float, default=1.0,
        help="resident (and ddp --resident's bound): timed seconds per figure (at least)",
    )
    parser.add_argument(
        "--gather-mib", type=_ints, default=[],
        help="resident: also time each default gather with these gather_bytes (MiB, comma-separated)",
    )
    parser.add_argument(
        "--diagnose", action="store_true",
        help="resident: also time one gather per run of batches alone (CUDA events) against index_select",
    )
    parser.add_argument(
        "--gc-check", action="store_true",
        help="resident: also time float32 and uint16 at batch 64 and 256 with the garbage collector paused",
    )
    parser.add_argument("--sizes", type=_ints, help="patches: object sides (default 1000,4000)")
    parser.add_argument("--positions", type=_ints, help="patches: positions per call (default 10000,100000)")
    parser.add_argument(
        "--torch-cpu-max",
        type=int,
        default=10_000,
        help="patches: run PatchExtractor on the CPU only up to this many positions",
    )
    parser.add_argument("--batch", type=int, default=256, help="ddp: batch size per rank")
    parser.add_argument(
        "--ddp-workers", type=int, help="ddp: loader workers per rank (default 0, as make_loader)"
    )
    parser.add_argument(
        "--resident", action="store_true",
        help="ddp: make_loader(..., resident=True, device=the rank's device): each rank holds every frame",
    )
    parser.add_argument(
        "--shard-by", choices=("block", "scan"),
        help="ddp --resident: each rank holds only its share of the frames, by block of groups or by scan",
    )
    parser.add_argument("--epochs", type=int, default=1, help="ddp: timed epochs (default 1)")
    parser.add_argument(
        "--compute",
        choices=("conv", "sum"),
        help="ddp: a tiny DDP conv step with backward (gradient all-reduce), or a sum "
        "(default: conv with CUDA, sum on the CPU)",
    )
    parser.add_argument(
        "--workdir", type=Path, help="scratch directory (default: a temporary one under /tmp)"
    )
    args = parser.parse_args()
    quick = args.quick
    args.points = args.points or (8192 if quick else 32_768)
    args.workers = args.workers or ([0] if quick else [0, 4])
    args.batches = args.batches or ([256] if quick else [64, 256, 512])
    args.resident_batches = args.resident_batches or ([256] if quick else [64, 256, 1024])
    args.resident_points = args.resident_points or (8192 if quick else 65_536)
    args.sizes = args.sizes or ([1000] if quick else [1000, 4000])
    args.positions = args.positions or ([10_000] if quick else [10_000, 100_000])
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)

    if args.what == "ddp":
        bench_ddp(args)
        if LOG:
            print("\nsummary:\n  " + "\n  ".join(LOG))
        return

    print(f"machine: {machine()}")
    gpu = (
        f"{torch.cuda.device_count()} x {torch.cuda.get_device_name()}, CUDA {torch.version.cuda}"
        if cuda_ok()
        else "no CUDA device"
    )
    print(f"torch {torch.__version__}; {gpu}; {cpus()} usable CPUs; {shm_line()}")
    start = time.perf_counter()
    if args.what in ("h2d", "all"):
        workdir = Path(tempfile.mkdtemp(dir=args.workdir, prefix="ptychodata-bench-gpu-"))
        try:
            bench_h2d(args, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.what in ("patches", "all"):
        bench_patches(args)
    if args.what in ("resident", "all"):
        workdir = Path(tempfile.mkdtemp(dir=args.workdir, prefix="ptychodata-bench-resident-"))
        try:
            bench_resident(args, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\npeak RSS {peak_rss_mib():.0f} MiB; total {time.perf_counter() - start:.0f} s")
    print("summary:\n  " + "\n  ".join(LOG))


if __name__ == "__main__":
    main()
