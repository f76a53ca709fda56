"""File formats. One module per format; each reads into plain arrays and writes atomically."""

from ptychodata.io._npz import read_npz, write_npz

__all__ = ["read_npz", "write_npz"]
