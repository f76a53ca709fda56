"""Small valid scan files of every format, the hostile variants made from them, and the library calls
that the cases run in the harness's worker (module-level, so they pickle by reference).

Every writer takes ``(path, counts, x, y, **geometry)`` with positions in object pixels and writes the
format's own layout (converting positions to metres where the format keeps metres), so a case can
inject a bad value into exactly one field.
"""

from __future__ import annotations

import bz2
import gzip
import io
import os
import struct
import warnings
import zipfile
from pathlib import Path

import numpy as np

M, N = 24, 16
ENERGY_EV = 8000.0
DISTANCE_M = 1.5
DETECTOR_PIXEL_M = 75e-6
HC_EV_M = 1.239841984e-6
J_PER_EV = 1.602176634e-19
OBJECT_PIXEL_M = HC_EV_M / ENERGY_EV * DISTANCE_M / (N * DETECTOR_PIXEL_M)


def counts(seed: int = 0, m: int = M, n: int = N) -> np.ndarray:
    """(m, n, n) uint32 Poisson counts of a centred beam (zero frequency in the centre)."""
    rng = np.random.default_rng(seed)
    r2 = ((np.arange(n) - n // 2)[:, None] ** 2 + (np.arange(n) - n // 2)[None, :] ** 2).astype(float)
    beam = np.exp(-r2 / 8.0)
    return rng.poisson(20000.0 * beam / beam.sum(), (m, n, n)).astype(np.uint32)


def raster(m: int = M) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) in object pixels: a 4-wide raster with a 3-pixel step."""
    index = np.arange(m)
    return 20.0 + (index % 4) * 3.0, 20.0 + (index // 4) * 3.0


# ------------------------------------------------------------------ writers, one per format
def write_npz(path, data, x, y, **extra):
    """PtychoPINN's npz: amplitudes under ``diffraction``, pixel positions, a probe."""
    arrays = {
        "diffraction": np.sqrt(np.asarray(data, np.float32)) if np.asarray(data).dtype.kind in "biuf" else data,
        "xcoords": x,
        "ycoords": y,
        "probeGuess": np.ones((N, N), np.complex64),
    }
    arrays.update(extra)
    np.savez(path, **arrays)
    return path, {}


def write_cxi(path, data, x, y, *, energy_J=ENERGY_EV * J_PER_EV, distance=DISTANCE_M,
              pixel=DETECTOR_PIXEL_M, wavelength=None, translation=None):
    """CXI 1.6: counts, translations in metres (x, y, z), detector distance and pixel, energy in J."""
    import h5py

    with h5py.File(path, "w") as f:
        f["cxi_version"] = 160
        det = f.create_group("entry_1/instrument_1/detector_1")
        det.create_dataset("data", data=data, chunks=(4, *np.shape(data)[1:]) if np.ndim(data) == 3 else None)
        for name, value in (("distance", distance), ("x_pixel_size", pixel), ("y_pixel_size", pixel)):
            if value is not None:
                det[name] = value
        source = f.create_group("entry_1/instrument_1/source_1")
        if energy_J is not None:
            source["energy"] = energy_J
        if wavelength is not None:
            source["wavelength"] = wavelength
        if translation is None:
            x_m, y_m = np.asarray(x, float) * OBJECT_PIXEL_M, np.asarray(y, float) * OBJECT_PIXEL_M
            translation = np.stack([x_m, y_m, np.zeros_like(x_m)], axis=1)
        f.create_group("entry_1/sample_1/geometry_1")["translation"] = translation
    return path, {}


def write_ptychodus(path, data, x, y, *, energy=ENERGY_EV, distance=DISTANCE_M, pixel=OBJECT_PIXEL_M):
    """ptychodus training data: counts under /patterns, pixel positions, object pixel and geometry."""
    import h5py

    with h5py.File(path, "w") as f:
        f.create_dataset("patterns", data=data, chunks=(4, *np.shape(data)[1:]) if np.ndim(data) == 3 else None)
        f["bad_pixels"] = np.zeros((N, N), bool)
        f["probe"] = np.ones((1, N, N), np.complex64)
        f["probe_position_x_px"], f["probe_position_y_px"] = x, y
        for name, value in (("object_pixel_width_m", pixel), ("object_pixel_height_m", pixel),
                            ("photon_energy_eV", energy), ("detector_object_distance_m", distance)):
            if value is not None:
                f[name] = value
    return path, {}


def _tike_bytes(data, x, y) -> bytes:
    buffer = io.BytesIO()
    if np.asarray(x).dtype.kind in "biuf":
        scan = np.stack([np.asarray(y, float) - N / 2, np.asarray(x, float) - N / 2], axis=-1)
    else:  # text or objects, kept as they are
        scan = np.stack([y, x], axis=-1)
    numeric = np.asarray(data).dtype.kind in "biuf" and np.ndim(data) == 3
    frames = np.fft.ifftshift(data, axes=(-2, -1)) if numeric else data
    np.savez(buffer, data=frames, scan=scan)
    return buffer.getvalue()


def write_tike(path, data, x, y):
    """tike's npz: unshifted counts under ``data``, window corners (row, col) under ``scan``."""
    Path(path).write_bytes(_tike_bytes(data, x, y))
    return path, {}


def write_tike_bz2(path, data, x, y):
    """tike's npz compressed with bz2 (as tike's own test data, ``.npz.bz2``)."""
    Path(path).write_bytes(bz2.compress(_tike_bytes(data, x, y), 1))
    return path, {}


def write_keys(path, data, x, y, **datasets):
    """Any HDF5 layout read through a key map (``keys=``)."""
    import h5py

    with h5py.File(path, "w") as f:
        f.create_dataset("/measurement/frames", data=data,
                         chunks=(4, *np.shape(data)[1:]) if np.ndim(data) == 3 else None)
        f["/measurement/x"], f["/measurement/y"] = x, y
        for name, value in datasets.items():
            f[f"/measurement/{name}"] = value
    keys = {"diffraction": "/measurement/frames", "xcoords": "/measurement/x", "ycoords": "/measurement/y"}
    keys.update({name: f"/measurement/{name}" for name in datasets})
    return path, {"keys": keys, "intensity": True}


WRITERS = {
    "npz": (write_npz, "scan.npz"),
    "cxi": (write_cxi, "scan.cxi"),
    "ptychodus": (write_ptychodus, "scan.h5"),
    "tike": (write_tike, "scan.npz"),
    "tike_bz2": (write_tike_bz2, "scan.npz.bz2"),
    "keys": (write_keys, "scan.h5"),
}
FORMATS = list(WRITERS)


def write(fmt: str, directory, data=None, x=None, y=None, **extra):
    """A file of format ``fmt`` in ``directory``; returns (path, load options)."""
    writer, name = WRITERS[fmt]
    default_x, default_y = raster()
    data = counts() if data is None else data
    return writer(Path(directory) / name, data, default_x if x is None else x,
                  default_y if y is None else y, **extra)


# ------------------------------------------------------------------ crafted archives
def npy_bytes(shape, descr="<f4", fortran_order=False, data: bytes | None = None, version=(1, 0)) -> bytes:
    """A ``.npy`` file whose header declares ``shape``/``descr`` followed by ``data`` (default: none)."""
    header = repr({"descr": descr, "fortran_order": fortran_order, "shape": tuple(shape)}).encode("latin1")
    if version == (1, 0):
        prefix_size, length_format = 10, "<H"
    else:
        prefix_size, length_format = 12, "<I"
    padding = (-(prefix_size + len(header) + 1)) % 64
    header += b" " * padding + b"\n"
    return b"\x93NUMPY" + bytes(version) + struct.pack(length_format, len(header)) + header + (data or b"")


def zip_bytes(members: dict[str, bytes], compression=zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, payload in members.items():
            archive.writestr(name, payload)
    return buffer.getvalue()


def valid_members(**override: bytes) -> dict[str, bytes]:
    """The .npy members of a valid PtychoPINN npz, with some replaced by crafted bytes."""
    buffer = io.BytesIO()
    x, y = raster()
    np.savez(buffer, diffraction=np.sqrt(counts().astype(np.float32)), xcoords=x, ycoords=y)
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    members.update({f"{key}.npy": value for key, value in override.items()})
    return members


def repeated_stream(kind: str, head: bytes, inflated_bytes: int, block: int = 8 << 20) -> bytes:
    """A bz2 or gzip file of several concatenated streams: ``head`` then zeros, inflating to about
    ``inflated_bytes`` while a few kB long (one compressed block of zeros, repeated)."""
    compress = (lambda b: bz2.compress(b, 1)) if kind == "bz2" else (lambda b: gzip.compress(b, 1, mtime=0))
    zeros = compress(bytes(block))
    return compress(head) + zeros * max(1, inflated_bytes // block)


# ------------------------------------------------------------------ calls the cases make (in the worker)
def load(path, options=None):
    """``ScanData.load`` and a read of two patterns; a small summary of the scan."""
    from ptychodata import ScanData

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scan = ScanData.load(path, **(options or {}))
        first = np.asarray(scan.diffraction[:2])
    return {
        "M": scan.n_points,
        "N": scan.N,
        "x": scan.xcoords.tolist(),
        "y": scan.ycoords.tolist(),
        "first": first.astype(np.float64).tolist(),
    }


def describe(path, options=None):
    """``describe_file`` (what ``ptychodata inspect`` prints); its ``problem`` (None when the file loads)."""
    from ptychodata.summary import describe_file

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return describe_file(path, **(options or {}))["problem"]


def prepare(path, cache_dir, options=None):
    """``prepare`` a store of the file, gridsize 1; its number of groups."""
    from ptychodata import GroupingConfig
    from ptychodata import prepare as prepare_store

    options = dict(options or {})
    intensity = options.pop("intensity", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with prepare_store(path, GroupingConfig(N=N, gridsize=1, seed=0), cache_dir=cache_dir, intensity=intensity,
                           load_options=options or None, progress=False) as store:
            return len(store)


def prepare_scan(path, cache_dir, options=None):
    """``prepare_scan`` of a dataset spec; the scan's number of groups."""
    from ptychodata import DatasetSpec, GroupingConfig
    from ptychodata import prepare_scan as prepare_one

    options = dict(options or {})
    intensity = options.pop("intensity", None)
    spec = DatasetSpec(GroupingConfig(N=N, gridsize=1, seed=0), load_options=options, intensity=intensity)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return prepare_one(path, spec, cache_dir=cache_dir).n_groups


def open_container_keys(path):
    """The member names :func:`ptychodata.io.open_container` finds."""
    from ptychodata.io import open_container

    with open_container(path) as container:
        return sorted(container.keys())


def read_npz_shapes(path, mmap=True):
    """Every member's shape, read by :func:`ptychodata.read_npz` (and its data touched)."""
    from ptychodata.io import read_npz

    arrays = read_npz(path, mmap=mmap)
    return {key: (tuple(value.shape), float(np.asarray(value).astype(np.float64).sum()) if value.dtype.kind in "biuf"
                  else None) for key, value in arrays.items()}


def path_exists(path) -> bool:
    return os.path.exists(path)


class Payload:
    """Unpickling this creates ``marker``: proof that a pickle from data ran code."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def object_member(marker: str, shape=()) -> np.ndarray:
    """An object array whose unpickling would run code (make the directory ``marker``)."""
    array = np.empty(shape, dtype=object)
    for index in np.ndindex(shape):
        array[index] = Payload(marker)
    return array
