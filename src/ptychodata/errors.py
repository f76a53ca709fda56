"""Exception types. Each is a ``PtychodataError`` and also the builtin it refines."""

from __future__ import annotations

__all__ = [
    "GroupingError",
    "MissingDependencyError",
    "PtychodataError",
    "ScanDataError",
    "ScanFileNotFoundError",
    "ScanFormatError",
    "SimulationError",
    "StoreError",
]


class PtychodataError(Exception):
    """Base class of every error ptychodata raises on purpose."""


class ScanDataError(PtychodataError, ValueError):
    """A scan file or scan arrays violate the data contract (§1)."""


class GroupingError(PtychodataError, ValueError):
    """A grouping request cannot be satisfied by the scan (§2)."""


class ScanFileNotFoundError(ScanDataError, FileNotFoundError):
    """A scan file does not exist."""


class SimulationError(PtychodataError, ValueError):
    """Arguments to :func:`~ptychodata.simulate.simulate` that cannot make a scan."""


class StoreError(PtychodataError, OSError):
    """A store on disk is missing, incomplete, corrupt, or cannot be written."""


class ScanFormatError(ScanDataError):
    """A file whose layout no reader recognises, or whose datasets cannot be decoded."""


class MissingDependencyError(PtychodataError, ImportError):
    """An optional dependency (h5py, hdf5plugin, torch) needed for this file or feature is absent."""
