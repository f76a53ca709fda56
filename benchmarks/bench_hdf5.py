"""``prepare`` from a chunked, compressed HDF5 (CXI) file against reading it with h5py alone.

    python benchmarks/bench_hdf5.py [--points 40000] [--N 64] [--compression lzf gzip] [--workdir DIR]

Targets: prepare ≥ 60 % of the h5py read rate of the same dataset (whole chunks,
decompressed), peak RSS < 600 MB whatever the file size. The h5py baseline reads the
dataset chunk-aligned, 32 MiB at a time, into NumPy and does nothing else; prepare also
converts counts to amplitudes, checks, hashes the file and writes the store. The reader
alone (``ScanData.load`` then ``iter_rows`` over the lazy patterns) separates the reader's
cost from the store's (writing float32 amplitudes, twice the bytes of uint16 counts).
``prepare`` writes a store of this size through the page cache (the default for a store
smaller than half the available memory), beside the bound that limits it: the same bytes
written through the page cache with nothing else to do; the ``--direct-io`` row writes
them past the page cache (``O_DIRECT``). Each run is a child
process so its peak RSS (VmHWM) is its own; the file is read once first so both runs start
from the page cache, and every child imports h5py, hdf5plugin and SciPy's KD-tree before its
clock starts (the baseline's import of h5py is not timed either).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
from _common import machine

BASELINE = """
import sys, time, h5py, hdf5plugin
start = time.perf_counter()
with h5py.File(sys.argv[1]) as f:
    data = f["/entry_1/data_1/data"]
    rows = max(data.chunks[0], (32 << 20) // (data[0].nbytes) // data.chunks[0] * data.chunks[0])
    for begin in range(0, data.shape[0], rows):
        block = data[begin:begin + rows]
seconds = time.perf_counter() - start
with open("/proc/self/status") as status:
    peak_kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))
print(seconds, peak_kib)
"""

READER = """
import sys, time, warnings
import h5py, hdf5plugin, scipy.spatial  # imported before the clock, as the baseline imports h5py
from ptychodata import ScanData
from ptychodata._runtime import iter_rows
warnings.simplefilter("ignore")
start = time.perf_counter()
patterns = ScanData.load(sys.argv[1]).diffraction
for _, chunk in iter_rows(patterns, patterns.rows_per_read):
    pass
seconds = time.perf_counter() - start
with open("/proc/self/status") as status:
    peak_kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))
print(seconds, peak_kib)
"""

PREPARE = """
import json, sys, time, warnings
import h5py, hdf5plugin, scipy.spatial  # imported before the clock, as the baseline imports h5py
from ptychodata import GroupingConfig, prepare
warnings.simplefilter("ignore")
start = time.perf_counter()
prepare(sys.argv[1], GroupingConfig(gridsize=1, seed=0), cache_dir=sys.argv[2], progress=False, **json.loads(sys.argv[3]))
seconds = time.perf_counter() - start
with open("/proc/self/status") as status:
    peak_kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))
print(seconds, peak_kib)
"""

# The bound of a store written through the page cache: the same bytes, plain 1 MiB writes, fsync.
WRITE = """
import os, sys, time
nbytes, piece = int(sys.argv[2]), bytes(1 << 20)
start = time.perf_counter()
with open(sys.argv[1], "wb") as handle:
    for _ in range(nbytes // len(piece)):
        handle.write(piece)
    handle.flush()
    os.fsync(handle.fileno())
seconds = time.perf_counter() - start
os.unlink(sys.argv[1])
print(seconds, 0)
"""


def write_file(path: Path, M: int, N: int, compression: str) -> None:
    """A CXI file of M Poisson-count patterns (uint16), chunked 64 patterns a chunk, with a probe."""
    rng = np.random.default_rng(0)
    r2 = ((np.arange(N) - N // 2)[:, None] ** 2 + (np.arange(N) - N // 2)[None, :] ** 2).astype(float)
    beam = 2e4 * np.exp(-r2 / 30) / np.exp(-r2 / 30).sum()
    wavelength, distance, pixel = 1e-10, 2.0, 75e-6
    dx = wavelength * distance / (N * pixel)
    side = int(np.ceil(np.sqrt(M)))
    with h5py.File(path, "w") as f:
        detector = f.create_group("entry_1/instrument_1/detector_1")
        data = detector.create_dataset(
            "data", (M, N, N), np.uint16, chunks=(64, N, N), compression=compression
        )
        for start in range(0, M, 4096):
            data[start : start + 4096] = rng.poisson(beam, (min(4096, M - start), N, N))
        detector["distance"], detector["x_pixel_size"], detector["y_pixel_size"] = distance, pixel, pixel
        source = f.create_group("entry_1/instrument_1/source_1")
        source["wavelength"] = wavelength
        source["illumination"] = np.exp(-r2 / 40).astype(np.complex64)
        index = np.arange(M)
        translation = np.stack([index % side * 3 * dx, index // side * 3 * dx, np.zeros(M)], axis=1)
        f.create_group("entry_1/sample_1/geometry_1")["translation"] = translation
        f.create_group("entry_1/data_1")["data"] = h5py.SoftLink("/entry_1/instrument_1/detector_1/data")


def run(code: str, *args: str) -> tuple[float, float]:
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    seconds, peak_kib = result.stdout.split()
    return float(seconds), float(peak_kib) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=40000)
    parser.add_argument("--N", type=int, default=64)
    parser.add_argument("--compression", nargs="+", default=["lzf", "gzip"])
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    print(machine())
    workdir = Path(tempfile.mkdtemp(prefix="bench_hdf5_", dir=args.workdir))
    try:
        for compression in args.compression:
            path = workdir / f"scan_{compression}.cxi"
            start = time.perf_counter()
            write_file(path, args.points, args.N, compression)
            raw_mb = args.points * args.N**2 * 2 / 1e6
            print(
                f"{compression}: wrote {args.points} patterns of {args.N}×{args.N} uint16 ({raw_mb:.0f} MB raw, "
                f"{path.stat().st_size / 1e6:.0f} MB on disk) in {time.perf_counter() - start:.1f} s"
            )
            run(BASELINE, str(path))  # warm the page cache
            base_s, base_mb = run(BASELINE, str(path))
            read_s, read_mb = run(READER, str(path))
            rows = {
                "prepare": ({}, "target >= 60 %, RSS < 600 MB; default: a store this size goes through the page cache"),
                "--direct-io": ({"direct_io": True}, "direct_io=True: patterns written past the page cache"),
                "prepare u16": (
                    {"intensity": True, "frames_dtype": "uint16"},
                    "intensity=True, frames_dtype='uint16': counts stored as counts",
                ),
            }
            measured = {}
            for name, (options, _) in rows.items():
                cache = workdir / f"cache_{compression}_{len(measured)}"
                measured[name] = run(PREPARE, str(path), str(cache), json.dumps(options))
                shutil.rmtree(cache)
            store_bytes = args.points * args.N**2 * 4
            write_s, _ = run(WRITE, str(workdir / "written"), str(store_bytes))
            print(
                f"  h5py alone   {base_s:6.2f} s  {args.points / base_s:9.0f} patterns/s  peak RSS {base_mb:5.0f} MB"
            )
            print(
                f"  ScanData     {read_s:6.2f} s  {args.points / read_s:9.0f} patterns/s  peak RSS {read_mb:5.0f} MB  "
                f"({base_s / read_s:.0%} of h5py: load + read + counts -> float32 amplitudes, no store)"
            )
            for name, (_, what) in rows.items():
                seconds, peak_mb = measured[name]
                print(
                    f"  {name:<12} {seconds:6.2f} s  {args.points / seconds:9.0f} patterns/s  peak RSS {peak_mb:5.0f} MB  "
                    f"({base_s / seconds:.0%} of h5py; {what})"
                )
            print(
                f"  bound        writing the float32 store's {store_bytes / 1e6:.0f} MB through the page cache alone "
                f"(1 MiB writes + fsync): {write_s:.2f} s = {base_s / write_s:.0%} of h5py's time"
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
