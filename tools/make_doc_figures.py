"""Make the documentation's figures (committed under docs/images/): run from the repository root.

    python tools/make_doc_figures.py

- ``groups.png``: positions and groups of a small simulated scan, drawn by ``ptychodata.plot.plot_groups``;
- ``loader-throughput.png``: groups/s of the host loader (gridsize 2, N 64, batch 64, no workers) on each
  machine, and of the GPU-resident loader, read from the logs in ``benchmarks/results/``: every run the
  logs hold for that setting, so the chart shows the spread between runs.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

import ptychodata
from ptychodata.plot import plot_groups

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "docs" / "images"
RESULTS = ROOT / "benchmarks" / "results"

# Host-loader logs and how to name their machine; rows "g C batch workers | groups/s" of bench_loader.py.
LOADER_LOGS = {
    "loader/xeon16-2cores-2026-11-28.log": "Xeon (1 × H200 host), 2 of 16 cores",
    "loader/xeon32-2cores-2026-11-26.log": "Xeon (2 × H200 host), 2 of 32 cores",
    "loader/amd-vm-2cores-2026-11-28.log": "AMD EPYC VM, 2 cores, quiet",
    "loader/amd-vm-2cores-loaded-2026-11-28.log": "AMD EPYC VM, 2 cores, shared",
}
HOST_ROW = re.compile(r"^\s*2\s+4\s+64\s+0\s+\|\s+([\d,]+)", re.M)
RESIDENT_LOG = "gpu/resident-h200-2026-11-28.log"
RESIDENT_ROW = re.compile(r"^\s*(64|256|1024)\s+\d+\s+\|\s+([\d,]+)", re.M)


def groups_figure(path: Path) -> None:
    scan = ptychodata.simulate(n_points=200, N=32, pattern="jittered", seed=1, progress=False)
    grouped = ptychodata.grouped_data(scan, ptychodata.GroupingConfig(gridsize=2, neighbor_count=7, seed=0))
    plot_groups(grouped, path, n_groups=3)


def loader_figure(path: Path) -> None:
    rows = []
    for log, machine in LOADER_LOGS.items():
        runs = [float(value.replace(",", "")) for value in HOST_ROW.findall((RESULTS / log).read_text())]
        rows.append((f"host loader: {machine}", runs))
    text = (RESULTS / RESIDENT_LOG).read_text()
    text = text[: text.index("# The same command at commit")]  # the first run only: later ones compare designs
    resident = {int(batch): float(value.replace(",", "")) for batch, value in RESIDENT_ROW.findall(text)}
    rows.append(("GPU-resident loader: 1 × H200, batch 64", [resident[64]]))
    rows.append(("GPU-resident loader: 1 × H200, batch 256", [resident[256]]))

    fig = Figure(figsize=(8.5, 3.2), layout="constrained")
    ax = fig.subplots()
    for y, (label, runs) in enumerate(rows):
        ax.barh(y, max(runs), color="tab:blue" if label.startswith("host") else "tab:green", alpha=0.35)
        ax.plot(runs, [y] * len(runs), "o", color="black", markersize=4)
    ax.set_yticks(np.arange(len(rows)), [label for label, _ in rows], fontsize=8)
    ax.set_ylim(len(rows) - 0.5, -0.9)
    ax.set_xscale("log")
    ax.set_xlabel("groups/s (gridsize 2, N 64; dots: runs, bar: best)")
    ax.axvline(60_000, color="tab:red", linestyle="--", linewidth=1)
    ax.text(60_000, -0.55, " host target 60 000 groups/s", color="tab:red", fontsize=8, va="bottom")
    ax.set_title("Loader throughput, from benchmarks/results (batch 64 unless noted)", fontsize=9)
    fig.savefig(path, dpi=110)


def main() -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    groups_figure(IMAGES / "groups.png")
    loader_figure(IMAGES / "loader-throughput.png")
    print(f"wrote {IMAGES / 'groups.png'} and {IMAGES / 'loader-throughput.png'}")


if __name__ == "__main__":
    main()
