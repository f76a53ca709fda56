"""Reading scan files: one leaf module per format under a reader registry, then the decisions
(plan), detector steps, positions geometry and assembly into the contract's fields.

Users read files through :meth:`ptychodata.ScanData.load` and :func:`ptychodata.prepare`; the names
here are what the layers above (scan, store, inspect, CLI) build on, and
:func:`write_training` writes ptychodus' training-data HDF5.
"""

from ptychodata.io._assemble import assemble, check_finite_positions, read_scan_fields
from ptychodata.io._container import open_container, sniff
from ptychodata.io._counts import (
    COUNTS_TOTAL_FACTOR,
    CountsEvidence,
    check_amplitudes,
    counts_to_amplitude,
    invalid_patterns,
)
from ptychodata.io._detector import DetectorSteps
from ptychodata.io._geometry import NEAR_FIELD_STEP, median_neighbour_step
from ptychodata.io._hdf5 import check_links, filters_of, require_h5py
from ptychodata.io._lazy import LazyPatterns
from ptychodata.io._limits import available_memory, check_fits, memory_budget, regular_file
from ptychodata.io._metadata import metadata_nphotons, parse_metadata
from ptychodata.io._npz import read_npz, write_npz
from ptychodata.io._options import Flag, LoadOptions, load_option_flags
from ptychodata.io._plan import Plan, plan
from ptychodata.io._ptychodus import write_training
from ptychodata.io._raw import RawScan
from ptychodata.io._registry import READERS, read_raw, recognise

__all__ = [
    "COUNTS_TOTAL_FACTOR",
    "NEAR_FIELD_STEP",
    "READERS",
    "CountsEvidence",
    "Flag",
    "LazyPatterns",
    "LoadOptions",
    "Plan",
    "DetectorSteps",
    "RawScan",
    "assemble",
    "available_memory",
    "check_fits",
    "check_links",
    "check_amplitudes",
    "check_finite_positions",
    "counts_to_amplitude",
    "filters_of",
    "invalid_patterns",
    "load_option_flags",
    "memory_budget",
    "median_neighbour_step",
    "metadata_nphotons",
    "open_container",
    "parse_metadata",
    "plan",
    "read_npz",
    "read_raw",
    "read_scan_fields",
    "recognise",
    "regular_file",
    "require_h5py",
    "sniff",
    "write_npz",
    "write_training",
]
