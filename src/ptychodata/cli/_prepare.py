"""``ptychodata prepare SRC...``: build (or reuse) the store of one or more scans; prints its path."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ptychodata.cli._arguments import add_cache_dir, positive_float, positive_int
from ptychodata.cli._options import add_load_options, load_options


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``prepare`` command to ``commands``; returns its parser."""
    prep = commands.add_parser(
        "prepare",
        help="build (or reuse) the memory-mapped store of one or more scans; prints its path",
        description="Copy the scans' patterns into a store once (streamed, checked, hashed), group them, "
        "and print the store's path. An up-to-date store is reused in milliseconds; a changed source "
        "is rebuilt. Each source is one experiment; groups never cross experiments.",
    )
    prep.add_argument(
        "sources", type=Path, nargs="+", metavar="SRC", help="scan files (any format inspect reads)"
    )
    add_grouping(prep)
    add_cache_dir(prep)
    _add_storing(prep)
    prep.add_argument("--quiet", action="store_true", help="no progress bars")
    add_load_options(prep)
    return prep


def add_grouping(prep: argparse.ArgumentParser) -> None:
    """The grouping flags (``--gridsize``, ``--neighbors``, ...) of ``prepare`` and ``dataset create``."""
    prep.add_argument(
        "--gridsize", type=positive_int, default=1, help="g, C = g² patterns a group (default 1)"
    )
    prep.add_argument("--neighbors", type=positive_int, default=4, help="neighbour pool K (default 4)")
    prep.add_argument("--n-groups", type=positive_int, help="number of groups (default: one per point)")
    prep.add_argument("--seed", type=int, default=0, help="grouping seed (default 0)")
    prep.add_argument("--order", choices=("random", "raster"), default="random", help="member order")
    prep.add_argument(
        "--oversample", action="store_true", help="allow more groups than points (gridsize > 1)"
    )
    prep.add_argument("--nphotons", type=positive_float, help="photons per pattern, for intensity_scale")


def _add_storing(prep: argparse.ArgumentParser) -> None:
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
        "--page-cache",
        dest="direct_io",
        action="store_const",
        const=False,
        help="write the patterns through the page cache",
    )


def grouping_config(args: argparse.Namespace):
    """The :class:`~ptychodata.grouping.GroupingConfig` of the grouping flags."""
    from ptychodata.grouping import GroupingConfig

    return GroupingConfig(
        gridsize=args.gridsize,
        neighbor_count=args.neighbors,
        n_groups=args.n_groups,
        seed=args.seed,
        order=args.order,
        enable_oversampling=args.oversample,
        nphotons=args.nphotons,
    )


def run(args: argparse.Namespace) -> int:
    """Prepare the store, print its path (and, unless quiet, a line on stderr); returns 0."""
    from ptychodata.store import prepare

    config = grouping_config(args)
    # Only what was given: the store's key then matches prepare() called with the same options.
    options = load_options(args)
    intensity = options.pop("intensity", None)
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
                f"{len(store)} groups of C={store.C} from {store.n_patterns} patterns, "
                f"build {store.build_id[:8]} ({time.perf_counter() - start:.2f} s)",
                file=sys.stderr,
            )
        print(store.path)
    return 0
