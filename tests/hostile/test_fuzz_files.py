"""Property-based fuzzing of scan files: whatever the ``.npy`` header inside an ``.npz`` declares
(shape, dtype descr, fortran_order, how much data follows), whatever shapes, dtypes and chunks an HDF5
file's datasets have, and whatever bytes of a valid file are flipped, loading gives a scan or one of
the named errors: never a builtin exception, a hang or a crash, and never more memory than the bound.

Examples per test: 15 (derandomized) in CI, 300 under PTYCHODATA_HOSTILE_FULL=1 (the ``hostile`` and
``hostile-full`` hypothesis profiles).
"""

from __future__ import annotations

import bz2
import math
import zipfile

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ptychodata.errors import ScanDataError, ScanFileNotFoundError, ScanFormatError, ScanTooLargeError

from . import _files
from ._harness import FUZZ, expect_ok_or_error, run_case

MEMORY = 768 << 20
NAMED = (ScanDataError, ScanFormatError, ScanTooLargeError, ScanFileNotFoundError)

DIMENSIONS = st.one_of(
    st.integers(0, 40),
    st.sampled_from([_files.M, _files.N, 2**31, 2**32 + 1, 10**12, 2**62, 2**63 - 1]),
)
DESCRS = st.sampled_from([
    "<f4", "<f8", ">f4", ">f8", "<f2", "|u1", "<u2", ">u4", "<i8", "|i1", "|b1", "<c8", "<c16",
    "<U8", "|S4", "|V8", "<M8[s]", "<m8[ns]", "|O", "<U0", "|S0", "[('a', '<f4'), ('b', '<i2')]",
])


def _header_dict_text(shape, descr, fortran_order) -> bytes:
    descr_text = descr if descr.startswith("[") else repr(descr)
    return ("{'descr': " + descr_text + f", 'fortran_order': {fortran_order}, 'shape': {tuple(shape)!r}, }}").encode()


def _npy(shape, descr, fortran_order, data_bytes, version) -> bytes:
    header = _header_dict_text(shape, descr, fortran_order)
    prefix, length = (10, "<H") if version == 1 else (12, "<I")
    header += b" " * ((-(prefix + len(header) + 1)) % 64) + b"\n"
    import struct

    return b"\x93NUMPY" + bytes([version, 0]) + struct.pack(length, len(header)) + header + data_bytes


@st.composite
def npy_members(draw):
    shape = tuple(draw(st.lists(DIMENSIONS, min_size=0, max_size=4)))
    descr = draw(DESCRS)
    try:
        itemsize = np.dtype(eval(descr) if descr.startswith("[") else descr).itemsize  # noqa: S307 - literal list
    except TypeError:
        itemsize = 8
    declared = math.prod(shape) * itemsize
    how = draw(st.sampled_from(["exact", "short", "long", "random"]))
    if how == "exact" and declared <= 1 << 20:
        size = declared
    elif how == "short":
        size = draw(st.integers(0, max(0, min(declared - 1, 4096))))
    elif how == "long":
        size = min(declared, 4096) + draw(st.integers(1, 4096))
    else:
        size = draw(st.integers(0, 512))
    fill = draw(st.sampled_from([b"\x00", b"\x01", b"\xff", b"\x80\x03"]))
    data = (fill * (size // len(fill) + 1))[:size]
    return _npy(shape, descr, draw(st.booleans()), data, draw(st.sampled_from([1, 2])))


@FUZZ
@given(
    key=st.sampled_from(["diffraction", "xcoords", "ycoords", "probeGuess", "_metadata"]),
    member=npy_members(),
    compression=st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]),
    container=st.sampled_from(["npz", "npz.bz2"]),
)
def test_fuzzed_npy_headers_load_or_are_named(tmp_path_factory, key, member, compression, container):
    members = _files.valid_members(**{key: member})
    blob = _files.zip_bytes(members, compression)
    path = tmp_path_factory.mktemp("fuzz") / f"scan.{container}"
    path.write_bytes(bz2.compress(blob, 1) if container == "npz.bz2" else blob)
    outcome = run_case(_files.load, str(path), memory=MEMORY)
    expect_ok_or_error(outcome, *NAMED)
    if outcome.kind == "ok":
        assert outcome.value["M"] == len(outcome.value["x"]) > 0


H5_DTYPES = st.sampled_from(["u1", "u2", "<i4", ">i4", "f2", "<f4", ">f8", "c8", "bool", "S8", "vlen-str"])


def _h5_data(dtype: str, shape, rng):
    import h5py

    if dtype == "S8":
        return np.full(shape, b"1.5", dtype="S8"), "S8"
    if dtype == "vlen-str":
        return np.full(shape, "2.5", dtype=object), h5py.string_dtype()
    values = rng.poisson(4.0, size=shape).astype(np.float64)
    if dtype == "c8":
        values = values + 1j
    return values.astype(dtype), dtype


@st.composite
def h5_files(draw):
    m = draw(st.sampled_from([0, 1, 2, _files.M, _files.M + 1]))
    h, w = draw(st.sampled_from([(16, 16), (16, 12), (1, 1), (0, 16)]))
    ndim = draw(st.sampled_from([2, 3, 3, 3, 4]))
    shape = {2: (m, h), 3: (m, h, w), 4: (1, m, h, w)}[ndim]
    chunked = draw(st.booleans()) and 0 not in shape
    chunks = tuple(draw(st.integers(1, max(1, n))) for n in shape) if chunked else None
    return dict(
        patterns_shape=shape,
        patterns_dtype=draw(H5_DTYPES),
        chunks=chunks,
        compression=draw(st.sampled_from([None, "gzip", "lzf"])) if chunked else None,
        write=draw(st.sampled_from(["all", "none", "first"])),
        positions_length=draw(st.sampled_from([m, _files.M, 0, 1])),
        positions_dtype=draw(H5_DTYPES),
        energy=draw(st.sampled_from([None, 8000.0, 0.0, -1.0, float("nan"), "text"])),
    )


@FUZZ
@given(spec=h5_files())
def test_fuzzed_hdf5_shapes_dtypes_and_chunks_load_or_are_named(tmp_path_factory, spec):
    import h5py

    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("fuzz") / "scan.h5"
    keys = {"diffraction": "/frames", "xcoords": "/x", "ycoords": "/y"}
    with h5py.File(path, "w") as f:
        data, dtype = _h5_data(spec["patterns_dtype"], spec["patterns_shape"], rng)
        frames = f.create_dataset("frames", shape=data.shape, dtype=dtype, chunks=spec["chunks"],
                                  compression=spec["compression"])
        if spec["write"] == "all":
            frames[...] = data
        elif spec["write"] == "first" and data.shape and data.shape[0]:
            frames[:1] = data[:1]
        for name, offset in (("x", 20.0), ("y", 30.0)):
            length = spec["positions_length"]
            positions, position_dtype = _h5_data(spec["positions_dtype"], (length,), rng)
            if positions.dtype.kind in "biuf":
                positions = (offset + 3.0 * np.arange(length)).astype(positions.dtype)
            f.create_dataset(name, data=positions, dtype=position_dtype)
        if spec["energy"] is not None:
            f["energy"] = spec["energy"]
            keys["energy_eV"] = "/energy"
    outcome = run_case(_files.load, str(path), {"keys": keys, "intensity": True}, memory=MEMORY)
    expect_ok_or_error(outcome, *NAMED)


@pytest.fixture(scope="module")
def valid_files(tmp_path_factory):
    return {fmt: _files.write(fmt, tmp_path_factory.mktemp(fmt)) for fmt in ("npz", "cxi", "ptychodus", "tike_bz2")}


@FUZZ
@given(
    fmt=st.sampled_from(["npz", "cxi", "ptychodus", "tike_bz2"]),
    flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), min_size=1, max_size=8),
    cut=st.one_of(st.none(), st.floats(0, 1)),
)
def test_flipped_or_cut_bytes_of_a_valid_file_load_or_are_named(tmp_path_factory, valid_files, fmt, flips, cut):
    source, options = valid_files[fmt]
    blob = bytearray(source.read_bytes())
    for where, xor in flips:
        blob[int(where * len(blob))] ^= xor
    if cut is not None:
        blob = blob[: int(cut * len(blob))]
    path = tmp_path_factory.mktemp("flipped") / source.name
    path.write_bytes(bytes(blob))
    outcome = run_case(_files.load, str(path), options, memory=MEMORY)
    expect_ok_or_error(outcome, *NAMED)
