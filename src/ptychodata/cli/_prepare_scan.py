"""``ptychodata prepare-scan``: one task of a job array, or a worker sharing a list of scans."""

from __future__ import annotations

import argparse
import sys

from ptychodata.cli._arguments import add_cache_dir, integer
from ptychodata.dataset import ARRAY_INDEX_VARIABLES, Dataset, array_index, read_list


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``prepare-scan`` command to ``commands``; returns its parser."""
    parser = commands.add_parser(
        "prepare-scan",
        help="prepare scans of a list for a dataset: one per job-array task, or all by claiming",
        description="Prepare scans with a dataset's options without changing the dataset; "
        "'ptychodata dataset add NAME --list FILE --built-only' then publishes what was built. "
        f"--index I (default: ${ARRAY_INDEX_VARIABLES[0]}, ${ARRAY_INDEX_VARIABLES[1]} or "
        f"${ARRAY_INDEX_VARIABLES[2]}) prepares line I of the list, counted from 0; --claim loops over the "
        "list taking the scans no live process has claimed, so srun -n 32, mpirun or several "
        "workstations share one list with no lock support from the file system.",
    )
    parser.add_argument("--dataset", required=True, metavar="NAME", help="the dataset whose options apply")
    parser.add_argument("--list", required=True, metavar="FILE", help="scan files, one a line")
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--index", type=integer, metavar="I", help="the list's line to prepare, from 0")
    how.add_argument("--claim", action="store_true", help="prepare every scan no other live process claimed")
    add_cache_dir(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def run(args: argparse.Namespace) -> int:
    """Prepare the scan(s); prints one ``uid path`` line per scan prepared; returns 0."""
    dataset = Dataset(args.dataset, args.cache_dir)
    paths = read_list(args.list)
    if not args.claim:
        paths = [paths[array_index(args.index, len(paths))]]
    for path in paths:
        if args.claim and not dataset.claim(path):
            continue
        build = dataset.prepare_one(path, progress=not args.quiet)
        print(f"{build.uid} {path}")
        sys.stdout.flush()
    return 0
