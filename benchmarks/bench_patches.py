"""Throughput of :func:`ptychodata.patches.extract_patches` and :func:`reassemble`.

Compares the vectorised extraction with a per-patch Python loop (four slices per patch), at one
patch size, for a 1000×1000 and a 4000×4000 complex64 object, and prints patches per second.

Usage::

    python benchmarks/bench_patches.py --patches 20000 --N 64

"Extract into out" (and the loop) write into a preallocated output that has already been written
once; "extract, new output" includes allocating and first touching the (P, N, N) result, which on
some virtual machines costs more than the extraction itself (see the "first touch" line).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import machine, peak_rss_mib

from ptychodata.patches import extract_patches, reassemble


def loop_extract(
    padded: np.ndarray, pad: int, x: np.ndarray, y: np.ndarray, N: int, out: np.ndarray
) -> np.ndarray:
    """Baseline: bilinear extraction one patch at a time, four slices each, into ``out`` (P, N, N).

    ``padded`` is the object zero-padded by ``pad`` >= N + 2 on each side (done once, not timed),
    so every slice of a patch centred inside the object is in bounds.
    """
    for p in range(out.shape[0]):
        r, c = int(np.floor(y[p])), int(np.floor(x[p]))
        fy, fx = y[p] - r, x[p] - c
        r0, c0 = r - N // 2 + pad, c - N // 2 + pad
        out[p] = (
            (1 - fy) * (1 - fx) * padded[r0 : r0 + N, c0 : c0 + N]
            + (1 - fy) * fx * padded[r0 : r0 + N, c0 + 1 : c0 + N + 1]
            + fy * (1 - fx) * padded[r0 + 1 : r0 + N + 1, c0 : c0 + N]
            + fy * fx * padded[r0 + 1 : r0 + N + 1, c0 + 1 : c0 + N + 1]
        )
    return out


def best_of(fn, repeat: int) -> float:
    """Shortest wall time of ``repeat`` calls, in seconds."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bench_size(
    S: int, N: int, P: int, n_loop: int, repeat: int, rng: np.random.Generator
) -> tuple[dict[str, float], float]:
    """Patches per second of each operation on an S×S object, and the largest |extract - loop|."""
    obj = (rng.standard_normal((S, S)) + 1j * rng.standard_normal((S, S))).astype(np.complex64)
    x, y = rng.uniform(0, S, P), rng.uniform(0, S, P)  # sub-pixel; some patches cross the border
    pad = N + 2
    padded = np.pad(obj, pad)
    out = np.zeros((P, N, N), np.complex64)
    out.fill(0)  # first touch, outside the timings
    loop = np.zeros((n_loop, N, N), np.complex64)
    loop.fill(0)
    rates = {"loop baseline": n_loop / best_of(lambda: loop_extract(padded, pad, x, y, N, loop), repeat)}
    rates["extract into out"] = P / best_of(lambda: extract_patches(obj, x, y, N, out=out), repeat)
    rates["extract, new output, 1st"] = P / best_of(lambda: extract_patches(obj, x, y, N), 1)
    rates["extract, new output, best"] = P / best_of(lambda: extract_patches(obj, x, y, N), repeat)
    rates["reassemble"] = P / best_of(lambda: reassemble(out, x, y, obj.shape), repeat)
    worst = float(np.abs(extract_patches(obj, x[:n_loop], y[:n_loop], N) - loop).max())
    return rates, worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, default=20000, help="patches per timed call")
    parser.add_argument("--loop-patches", type=int, default=2000, help="patches for the loop baseline")
    parser.add_argument("--N", type=int, default=64, help="patch side")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000], help="object sides")
    parser.add_argument("--repeat", type=int, default=3, help="timings per figure (best is kept)")
    args = parser.parse_args()
    N, P = args.N, args.patches
    rng = np.random.default_rng(0)
    print(f"machine: {machine()}\nN = {N}, {P} patches\n")
    t = time.perf_counter()
    np.empty((P, N, N), np.complex64).fill(0)
    print(f"first touch of a new (P, N, N) complex64 array: {time.perf_counter() - t:.3f} s")
    print("(timings: best of --repeat, except 'new output, 1st', the first call)\n")
    header = f"{'object':>11} | {'operation':<26} | {'patches/s':>10} | {'vs loop':>7}"
    print(header + "\n" + "-" * len(header))
    for S in args.sizes:
        rates, worst = bench_size(S, N, P, min(args.loop_patches, P), args.repeat, rng)
        for name, rate in rates.items():
            ratio = f"{rate / rates['loop baseline']:6.1f}x" if name.startswith("extract") else ""
            print(f"{S:>5}x{S:<5} | {name:<26} | {rate:>10.0f} | {ratio:>7}")
        print(f"{'':>11} | max |extract - loop| = {worst:.1e}")
    print("target: 'extract into out' >= 20,000 patches/s at N 64")
    print(f"\npeak RSS: {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
