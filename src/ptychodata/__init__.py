"""ptychodata: neighbour-grouped ptychography training data, NumPy core (torch optional)."""

from ptychodata.errors import GroupingError, PtychodataError, ScanDataError, ScanFileNotFoundError
from ptychodata.scan import ScanData

__version__ = "0.1.0"

__all__ = [
    "GroupingError",
    "PtychodataError",
    "ScanData",
    "ScanDataError",
    "ScanFileNotFoundError",
    "__version__",
]
