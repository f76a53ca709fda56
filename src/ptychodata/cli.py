"""The ``ptychodata`` command: ``simulate``, ``inspect``, ``convert``, ``prepare``, ``cache`` and ``demo``.

Thin by design: parse the arguments, call one library function, print. A
:class:`~ptychodata.errors.PtychodataError` (or an OS error such as an unwritable
path) becomes a one-line ``error: ...`` on stderr and exit status 2, without a
traceback; success is 0. Library modules are imported inside the commands, so
``ptychodata --help`` is fast.

The numbers ``inspect`` prints come from :func:`ptychodata.summary.describe_file`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ptychodata._runtime import rows_per_chunk
from ptychodata.errors import ParameterError, PtychodataError, StoreNotFoundError
from ptychodata.summary import human_size

__all__ = ["build_parser", "main"]

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
    previous = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        return args.run(args)
    except (PtychodataError, OSError) as exc:
        _close_progress_bars()
        print(f"error: {_for_the_command_line(_one_line(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _close_progress_bars()
        print("error: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = previous


# Library messages name Python arguments; on the command line they are flags.
_FLAGS = {
    "enable_oversampling=True": "--oversample",
    "intensity=True": "--intensity",
    "intensity=False": "--amplitude",
    "shift=False": "--no-shift",
    "shift=True": "--shift",
    "near_field=True": "--near-field",
    "clip_negative=True": "--clip-negative",
    "probe_modes='all'": "--probe-modes all",
    "estimate_probe=True": "--estimate-probe",
    "crop=": "--crop ",
    "keys=": "--key NAME=PATH ",
    "cache_dir=...": "--cache-dir DIR",
    "materialize=True": "--materialize",
    "verify=True": "--verify",
    "neighbor_count": "--neighbors",
    "n_groups": "--n-groups",
    "nphotons=": "--nphotons ",
    "pixel_size=": "--pixel-size ",
    "copy=False": "--no-copy",
    "copy=True": "no --no-copy",
    "frames_dtype=": "--frames-dtype ",
}


def _for_the_command_line(message: str) -> str:
    for argument, flag in _FLAGS.items():
        message = message.replace(argument, flag)
    return message


def _close_progress_bars() -> None:
    """End unfinished progress bars so the next line starts on a line of its own."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()
    sys.stderr.flush()


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ARG001
    """Warnings as one ``warning: ...`` line, without Python's source line."""
    _close_progress_bars()
    print(f"warning: {_for_the_command_line(_one_line(message))}", file=sys.stderr if file is None else file)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ptychodata`` and its sub-commands."""
    from ptychodata._runtime import __version__

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
        help="describe any scan file (HDF5/CXI, npz, npz.bz2, ptychodus, tike, ...)",
        description="Print what a file holds before validating it: the HDF5/npz tree with shapes, dtypes, "
        "chunks and filters, the layout recognised, counts-or-amplitude evidence with numbers, shift state, "
        "bad pixels, geometry and units, and what to pass when something is missing; then, when it loads, "
        "the scan summary (value ranges on a sample of patterns, extent, step, probe size, overlap). "
        "Exit status 1 when the file is readable but does not load as it is.",
    )
    insp.add_argument("file", type=Path, metavar="FILE", help="scan file, or a store directory")
    insp.add_argument("--plot", type=Path, metavar="OUT.png", help="also draw an overview figure")
    insp.add_argument("--json", action="store_true", help="print the description as JSON")
    _add_load_options(insp)
    insp.set_defaults(run=_run_inspect)

    conv = commands.add_parser(
        "convert",
        help="read any recognised scan file and write ptychodata's npz or ptychodus' training HDF5 (streamed)",
        description="Read IN in any layout ptychodata recognises (or through --key), prepare the detector "
        "data (counts to amplitude, shift, crop, bin, mask) and write OUT, a chunk of patterns at a time: "
        "an uncompressed .npz in the PtychoPINN layout (mask and provenance included), or, for OUT.h5, "
        "ptychodus' training-data HDF5 (counts, bad_pixels, probe, object, positions, geometry).",
    )
    conv.add_argument("input", type=Path, metavar="IN", help="scan file")
    conv.add_argument("output", type=Path, metavar="OUT", help="file to write: .npz, or .h5 for ptychodus")
    _add_load_options(conv)
    conv.set_defaults(run=_run_convert)

    prep = commands.add_parser(
        "prepare",
        help="build (or reuse) the memory-mapped store of one or more scans; prints its path",
        description="Copy the scans' patterns into a store once (streamed, checked, hashed), group them, "
        "and print the store's path. An up-to-date store is reused in milliseconds; a changed source "
        "is rebuilt. Each source is one experiment; groups never cross experiments.",
    )
    prep.add_argument("sources", type=Path, nargs="+", metavar="SRC", help="scan files (any format inspect reads)")
    prep.add_argument(
        "--gridsize", type=_positive_int, default=1, help="g, C = g² patterns a group (default 1)"
    )
    prep.add_argument("--neighbors", type=_positive_int, default=4, help="neighbour pool K (default 4)")
    prep.add_argument("--n-groups", type=_positive_int, help="number of groups (default: one per point)")
    prep.add_argument("--seed", type=int, default=0, help="grouping seed (default 0)")
    prep.add_argument("--order", choices=("random", "raster"), default="random", help="member order")
    prep.add_argument(
        "--oversample", action="store_true", help="allow more groups than points (gridsize > 1)"
    )
    prep.add_argument("--nphotons", type=_positive_float, help="photons per pattern, for intensity_scale")
    _add_cache_dir(prep)
    prep.add_argument("--materialize", action="store_true", help="also write the grouped X array")
    prep.add_argument("--verify", action="store_true", help="re-hash sources before reusing a store")
    prep.add_argument(
        "--no-copy",
        action="store_true",
        help="reference the patterns in place (one uncompressed .npz source) instead of copying them",
    )
    prep.add_argument(
        "--frames-dtype",
        choices=("float32", "float16", "bfloat16", "uint16", "uint32"),
        help="how patterns are stored: float32 (default), float16/bfloat16 amplitudes (rounded), "
        "uint16/uint32 whole counts (lossless, with --intensity)",
    )
    writing = prep.add_mutually_exclusive_group()
    writing.add_argument(
        "--direct-io",
        dest="direct_io",
        action="store_const",
        const=True,
        help="write the patterns past the page cache (O_DIRECT where the file system allows it); default: "
        "only when they are larger than half the memory available",
    )
    writing.add_argument(
        "--page-cache", dest="direct_io", action="store_const", const=False, help="write the patterns through the page cache"
    )
    prep.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_load_options(prep)
    prep.set_defaults(run=_run_prepare)

    cache = commands.add_parser(
        "cache",
        help="list, verify, prune or remove cached stores",
        description="list: every store with its builds and groupings; verify: files, sources and hashes of "
        "the live builds; prune: delete builds that are not live and that no reader holds, and leftovers of "
        "builds that died; remove: delete whole stores (refused while a reader holds one, unless --force).",
    )
    cache.add_argument("action", choices=("list", "verify", "prune", "remove"))
    cache.add_argument(
        "stores",
        nargs="*",
        metavar="KEY",
        help="frame store keys or paths (default: all for list/verify; remove needs keys or --all)",
    )
    _add_cache_dir(cache)
    cache.add_argument("--all", action="store_true", help="with remove: every store")
    cache.add_argument("--force", action="store_true", help="with remove: also stores a reader holds open")
    cache.add_argument("--quick", action="store_true", help="with verify: skip re-hashing the sources")
    cache.set_defaults(run=_run_cache)

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
    from ptychodata.summary import describe_file, format_description

    if args.file.is_dir():
        return _inspect_store(args)
    description = describe_file(args.file, **_load_options(args))
    if args.json:
        print(json.dumps(description, indent=2))
    else:
        print(format_description(description))
    if args.plot is not None and description["problem"] is None:
        from ptychodata.plot import plot_scan
        from ptychodata.scan import ScanData

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # already reported above
            scan = ScanData.load(args.file, **_load_options(args))
        print(f"plot: {plot_scan(scan, args.plot)}")
    return 0 if description["problem"] is None else 1


def _run_convert(args: argparse.Namespace) -> int:
    from ptychodata.scan import ScanData

    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scan = ScanData.load(args.input, **_load_options(args))
    for warning in caught:
        print(f"note: {_one_line(warning.message)}", file=sys.stderr)
    if args.output.suffix.lower() in (".h5", ".hdf5"):
        from ptychodata.io import write_training

        written = write_training(args.output, scan)
    else:
        written = scan.save(args.output)
    print(
        f"wrote {written}: M={scan.n_points}, N={scan.N}, "
        f"{human_size(written.stat().st_size)} in {time.perf_counter() - start:.2f} s"
    )
    return 0


def _add_load_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("reading (see ScanData.load)")
    group.add_argument("--key", action="append", default=[], metavar="NAME=PATH",
                       help="key map for other layouts, e.g. --key diffraction=/entry/data --key positions=/pos "
                       "(names: diffraction, xcoords, ycoords, positions, probe, object, bad_pixels, energy_eV, "
                       "energy_J, wavelength_m, distance_m, detector_pixel_m)")
    group.add_argument("--diffraction", type=Path, metavar="FILE", help="patterns for a ptychodus product file")
    counts = group.add_mutually_exclusive_group()
    counts.add_argument("--intensity", dest="intensity", action="store_true", default=None,
                        help="the patterns are counts (sqrt taken)")
    counts.add_argument("--amplitude", dest="intensity", action="store_false", help="the patterns are amplitudes")
    shift = group.add_mutually_exclusive_group()
    shift.add_argument("--shift", dest="shift", action="store_true", default=None, help="fftshift the patterns")
    shift.add_argument("--no-shift", dest="shift", action="store_false", help="keep the patterns as stored")
    group.add_argument("--crop", type=_int_at_least(2), help="crop to N×N around the beam centre")
    group.add_argument("--center", type=float, nargs=2, metavar=("ROW", "COL"), help="beam centre for --crop")
    group.add_argument("--bin", type=_positive_int, default=1, help="sum BIN×BIN pixel blocks (after the crop)")
    group.add_argument("--transpose", action="store_true", help="swap the detector axes")
    group.add_argument("--flip-rows", action="store_true", help="reverse the detector rows")
    group.add_argument("--flip-cols", action="store_true", help="reverse the detector columns")
    group.add_argument("--mask", type=Path, metavar="MASK.npy", help="(H, W) mask of the detector, non-zero = usable")
    group.add_argument("--clip-negative", action="store_true", help="clip negative counts (dark subtraction) to 0")
    group.add_argument("--pixel-size", type=_positive_float, metavar="M", help="object pixel size in metres")
    group.add_argument("--energy-ev", type=_positive_float, help="photon energy in eV")
    group.add_argument("--wavelength", type=_positive_float, metavar="M", help="wavelength in metres")
    group.add_argument("--distance", type=_positive_float, metavar="M", help="detector distance in metres")
    group.add_argument("--detector-pixel", type=_positive_float, metavar="M", help="detector pixel in metres")
    group.add_argument("--position-unit", choices=("px", "m"), help="unit of key-mapped positions (default px)")
    group.add_argument("--position-columns", choices=("xy", "yx"), help="column order of --key positions")
    group.add_argument("--position-origin", choices=("centre", "corner"),
                       help="positions are window centres (default) or minimum corners")
    group.add_argument("--probe-modes", choices=("first", "all"), default="first", help="probe modes to keep")
    group.add_argument("--estimate-probe", action="store_true",
                       help="without a probe in the file, use the flagged estimate IFFT(sqrt(mean I))")
    group.add_argument("--near-field", action="store_true", help="accept near-field data (needs --pixel-size)")


# What _load_options gives when a flag is not used (ScanData.load's own defaults).
_LOAD_DEFAULTS = {"keys": None, "diffraction": None, "shift": None, "crop": None, "center": None, "bin": 1,
                  "transpose": False, "flip_rows": False, "flip_cols": False, "clip_negative": None,
                  "pixel_size": None, "energy_eV": None, "wavelength_m": None, "distance_m": None,
                  "detector_pixel_m": None, "position_unit": None, "position_columns": None,
                  "position_origin": None, "probe_modes": "first", "near_field": False, "estimate_probe": False}


def _load_options(args: argparse.Namespace) -> dict[str, Any]:
    keys = {}
    for item in args.key:
        name, sep, member = item.partition("=")
        if not sep or not name or not member:
            raise ParameterError(f"--key {item!r}: expected NAME=PATH, e.g. --key diffraction=/entry/data/data")
        keys[name] = member
    options: dict[str, Any] = {
        "keys": keys or None,
        "diffraction": None if args.diffraction is None else str(args.diffraction),
        "intensity": args.intensity,
        "shift": args.shift,
        "crop": args.crop,
        "center": None if args.center is None else tuple(args.center),
        "bin": args.bin,
        "transpose": args.transpose,
        "flip_rows": args.flip_rows,
        "flip_cols": args.flip_cols,
        "clip_negative": args.clip_negative or None,
        "pixel_size": args.pixel_size,
        "energy_eV": args.energy_ev,
        "wavelength_m": args.wavelength,
        "distance_m": args.distance,
        "detector_pixel_m": args.detector_pixel,
        "position_unit": args.position_unit,
        "position_columns": args.position_columns,
        "position_origin": args.position_origin,
        "probe_modes": args.probe_modes,
        "near_field": args.near_field,
        "estimate_probe": args.estimate_probe,
    }
    if args.mask is not None:
        options["mask"] = np.load(args.mask, allow_pickle=False) != 0
    return options


def _inspect_store(args: argparse.Namespace) -> int:
    from ptychodata.store import open_store

    with open_store(args.file) as store:
        return _print_store(store, args)


def _print_store(store: Any, args: argparse.Namespace) -> int:
    info = store.info()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        config = info["config"]
        print(f"store        {info['path']}")
        print(f"build        {info['build_id']} ({info['build_path']})")
        print(f"frames       {info['frames_build_id']} ({info['frames_path']})")
        print(
            f"patterns     {info['n_patterns']} of {info['N']}×{info['N']}, {human_size(info['bytes_on_disk'])} "
            f"on disk, stored as {info['frames_dtype']} {info['frames_values']}"
            + ("" if info["zero_copy_source"] is None else f" in place in {info['zero_copy_source']}")
        )
        print(
            f"groups       {info['n_groups']} of C={info['C']} (gridsize {config['gridsize']}, "
            f"K={config['neighbor_count']}, seed {config['seed']}, order {config['order']})"
            + (", X materialized" if info["materialized"] else "")
        )
        for experiment in info["experiments"]:
            scale = experiment["intensity_scale"]
            print(
                f"experiment {experiment['experiment_id']}: {experiment['source']}, "
                f"{experiment['n_points']} points, x_scale {experiment['x_scale']:.6g}"
                + ("" if scale is None else f", intensity_scale {scale:.6g}")
                + (
                    ""
                    if experiment["object_shape"] is None
                    else f", object {tuple(experiment['object_shape'])}"
                )
            )
    if args.plot:
        from ptychodata.plot import plot_store

        print(f"plot         {plot_store(store, args.plot)}")
    return 0


def _run_prepare(args: argparse.Namespace) -> int:
    from ptychodata.grouping import GroupingConfig
    from ptychodata.store import prepare

    config = GroupingConfig(
        gridsize=args.gridsize,
        neighbor_count=args.neighbors,
        n_groups=args.n_groups,
        seed=args.seed,
        order=args.order,
        enable_oversampling=args.oversample,
        nphotons=args.nphotons,
    )
    options = _load_options(args)
    intensity = options.pop("intensity")
    # Only what was given: the store's key then matches prepare() called with the same options.
    options = {name: value for name, value in options.items()
               if not (name in _LOAD_DEFAULTS and _LOAD_DEFAULTS[name] == value)}
    start = time.perf_counter()
    store = prepare(
        [str(source) for source in args.sources],
        config,
        cache_dir=args.cache_dir,
        intensity=intensity,
        load_options=options,
        materialize=args.materialize,
        progress=not args.quiet,
        verify=args.verify,
        copy=not args.no_copy,
        frames_dtype=args.frames_dtype,
        direct_io=args.direct_io,
    )
    with store:
        if not args.quiet:
            print(
                f"{len(store)} groups of C={store.C} from {store.n_patterns} patterns, build {store.build_id[:8]} "
                f"({time.perf_counter() - start:.2f} s)",
                file=sys.stderr,
            )
        print(store.path)
    return 0


def _run_cache(args: argparse.Namespace) -> int:
    from ptychodata.store import default_cache_dir
    from ptychodata.store._cache import list_stores, prune_cache, remove_store, verify_store

    cache_dir = args.cache_dir or default_cache_dir()
    stores = list_stores(cache_dir)
    if args.stores:
        wanted = set(args.stores)
        stores = [s for s in stores if s.key in wanted or str(s.path) in wanted or s.path.name in wanted]
        missing = (
            wanted - {s.key for s in stores} - {str(s.path) for s in stores} - {s.path.name for s in stores}
        )
        if missing:
            raise StoreNotFoundError(f"{cache_dir}: no store {', '.join(sorted(missing))}")
    if args.action == "list":
        print(f"{cache_dir}: {len(stores)} store(s)")
        for cached in stores:
            sources = (
                ", ".join(e.source.path or "in-memory scan" for e in cached.manifest.experiments)
                if cached.manifest
                else f"unreadable ({cached.problem})"
            )
            print(
                f"{cached.key}  {human_size(cached.bytes_on_disk):>9}  "
                f"{cached.manifest.created if cached.manifest else '?'}  {len(cached.builds)} build(s)  {sources}"
            )
            for grouping, manifest in cached.groupings:
                what = (
                    "no live build"
                    if manifest is None
                    else (f"{manifest.n_groups} groups of C={manifest.C}, config {manifest.config}")
                )
                print(f"    {grouping.path}  {what}")
        return 0
    if args.action == "verify":
        failures = 0
        for cached in stores:
            problems = verify_store(cached.path, content=not args.quick)
            failures += bool(problems)
            print(f"{cached.key}  " + ("ok" if not problems else "PROBLEM: " + "; ".join(problems)))
        return 1 if failures else 0
    if args.action == "prune":
        print(f"removed {prune_cache(cache_dir)} unused build(s) and leftover(s)")
        return 0
    if not args.stores and not args.all:
        raise ParameterError("cache remove needs store keys, or --all")
    for cached in stores:
        remove_store(cached.path, force=args.force)
        print(f"removed {cached.path}")
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


def _mean_pattern_energy(X: np.ndarray) -> float:
    """Mean over groups and channels of Σ_pixels X², in float64, a chunk of groups at a time."""
    n_groups, C = X.shape[0], X.shape[-1]
    step = rows_per_chunk(X[:1].nbytes * 2, 32 << 20)
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


def _one_line(message: object) -> str:
    return " ".join(str(message).split())


# ---------------------------------------------------------------------- argument types
def _add_cache_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cache-dir", type=Path, help="cache directory (default $PTYCHODATA_CACHE, else ~/.cache/ptychodata)"
    )


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
