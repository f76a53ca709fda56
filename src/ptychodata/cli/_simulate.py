"""``ptychodata simulate OUT.npz``: write a synthetic scan."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ptychodata.cli._arguments import fraction, int_at_least, positive_float, positive_int

_MB = 1e6


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``simulate`` command to ``commands``; returns its parser."""
    sim = commands.add_parser(
        "simulate",
        help="write a synthetic scan (.npz)",
        description="Simulate a noise-free or Poisson-noisy scan with a random object and write it "
        "as an uncompressed .npz (PtychoPINN layout). Unset options take simulate()'s defaults.",
    )
    sim.add_argument("out", type=Path, metavar="OUT.npz", help="file to write")
    sim.add_argument("--points", type=positive_int, help="number of scan points M (default 1024)")
    sim.add_argument("--N", type=int_at_least(2), help="pattern size in pixels (default 64)")
    sim.add_argument("--seed", type=int, help="random seed (default: fresh entropy, recorded in the file)")
    sim.add_argument(
        "--pattern", choices=("raster", "jittered", "fermat"), help="scan pattern (default raster)"
    )
    sim.add_argument("--overlap", type=fraction, help="linear probe overlap, 0 <= overlap < 1 (default 0.7)")
    sim.add_argument("--nphotons", type=positive_float, help="mean counts per pattern (default: no noise)")
    sim.add_argument("--probe", choices=("disk", "gaussian"), help="probe shape (default disk)")
    sim.add_argument("--quiet", action="store_true", help="no progress bar")
    return sim


def run(args: argparse.Namespace) -> int:
    """Simulate the scan, write it, print one line; returns 0."""
    from ptychodata.simulate import simulate

    options = {
        "n_points": args.points,
        "N": args.N,
        "seed": args.seed,
        "pattern": args.pattern,
        "overlap": args.overlap,
        "nphotons": args.nphotons,
        "probe": args.probe,
    }
    start = time.perf_counter()
    scan = simulate(
        **{key: value for key, value in options.items() if value is not None},
        out=args.out,
        progress=not args.quiet,
    )
    seconds = time.perf_counter() - start
    size = args.out.stat().st_size / _MB
    print(f"wrote {args.out}: M={scan.n_points}, N={scan.N}, {size:.1f} MB in {seconds:.2f} s")
    return 0
