"""Exception types. Each is a ``PtychodataError`` and also the builtin it refines, so
``except ValueError`` (or ``IndexError``, ``OSError``, ``FileNotFoundError``) keeps working.

::

    PtychodataError
    ├── ScanDataError (ValueError)            a scan file or arrays break the contract
    │   ├── ScanFileNotFoundError (FileNotFoundError)
    │   ├── ScanTooLargeError (MemoryError)   reading it would need more memory than is available
    │   └── FramesRangeError (OverflowError)  frame values an encoding asked for cannot hold
    ├── GroupingError (ValueError)            a grouping the scan cannot satisfy
    ├── SimulationError (ValueError)          simulate() arguments that make no scan
    ├── ParameterError (ValueError)           an argument out of its range or of the wrong kind
    ├── DatasetChangedError (ValueError)      a loader state saved on another composition of a dataset
    ├── GroupIndexError (IndexError)          a group index outside a store
    └── StoreError (OSError)                  a store missing, incomplete, corrupt or unwritable
        ├── StoreNotFoundError (FileNotFoundError)
        ├── StoreClosedError (ValueError)     a closed store used again
        ├── StoreCorruptError (ValueError)    a store's manifest or files edited or damaged
        ├── SourceChangedError                a source file changed while it was prepared
        └── DiskFullError                     no room for a build (errno ENOSPC)
"""

from __future__ import annotations

__all__ = [
    "DatasetChangedError",
    "DiskFullError",
    "FramesRangeError",
    "GroupIndexError",
    "GroupingError",
    "MissingDependencyError",
    "ParameterError",
    "PtychodataError",
    "ScanDataError",
    "ScanFileNotFoundError",
    "ScanFormatError",
    "ScanTooLargeError",
    "SimulationError",
    "SourceChangedError",
    "StoreClosedError",
    "StoreCorruptError",
    "StoreError",
    "StoreNotFoundError",
]


class PtychodataError(Exception):
    """Base class of every error ptychodata raises on purpose."""


class ScanDataError(PtychodataError, ValueError):
    """A scan file or scan arrays violate the data contract (§1)."""


class FramesRangeError(ScanDataError, OverflowError):
    """Frames whose values an encoding asked for cannot hold exactly: counts beyond its
    range (saturation), negative or fractional counts, amplitudes beyond float16's largest.
    Never clipped: the frames are refused."""


class GroupingError(PtychodataError, ValueError):
    """A grouping request cannot be satisfied by the scan (§2)."""


class ScanFileNotFoundError(ScanDataError, FileNotFoundError):
    """A scan file does not exist."""


class SimulationError(PtychodataError, ValueError):
    """Arguments to :func:`~ptychodata.simulate.simulate` that cannot make a scan."""


class ParameterError(PtychodataError, ValueError):
    """An argument outside its documented range, or of the wrong shape or kind."""


class GroupIndexError(PtychodataError, IndexError):
    """A group index outside the store (or the part of it) being read."""


class StoreError(PtychodataError, OSError):
    """A store on disk is missing, incomplete, corrupt, or cannot be written."""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """No store (or no such build of it) at the given path."""


class StoreClosedError(StoreError, ValueError):
    """A :class:`~ptychodata.store.Store` used after :meth:`~ptychodata.store.Store.close`."""


class DatasetChangedError(PtychodataError, ValueError):
    """A saved loader state is for another composition of the dataset than the one opened."""


class ScanFormatError(ScanDataError):
    """A file whose layout no reader recognises, or whose datasets cannot be decoded."""


class MissingDependencyError(PtychodataError, ImportError):
    """An optional dependency (h5py, hdf5plugin, torch) needed for this file or feature is absent."""


class StoreCorruptError(StoreError, ValueError):
    """A store's manifest, pointer or files do not match the schema, each other or their
    recorded content hashes: the store was edited or damaged (``ptychodata cache verify``
    names what; prepare the store again)."""


class SourceChangedError(StoreError):
    """A source file was rewritten, replaced or truncated while it was being prepared;
    nothing was published (prepare again once the file is complete)."""


class DiskFullError(StoreError):
    """Not enough free space for a build: found before it started, or the disk filled during
    it (``errno`` is ``ENOSPC``); the partial build was removed."""


class ScanTooLargeError(ScanDataError, MemoryError):
    """A scan file whose arrays, as declared or as they inflate, need more memory than is available."""
