"""ptychodata: neighbour-grouped ptychography training data, NumPy core (torch optional).

``import ptychodata`` never imports torch; ``ptychodata.torch`` does.
"""

from ptychodata.errors import GroupingError, PtychodataError, ScanDataError, ScanFileNotFoundError
from ptychodata.grouping import GroupingConfig, group
from ptychodata.scan import ScanData

__version__ = "0.1.0"

__all__ = [
    "GroupingConfig",
    "GroupingError",
    "PtychodataError",
    "ScanData",
    "ScanDataError",
    "ScanFileNotFoundError",
    "__version__",
    "group",
]
