"""``ptychodata inspect FILE``: describe a scan file (or a store) before validating it.

The numbers come from :func:`ptychodata.summary.describe_file` (a file) and
:meth:`Store.info <ptychodata.store.Store.info>` (a store directory).
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path
from typing import Any

from ptychodata.cli._messages import for_the_command_line
from ptychodata.cli._options import add_load_options, load_options
from ptychodata.summary import human_size


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``inspect`` command to ``commands``; returns its parser."""
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
    add_load_options(insp)
    return insp


def run(args: argparse.Namespace) -> int:
    """Print the description of the file or store; returns 0, or 1 when the file does not load."""
    from ptychodata.summary import describe_file, format_description

    if args.file.is_dir():
        return _inspect_store(args)
    options = load_options(args)
    description = describe_file(args.file, **options)
    if args.json:
        print(json.dumps(description, indent=2))
    else:
        print(format_description(_with_flags(description)))
    if args.plot is not None and description["problem"] is None:
        from ptychodata.plot import plot_scan
        from ptychodata.scan import ScanData

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # already reported above
            scan = ScanData.load(args.file, **options)
        print(f"plot: {plot_scan(scan, args.plot)}")
    return 0 if description["problem"] is None else 1


def _with_flags(description: dict[str, Any]) -> dict[str, Any]:
    """The description with its problem, warnings and hint naming flags, for the text output."""
    spelled = dict(description)
    for key in ("problem", "hint"):
        if isinstance(spelled.get(key), str):
            spelled[key] = for_the_command_line(spelled[key])
    spelled["warnings"] = [for_the_command_line(message) for message in description.get("warnings", [])]
    return spelled


def _inspect_store(args: argparse.Namespace) -> int:
    from ptychodata.store import open_store

    with open_store(args.file) as store:
        _print_store(store.info(), args.json)
        if args.plot:
            from ptychodata.plot import plot_store

            print(f"plot         {plot_store(store, args.plot)}")
    return 0


def _print_store(info: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(info, indent=2))
        return
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
        shape = experiment["object_shape"]
        print(
            f"experiment {experiment['experiment_id']}: {experiment['source']}, "
            f"{experiment['n_points']} points, x_scale {experiment['x_scale']:.6g}"
            + ("" if scale is None else f", intensity_scale {scale:.6g}")
            + ("" if shape is None else f", object {tuple(shape)}")
        )
