"""The reader registry: open a file by its content, pick the reader whose layout it holds.

Each reader module is a leaf: it offers ``can_read(container) -> bool`` and
``read(container, options)`` returning a :class:`RawScan` (or, for a reconstruction product,
a :class:`Product` whose patterns this module reads from the diffraction file). Readers are
tried in order, most specific layout first; an explicit ``keys=`` map bypasses recognition.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ptychodata.errors import PtychodataError, ScanFormatError, ScanTooLargeError
from ptychodata.io import _cxi, _keys, _npz_layouts, _ptychodus, _tike
from ptychodata.io._container import Container, open_container
from ptychodata.io._hdf5 import H5Dataset
from ptychodata.io._product import Product
from ptychodata.io._raw import RawScan, squeeze_frames

__all__ = ["READERS", "read_patterns_only", "read_raw", "recognise"]

READERS: list[tuple[str, Callable[[Container], bool], Callable[[Container, Any], RawScan | Product]]] = [
    (_cxi.NAME, _cxi.can_read, _cxi.read),
    (_cxi.PRODUCT, _cxi.is_product, _cxi.read_product),
    (_ptychodus.TRAINING, _ptychodus.is_training, _ptychodus.read_training),
    (_ptychodus.PRODUCT, _ptychodus.is_product, _ptychodus.read_product),
    (_tike.NAME, _tike.can_read, _tike.read),
    (_npz_layouts.PTYCHONN, _npz_layouts.is_ptychonn, _npz_layouts.read_ptychonn),
    (_npz_layouts.PTYCHOPINN, _npz_layouts.is_ptychopinn, _npz_layouts.read_ptychopinn),
]


def recognise(container: Container) -> str | None:
    """Name of the first layout whose reader accepts ``container``, or None."""
    return next((name for name, can_read, _ in READERS if can_read(container)), None)


def read_raw(path: Path, options: Any) -> RawScan:
    """The raw scan in ``path``, by ``options.keys`` or by recognising the layout.

    Running out of memory on the way is ``ScanTooLargeError`` naming the file; the errors h5py
    raises for a file whose structure is damaged (a bad B-tree, a truncated heap: ``OSError``,
    ``RuntimeError``, ``KeyError``) are ``ScanFormatError`` naming it.
    """
    try:
        return _read_raw(path, options)
    except PtychodataError:
        raise
    except MemoryError as exc:
        raise ScanTooLargeError(f"{path}: ran out of memory while reading the file ({exc or 'no detail'})") from exc
    except (OSError, RuntimeError, KeyError) as exc:
        raise ScanFormatError(
            f"{path}: could not be read ({type(exc).__name__}: {exc}); the file is damaged or truncated"
        ) from exc


def _read_raw(path: Path, options: Any) -> RawScan:
    with open_container(path) as container:
        found = _read_layout(container, options)
    if isinstance(found, Product):
        return found.with_patterns(read_patterns_only(found.diffraction_file(options), options))
    return found


def _read_layout(container: Container, options: Any) -> RawScan | Product:
    if options.keys:
        return _keys.read(container, options)
    for _name, can_read, read in READERS:
        if can_read(container):
            return read(container, options)
    raise unrecognised(container)


def unrecognised(container: Container) -> ScanFormatError:
    keys = container.keys()
    shown = ", ".join(keys[:25]) + (f", ... ({len(keys)} in all)" if len(keys) > 25 else "")
    return ScanFormatError(
        f"{container.path}: {container.kind} file of no layout ptychodata recognises "
        f"(CXI, ptychodus training data or product, tike, PtychoNN, PtychoPINN/SLAC npz); it holds: "
        f"{shown or 'nothing'}. Name the datasets with keys={{'diffraction': ..., 'xcoords': ..., "
        "'ycoords': ...} (CLI: --key diffraction=/path ...), or run `ptychodata inspect` on it"
    )


def read_patterns_only(path: Path, options: Any) -> RawScan:
    """The patterns (and mask and geometry) of a diffraction file that may hold no positions."""
    options = replace(options, diffraction=None, patterns_only=True)
    with open_container(path) as container:
        if options.keys:
            if "diffraction" not in options.keys:
                raise ScanFormatError(f"{path}: keys= needs 'diffraction' for the diffraction file")
            member = options.keys["diffraction"]
            if member not in container:
                raise container.missing(member)
            return _frames_only(container, member, "key map", options)
        if _cxi.can_read(container):
            return _cxi.read(container, options)
        if _ptychodus.is_training(container):
            return _ptychodus.read_training(container, options)
        for key in ("/patterns", "diffraction", "diff3d", "data", "/entry/data/data"):
            if key in container:
                return _frames_only(container, key, container.kind, options)
        raise unrecognised(container)


def _frames_only(container: Container, key: str, kind: str, options: Any) -> RawScan:
    patterns = H5Dataset(container.path, key) if container.kind == "hdf5" else container.raw(key)
    patterns = squeeze_frames(patterns, key, container.path, pattern_axis=options.pattern_axis)
    return RawScan(
        format=f"{kind} patterns",
        path=container.path,
        patterns=patterns,
        patterns_key=key,
        x=np.zeros(0),
        y=np.zeros(0),
    )
