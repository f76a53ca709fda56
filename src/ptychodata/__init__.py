"""ptychodata: neighbour-grouped ptychography training data, NumPy core (torch optional).

``import ptychodata`` never imports torch; ``ptychodata.torch`` does.
"""

from ptychodata._runtime import __version__
from ptychodata.dataset import Dataset, DatasetSpec, ScanBuild, open_dataset, prepare_scan
from ptychodata.errors import (
    DatasetChangedError,
    GroupingError,
    MissingDependencyError,
    PtychodataError,
    ScanDataError,
    ScanFileNotFoundError,
    ScanFormatError,
    SimulationError,
    StoreError,
)
from ptychodata.grouped import PtychoDataContainer, grouped_data
from ptychodata.grouping import GroupingConfig, group
from ptychodata.grouping_ptycho_torch import PtychoTorchRule
from ptychodata.normalize import normalize_probe
from ptychodata.patches import extract_patches, reassemble
from ptychodata.scan import ScanData
from ptychodata.simulate import simulate
from ptychodata.store import Store, open_store, prepare

__all__ = [
    "Dataset",
    "DatasetChangedError",
    "DatasetSpec",
    "GroupingConfig",
    "GroupingError",
    "MissingDependencyError",
    "PtychoDataContainer",
    "PtychoTorchRule",
    "PtychodataError",
    "ScanBuild",
    "ScanData",
    "ScanDataError",
    "ScanFileNotFoundError",
    "ScanFormatError",
    "SimulationError",
    "Store",
    "StoreError",
    "__version__",
    "extract_patches",
    "group",
    "grouped_data",
    "normalize_probe",
    "open_dataset",
    "open_store",
    "prepare",
    "prepare_scan",
    "reassemble",
    "simulate",
]
