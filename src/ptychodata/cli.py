"""The ``ptychodata`` command: ``simulate``, ``inspect`` and ``demo``.

Thin by design: parse the arguments, call one library function, print. A
:class:`~ptychodata.errors.PtychodataError` (or an OS error such as an unwritable
path) becomes a one-line ``error: ...`` on stderr and exit status 2, without a
traceback; success is 0. Library modules are imported inside the commands, so
``ptychodata --help`` is fast.

The numbers ``inspect`` prints come from :func:`summarize_scan`, a pure function of a
:class:`~ptychodata.scan.ScanData` that returns a JSON-ready dict.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import textwrap
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ptychodata.errors import PtychodataError

if TYPE_CHECKING:
    from ptychodata.scan import ScanData

__all__ = ["build_parser", "main", "probe_diameter", "summarize_scan"]

# inspect reads at most this many diffraction patterns, and at most this many bytes of them.
_SAMPLE_PATTERNS = 2000
_SAMPLE_BYTES = 128 << 20
# Fraction of the probe intensity Σ|P|² inside the circle whose diameter is "the probe diameter".
_PROBE_ENERGY_FRACTION = 0.9
# Integer-valued diffraction with a maximum above this looks like raw detector counts.
_COUNTS_MAX = 1000.0
_MB = 1e6


# ====================================================================== entry point
def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``ptychodata ARGS``; returns the exit status.

    Parameters
    ----------
    argv : list of str, optional
        Arguments without the program name; default ``sys.argv[1:]``.

    Returns
    -------
    int
        0 on success, 2 on a usage error or a :class:`PtychodataError` (printed as one
        ``error: ...`` line on stderr), 130 on Ctrl-C. ``--help`` and ``--version``
        print and return 0.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors: argparse has printed already
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    try:
        return args.run(args)
    except (PtychodataError, OSError) as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ptychodata`` and its sub-commands."""
    from ptychodata import __version__

    parser = argparse.ArgumentParser(
        prog="ptychodata",
        description="Ptychography scans in, neighbour-grouped training data out.",
        epilog="Run 'ptychodata demo' for the whole pipeline on a synthetic scan.",
    )
    parser.add_argument("--version", action="version", version=f"ptychodata {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sim = commands.add_parser(
        "simulate",
        help="write a synthetic scan (.npz)",
        description="Simulate a noise-free or Poisson-noisy scan with a random object and write it "
        "as an uncompressed .npz (PtychoPINN layout). Unset options take simulate()'s defaults.",
    )
    sim.add_argument("out", type=Path, metavar="OUT.npz", help="file to write")
    sim.add_argument("--points", type=_positive_int, help="number of scan points M (default 1024)")
    sim.add_argument("--N", type=_int_at_least(2), help="pattern size in pixels (default 64)")
    sim.add_argument("--seed", type=int, help="random seed (default: fresh entropy, recorded in the file)")
    sim.add_argument(
        "--pattern", choices=("raster", "jittered", "fermat"), help="scan pattern (default raster)"
    )
    sim.add_argument("--overlap", type=_fraction, help="linear probe overlap, 0 <= overlap < 1 (default 0.7)")
    sim.add_argument("--nphotons", type=_positive_float, help="mean counts per pattern (default: no noise)")
    sim.add_argument("--probe", choices=("disk", "gaussian"), help="probe shape (default disk)")
    sim.add_argument("--quiet", action="store_true", help="no progress bar")
    sim.set_defaults(run=_run_simulate)

    insp = commands.add_parser(
        "inspect",
        help="summarise a scan file",
        description="Print what a scan file holds: arrays, value ranges (on a sample of patterns), "
        "scan extent, step, probe size and overlap, and whether the patterns look like amplitudes "
        "or raw counts.",
    )
    insp.add_argument("file", type=Path, metavar="FILE", help="scan .npz")
    insp.add_argument("--plot", type=Path, metavar="OUT.png", help="also draw an overview figure")
    insp.add_argument("--json", action="store_true", help="print the summary as JSON")
    insp.set_defaults(run=_run_inspect)

    demo = commands.add_parser(
        "demo",
        help="simulate, group and normalise a scan in memory, with timings",
        description="The whole pipeline on a synthetic scan: simulate -> group -> grouped_data; "
        "prints the grouped dict's arrays, x_scale, the mean pattern energy and the time of each stage.",
    )
    demo.add_argument("--points", type=_positive_int, default=2048, help="scan points M (default 2048)")
    demo.add_argument("--N", type=_int_at_least(2), default=64, help="pattern size (default 64)")
    demo.add_argument(
        "--gridsize", type=_positive_int, default=2, help="g, C = g² patterns a group (default 2)"
    )
    demo.add_argument("--neighbors", type=_positive_int, default=7, help="neighbour pool K (default 7)")
    demo.add_argument("--seed", type=int, default=0, help="seed of simulation and grouping (default 0)")
    demo.add_argument("--out", type=Path, metavar="DIR", help="also save the scan (.npz) and figures there")
    demo.set_defaults(run=_run_demo)
    return parser


# ====================================================================== commands
def _run_simulate(args: argparse.Namespace) -> int:
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


def _run_inspect(args: argparse.Namespace) -> int:
    from ptychodata.scan import ScanData

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scan = ScanData.load(args.file)
    summary = summarize_scan(scan)
    summary["file"] = str(args.file)
    summary["file_size_bytes"] = args.file.stat().st_size
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(format_summary(summary))
    for warning in caught:
        print(f"warning: {_one_line(warning.message)}", file=sys.stderr)
    if args.plot is not None:
        from ptychodata.plot import plot_scan

        print(f"plot: {plot_scan(scan, args.plot)}")
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from ptychodata.grouped import grouped_data
    from ptychodata.grouping import GroupingConfig, group
    from ptychodata.simulate import simulate

    # Built first, so an impossible grouping request fails before any work is done.
    config = GroupingConfig(N=args.N, gridsize=args.gridsize, neighbor_count=args.neighbors, seed=args.seed)
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    scan = simulate(n_points=args.points, N=args.N, seed=args.seed)
    timings["simulate"], clock = time.perf_counter() - clock, time.perf_counter()
    groups = group(scan, config)
    timings["group"], clock = time.perf_counter() - clock, time.perf_counter()
    grouped = grouped_data(scan, config, groups=groups)
    timings["grouped_data"], clock = time.perf_counter() - clock, time.perf_counter()
    energy = _mean_pattern_energy(grouped["X_full"])

    obj = "none" if scan.object is None else "×".join(map(str, scan.object.shape))
    print(
        f"scan      M={scan.n_points} points, N={scan.N}, object {obj}, {scan.metadata.get('pattern')} "
        f"pattern, step {scan.metadata.get('step', float('nan')):.2f} px"
    )
    print(
        f"grouping  gridsize={config.gridsize} (C={config.C}), neighbor_count={config.neighbor_count}, "
        f"seed={config.seed} -> B={groups.shape[0]} groups"
    )
    print("grouped_data:")
    for key, value in grouped.items():
        print(f"  {key:<22} {_describe(value)}")
    target = (scan.N / 2) ** 2
    print(f"mean ΣX² per pattern   {energy:.6g}  (expected (N/2)² = {target:g}; ratio {energy / target:.6f})")
    if args.out is not None:
        from ptychodata.plot import plot_groups, plot_scan

        clock = time.perf_counter()
        written = [
            scan.save(args.out / "demo_scan.npz"),
            plot_scan(scan, args.out / "demo_scan.png"),
            plot_groups(grouped, args.out / "demo_groups.png"),
        ]
        timings["save+plots"] = time.perf_counter() - clock
        print("wrote     " + ", ".join(str(path) for path in written))
    total = sum(timings.values())
    print(
        "timings   "
        + ", ".join(f"{stage} {seconds:.2f} s" for stage, seconds in timings.items())
        + f"; total {total:.2f} s"
    )
    return 0


# ====================================================================== scan summary
def summarize_scan(scan: ScanData, *, max_patterns: int = _SAMPLE_PATTERNS) -> dict[str, Any]:
    """Summary numbers of a scan, cheap even for a huge memory-mapped file.

    Diffraction statistics come from at most ``max_patterns`` patterns (and at most
    128 MiB of them), evenly spaced through the scan; the rest is computed from the
    positions, probe and shapes.

    Parameters
    ----------
    scan : ScanData
    max_patterns : int
        Largest number of patterns read for the value statistics.

    Returns
    -------
    dict
        JSON-ready: ``source``, ``n_points`` (M), ``N``; ``arrays`` (key -> shape, dtype,
        memory-mapped or not; ``*_start`` marked when they default to the positions);
        ``diffraction`` (min, max, mean, ``n_sampled``, ``sampled``, ``integer_valued``);
        ``looks_like_counts`` and a one-line ``hint``; ``x_range`` and ``y_range``
        (min, max in object pixels, x = column, y = row); ``step`` (median
        nearest-neighbour distance, px; None for one point); ``probe_diameter`` (px, see
        :func:`probe_diameter`); ``overlap`` = 1 − step / probe_diameter (linear
        overlap; None when either is unknown); ``probe_shape``, ``object_shape``;
        ``metadata``.
    """
    from scipy.spatial import cKDTree

    stats = _diffraction_stats(scan.diffraction, max_patterns)
    counts, hint = _amplitude_hint(scan.diffraction.dtype, stats)
    step = None
    if scan.n_points > 1:
        distances, _ = cKDTree(scan.positions).query(scan.positions, k=2, workers=-1)
        step = float(np.median(distances[:, 1]))
    diameter = probe_diameter(scan.probe)
    overlap = None if step is None or not diameter else 1.0 - step / diameter
    return {
        "source": scan.source,
        "n_points": scan.n_points,
        "N": scan.N,
        "arrays": _array_table(scan),
        "diffraction": stats,
        "looks_like_counts": counts,
        "hint": hint,
        "x_range": [float(scan.xcoords.min()), float(scan.xcoords.max())],
        "y_range": [float(scan.ycoords.min()), float(scan.ycoords.max())],
        "step": step,
        "probe_diameter": diameter,
        "probe_diameter_definition": f"diameter of the circle about the intensity centroid holding "
        f"{_PROBE_ENERGY_FRACTION:.0%} of sum |P|^2",
        "overlap": overlap,
        "probe_shape": list(scan.probe.shape),
        "object_shape": None if scan.object is None else list(scan.object.shape),
        "metadata": _jsonable(dict(scan.metadata)),
    }


def probe_diameter(probe: np.ndarray, *, fraction: float = _PROBE_ENERGY_FRACTION) -> float | None:
    """Encircled-energy diameter of a probe, in pixels.

    Twice the radius, measured from the centroid of |P|², of the circle that holds
    ``fraction`` of Σ|P|² (linearly interpolated between pixel radii). For the default
    0.9 this is ≈ 0.93 × the 50 %-amplitude diameter of a flat-topped disk and
    ≈ 1.07 × the 1/e²-intensity diameter of a Gaussian, so ``1 − step / diameter``
    is the usual linear overlap. Defined for any probe shape; for a ring-shaped
    (centrally obstructed) probe it measures the outer footprint.

    Parameters
    ----------
    probe : ndarray of shape (N, N), complex
    fraction : float
        Energy fraction in (0, 1].

    Returns
    -------
    float or None
        None for an all-zero probe.
    """
    intensity = np.abs(np.asarray(probe, dtype=np.complex128)) ** 2
    total = float(intensity.sum())
    if not total > 0:
        return None
    rows, cols = np.indices(intensity.shape)
    centre_row = float((intensity * rows).sum() / total)
    centre_col = float((intensity * cols).sum() / total)
    radii = np.hypot(rows - centre_row, cols - centre_col).ravel()
    order = np.argsort(radii, kind="stable")
    cumulative = np.cumsum(intensity.ravel()[order]) / total
    return 2.0 * float(np.interp(fraction, cumulative, radii[order]))


def format_summary(summary: dict[str, Any]) -> str:
    """Human-readable text of a :func:`summarize_scan` dict (with optional ``file``/``file_size_bytes``)."""
    lines = []
    if "file" in summary:
        lines.append(f"file         {summary['file']} ({_human_size(summary['file_size_bytes'])})")
    lines.append(f"points       M = {summary['n_points']}")
    lines.append(f"patterns     N = {summary['N']} (N×N)")
    lines.append("arrays")
    for key, info in summary["arrays"].items():
        shape = "(" + ", ".join(map(str, info["shape"])) + ("," if len(info["shape"]) == 1 else "") + ")"
        note = f"  {info['note']}" if info.get("note") else ""
        lines.append(f"  {key:<15} {shape:<18} {info['dtype']:<10}{note}".rstrip())
    stats = summary["diffraction"]
    sample = (
        f"sample of {stats['n_sampled']} of {summary['n_points']} patterns, evenly spaced"
        if stats["sampled"]
        else f"all {stats['n_sampled']} patterns"
    )
    lines.append(
        f"diffraction  min {stats['min']:.4g}, max {stats['max']:.4g}, mean {stats['mean']:.4g} ({sample})"
    )
    lines.append(f"             {summary['hint']}")
    (x0, x1), (y0, y1) = summary["x_range"], summary["y_range"]
    lines.append(f"positions    x {x0:.2f} .. {x1:.2f} px, y {y0:.2f} .. {y1:.2f} px (x = column, y = row)")
    step = summary["step"]
    lines.append(
        "step         n/a (one point)"
        if step is None
        else f"step         {step:.3f} px (median nearest-neighbour distance)"
    )
    diameter = summary["probe_diameter"]
    probe = "×".join(map(str, summary["probe_shape"]))
    lines.append(
        f"probe        {probe}, diameter "
        + ("n/a (all-zero probe)" if diameter is None else f"{diameter:.2f} px")
        + f" ({_PROBE_ENERGY_FRACTION:.0%} of |P|² inside)"
    )
    overlap = summary["overlap"]
    if overlap is not None:
        note = " (no overlap: step exceeds the probe diameter)" if overlap < 0 else ""
        lines.append(f"overlap      {overlap:.3f} (linear: 1 − step / probe diameter){note}")
    shape = summary["object_shape"]
    lines.append("object       " + ("none" if shape is None else "×".join(map(str, shape))))
    metadata = summary["metadata"]
    if metadata:
        text = ", ".join(f"{key}={json.dumps(value)}" for key, value in metadata.items())
        wrapped = textwrap.wrap(text, width=96, initial_indent="metadata     ", subsequent_indent=" " * 13)
        lines.extend(wrapped)
    else:
        lines.append("metadata     none")
    return "\n".join(lines)


# ---------------------------------------------------------------------- summary helpers
def _array_table(scan: ScanData) -> dict[str, dict[str, Any]]:
    """key -> {shape, dtype, note} for the scan's arrays, under the file-format key names."""
    entries: list[tuple[str, np.ndarray | None, str]] = [
        ("diffraction", scan.diffraction, ""),
        ("xcoords", scan.xcoords, ""),
        ("ycoords", scan.ycoords, ""),
        ("xcoords_start", scan.xcoords_start, "(= xcoords)" if scan.xcoords_start is scan.xcoords else ""),
        ("ycoords_start", scan.ycoords_start, "(= ycoords)" if scan.ycoords_start is scan.ycoords else ""),
        ("scan_index", scan.scan_index, "" if scan.scan_index.any() else "(all 0: one scan)"),
        ("probeGuess", scan.probe, ""),
        ("objectGuess", scan.object, ""),
        ("Y", scan.Y, ""),
    ]
    entries.extend((key, value, "(extra key)") for key, value in scan.extras.items())
    table = {}
    for key, value, note in entries:
        if value is None:
            continue
        if isinstance(value, np.memmap):
            note = (note + " memory-mapped").strip()
        table[key] = {"shape": list(value.shape), "dtype": str(value.dtype), "note": note}
    return table


def _sample_indices(n_points: int, pattern_bytes: int, max_patterns: int) -> np.ndarray:
    count = min(n_points, max(1, max_patterns), max(1, _SAMPLE_BYTES // max(1, pattern_bytes)))
    return np.unique(np.linspace(0, n_points - 1, count).round().astype(np.int64))


def _diffraction_stats(diffraction: np.ndarray, max_patterns: int) -> dict[str, Any]:
    """min/max/mean of an evenly spaced sample of patterns, read in chunks of ~16 MiB."""
    n_points = diffraction.shape[0]
    indices = _sample_indices(n_points, diffraction[:1].nbytes, max_patterns)
    low, high, total, count, integral = math.inf, -math.inf, 0.0, 0, True
    step = max(1, (16 << 20) // max(1, diffraction[:1].nbytes))
    for start in range(0, len(indices), step):
        chunk = np.asarray(diffraction[indices[start : start + step]])
        low, high = min(low, float(chunk.min())), max(high, float(chunk.max()))
        total += float(chunk.sum(dtype=np.float64))
        count += chunk.size
        if integral and chunk.dtype.kind == "f":
            integral = bool(np.all(chunk == np.floor(chunk)))
    return {
        "min": low,
        "max": high,
        "mean": total / count,
        "n_sampled": len(indices),
        "sampled": bool(len(indices) < n_points),
        "integer_valued": integral,
    }


def _amplitude_hint(dtype: np.dtype, stats: dict[str, Any]) -> tuple[bool, str]:
    """(looks like raw counts?, one-line hint) from the dtype and the sampled values."""
    if np.issubdtype(dtype, np.integer):
        return True, f"integer dtype ({dtype}): looks like raw counts: load with intensity=True"
    if stats["integer_valued"] and stats["max"] > _COUNTS_MAX:
        return True, (
            f"whole-number values up to {stats['max']:.4g}: looks like raw counts: load with intensity=True"
        )
    if stats["integer_valued"] and stats["max"] > 0:
        return False, (
            "whole-number values: looks like amplitudes, but may be raw counts at low dose; "
            "if so, load with intensity=True"
        )
    return False, "looks like amplitudes (sqrt of counts)"


def _mean_pattern_energy(X: np.ndarray) -> float:
    """Mean over groups and channels of Σ_pixels X², in float64, a chunk of groups at a time."""
    n_groups, C = X.shape[0], X.shape[-1]
    step = max(1, (32 << 20) // max(1, X[:1].nbytes * 2))
    total = 0.0
    for start in range(0, n_groups, step):
        chunk = np.asarray(X[start : start + step], dtype=np.float64)
        total += float(np.einsum("bijc,bijc->", chunk, chunk))
    return total / (n_groups * C)


def _describe(value: Any) -> str:
    if value is None:
        return "None"
    if isinstance(value, np.ndarray):
        return f"{value.shape!s:<20} {value.dtype}"
    if isinstance(value, float):
        return f"{value:.6g}"
    return repr(value)


def _jsonable(value: Any) -> Any:
    """Metadata made JSON-safe (NumPy scalars and arrays to Python values)."""
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _human_size(n_bytes: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= size:
            return f"{n_bytes / size:.1f} {unit}"
    return f"{n_bytes} B"


def _one_line(message: object) -> str:
    return " ".join(str(message).split())


# ---------------------------------------------------------------------- argument types
def _positive_int(text: str) -> int:
    return _int_at_least(1)(text)


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is too small; expected an integer >= {minimum}")
        return value

    parse.__name__ = "int"
    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text} must be a positive finite number")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text} is outside [0, 1)")
    return value


if __name__ == "__main__":
    raise SystemExit(main())
