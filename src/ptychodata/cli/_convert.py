"""``ptychodata convert IN OUT``: read any recognised scan file, write ptychodata's npz or
ptychodus' training HDF5."""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

from ptychodata.cli._messages import for_the_command_line, one_line
from ptychodata.cli._options import add_load_options, load_options
from ptychodata.summary import human_size


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``convert`` command to ``commands``; returns its parser."""
    conv = commands.add_parser(
        "convert",
        help="read any recognised scan file and write ptychodata's npz or ptychodus' training HDF5 "
        "(streamed)",
        description="Read IN in any layout ptychodata recognises (or through --key), prepare the detector "
        "data (counts to amplitude, shift, crop, bin, mask) and write OUT, a chunk of patterns at a time: "
        "an uncompressed .npz in the PtychoPINN layout (mask and provenance included), or, for OUT.h5, "
        "ptychodus' training-data HDF5 (counts, bad_pixels, probe, object, positions, geometry).",
    )
    conv.add_argument("input", type=Path, metavar="IN", help="scan file")
    conv.add_argument("output", type=Path, metavar="OUT", help="file to write: .npz, or .h5 for ptychodus")
    add_load_options(conv)
    return conv


def run(args: argparse.Namespace) -> int:
    """Load IN (its warnings as ``note: ...`` lines), write OUT, print one line; returns 0."""
    from ptychodata.scan import ScanData

    start = time.perf_counter()
    options = load_options(args)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scan = ScanData.load(args.input, **options)
    for warning in caught:
        print(f"note: {for_the_command_line(one_line(warning.message))}", file=sys.stderr)
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
