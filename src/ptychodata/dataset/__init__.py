"""Datasets of many scans: one immutable build per scan, composed by reference.

:func:`prepare_scan` prepares one scan file with a :class:`DatasetSpec` into a
:class:`ScanBuild`; a :class:`Dataset` lists scan builds in immutable manifests and grows
without recopying; :func:`open_dataset` reads a build of it as one store
(:class:`DatasetStore`).
"""

from ptychodata.dataset._dataset import Dataset, DatasetChange, import_dataset, open_dataset
from ptychodata.dataset._jobs import ARRAY_INDEX_VARIABLES, array_index, read_list
from ptychodata.dataset._manifest import DatasetManifest, ScanEntry
from ptychodata.dataset._order import EpochItems, GroupKeys, Mixing, stratified_steps
from ptychodata.dataset._scan_build import ScanBuild, SourceIdentity, prepare_scan, source_identity
from ptychodata.dataset._spec import DatasetSpec, scan_seed
from ptychodata.dataset._view import DatasetStore
from ptychodata.dataset._weights import WeightRule, Weights

__all__ = [
    "ARRAY_INDEX_VARIABLES",
    "Dataset",
    "DatasetChange",
    "DatasetManifest",
    "DatasetSpec",
    "DatasetStore",
    "EpochItems",
    "GroupKeys",
    "Mixing",
    "ScanBuild",
    "ScanEntry",
    "SourceIdentity",
    "WeightRule",
    "Weights",
    "array_index",
    "import_dataset",
    "open_dataset",
    "prepare_scan",
    "read_list",
    "scan_seed",
    "source_identity",
    "stratified_steps",
]
