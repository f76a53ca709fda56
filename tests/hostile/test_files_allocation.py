"""Unbounded allocation: sizes a file declares are checked against the file and against the memory
available before anything is allocated, and decompression is capped.

Each case runs with an address-space bound (``memory=``), so code that trusts a declared size fails
with a raw ``MemoryError`` (a failure here) instead of exhausting the machine. The named errors:
``ScanDataError`` when a file declares more than it holds (truncated or forged), ``ScanTooLargeError``
when what it honestly holds would not fit in memory, ``ScanFormatError`` when a compressed stream does
not hold an archive at all.
"""

from __future__ import annotations

import bz2
import struct
import zipfile

import numpy as np
import pytest

from ptychodata.errors import ScanDataError, ScanFormatError, ScanTooLargeError

from . import _files
from ._harness import FULL, expect_error, expect_ok, run_case

MEMORY = 768 << 20  # address space a case may add: far below what the forged sizes would need
TIMEOUT = 30.0

HUGE_SHAPES = {
    "1e12_elements": (10**6, 10**3, 10**3),
    "1e12_rows": (10**12,),
    "int64_overflow": (2**40, 2**40, 16),
    "zero_and_huge": (0, 10**12, 10**12),
}


def _archive(tmp_path, name, members, compression=zipfile.ZIP_STORED):
    path = tmp_path / name
    path.write_bytes(_files.zip_bytes(members, compression))
    return str(path)


# ------------------------------------------------------------------ .npy headers inside an .npz
@pytest.mark.parametrize("shape", list(HUGE_SHAPES), ids=list(HUGE_SHAPES))
@pytest.mark.parametrize("key", ["diffraction", "xcoords"])
@pytest.mark.parametrize("compression", ["stored", "deflated"])
def test_a_header_declaring_more_than_the_member_holds_is_refused(compression, key, shape, tmp_path):
    declared = HUGE_SHAPES[shape]
    members = _files.valid_members(**{key: _files.npy_bytes(declared, "<f4", data=bytes(64))})
    method = zipfile.ZIP_STORED if compression == "stored" else zipfile.ZIP_DEFLATED
    path = _archive(tmp_path, "forged.npz", members, method)
    outcome = run_case(_files.load, path, memory=MEMORY, timeout=TIMEOUT)
    if shape == "zero_and_huge":  # no elements: nothing to allocate; refused as an empty scan or shape
        expect_error(outcome, ScanDataError)
        return
    expect_error(outcome, ScanDataError, match=rf"key '{key}'")
    assert str(declared[0]) in outcome.message  # the shape found


@pytest.mark.parametrize("shape", ["1e12_elements", "int64_overflow"])
def test_read_npz_without_memory_mapping_checks_the_header_too(shape, tmp_path):
    members = _files.valid_members(diffraction=_files.npy_bytes(HUGE_SHAPES[shape], "<f4", data=bytes(64)))
    path = _archive(tmp_path, "forged.npz", members)
    outcome = run_case(_files.read_npz_shapes, path, False, memory=MEMORY, timeout=TIMEOUT)
    expect_error(outcome, ScanDataError, match="key 'diffraction'")


def _declare_uncompressed_size(blob: bytes, name: str, size: int) -> bytes:
    """The zip ``blob`` with member ``name``'s uncompressed size set to ``size`` in both headers."""
    data = bytearray(blob)
    encoded = name.encode()
    start = 0
    while (start := data.find(b"PK\x03\x04", start)) >= 0:  # local headers: size at +22
        if data[start + 30 : start + 30 + len(encoded)] == encoded:
            struct.pack_into("<L", data, start + 22, size)
        start += 4
    start = 0
    while (start := data.find(b"PK\x01\x02", start)) >= 0:  # central directory: size at +24
        if data[start + 46 : start + 46 + len(encoded)] == encoded:
            struct.pack_into("<L", data, start + 24, size)
        start += 4
    return bytes(data)


@pytest.mark.parametrize("key", ["diffraction", "xcoords"])
def test_a_deflated_member_declaring_gigabytes_is_too_large_not_a_memory_error(key, tmp_path):
    n = (3 << 30) // 4  # 3 GiB of float32, honestly declared by the .npy header and the zip
    header = _files.npy_bytes((n,) if key == "xcoords" else (n // 256, 16, 16), "<f4")
    members = _files.valid_members(**{key: header + bytes(4096)})
    blob = _files.zip_bytes(members, zipfile.ZIP_DEFLATED)
    path = tmp_path / "bomb.npz"
    path.write_bytes(_declare_uncompressed_size(blob, f"{key}.npy", len(header) + 4 * n))
    outcome = run_case(_files.load, str(path), memory=MEMORY, timeout=TIMEOUT)
    expect_error(outcome, ScanTooLargeError, match=rf"key '{key}'")


def test_a_deflated_member_inflating_past_its_declared_size_is_not_read_past_it(tmp_path):
    members = _files.valid_members()
    payload = members["xcoords.npy"] + bytes(64 << 20)  # 64 MiB more than the header says
    members["xcoords.npy"] = payload
    blob = _files.zip_bytes(members, zipfile.ZIP_DEFLATED)
    path = tmp_path / "longer.npz"
    path.write_bytes(blob)
    outcome = run_case(_files.load, str(path), memory=MEMORY, timeout=TIMEOUT)
    expect_error(outcome, ScanDataError, match="key 'xcoords'")


# ------------------------------------------------------------------ bz2 / gzip streams
INFLATED = (8 << 30) if FULL else (3 << 30)


@pytest.mark.parametrize("kind", ["bz2", "gzip"])
def test_a_compressed_stream_of_zeros_is_not_an_archive_and_is_not_inflated(kind, tmp_path):
    path = tmp_path / f"zeros.npz.{kind}"
    path.write_bytes(_files.repeated_stream(kind, b"", INFLATED))
    outcome = run_case(_files.load, str(path), memory=MEMORY, timeout=TIMEOUT)
    expect_error(outcome, ScanFormatError, match=kind)


@pytest.mark.parametrize("kind", ["bz2", "gzip"])
def test_a_compressed_archive_inflating_past_memory_is_too_large(kind, tmp_path):
    head = b"PK\x03\x04" + bytes(26) + b"diffraction.npy"  # an archive's first member, then zeros
    path = tmp_path / f"bomb.npz.{kind}"
    path.write_bytes(_files.repeated_stream(kind, head, INFLATED))
    outcome = run_case(_files.load, str(path), memory=MEMORY, timeout=60.0)
    expect_error(outcome, ScanTooLargeError, match=kind)


@pytest.mark.parametrize("kind", ["bz2", "gzip"])
def test_a_compressed_archive_with_a_forged_header_is_refused(kind, tmp_path):
    members = _files.valid_members(diffraction=_files.npy_bytes((10**6, 10**3, 10**3), "<f4", data=bytes(64)))
    blob = _files.zip_bytes(members)
    path = tmp_path / f"forged.npz.{kind}"
    path.write_bytes(bz2.compress(blob) if kind == "bz2" else __import__("gzip").compress(blob))
    outcome = run_case(_files.load, str(path), memory=MEMORY, timeout=TIMEOUT)
    expect_error(outcome, ScanDataError, match="key 'diffraction'")


@pytest.mark.parametrize("cut", [0.1, 0.5, 0.99])
def test_a_truncated_bz2_stream_is_a_format_error(cut, tmp_path):
    path, _ = _files.write("tike_bz2", tmp_path)
    blob = path.read_bytes()
    path.write_bytes(blob[: int(len(blob) * cut)])
    expect_error(run_case(_files.load, str(path), memory=MEMORY, timeout=TIMEOUT), ScanFormatError, match="bz2")


def test_the_tike_bz2_file_still_loads_within_the_bound(tmp_path):
    path, options = _files.write("tike_bz2", tmp_path)
    assert expect_ok(run_case(_files.load, str(path), options, memory=MEMORY))["M"] == _files.M


# ------------------------------------------------------------------ HDF5 shapes and chunks
H5_FORMATS = ["cxi", "ptychodus", "keys"]
_PATTERNS = {"cxi": "/entry_1/instrument_1/detector_1/data", "ptychodus": "/patterns", "keys": "/measurement/frames"}
_POSITIONS = {"cxi": "/entry_1/sample_1/geometry_1/translation", "ptychodus": "/probe_position_x_px",
              "keys": "/measurement/x"}


def _replace(path, key, **create):
    import h5py

    with h5py.File(path, "a") as f:
        del f[key]
        f.create_dataset(key, **create)


@pytest.mark.parametrize("fmt", H5_FORMATS)
def test_patterns_declared_far_beyond_what_the_file_stores_are_refused(fmt, tmp_path):
    path, options = _files.write(fmt, tmp_path)
    _replace(path, _PATTERNS[fmt], shape=(10**9, 16, 16), dtype=np.float32, chunks=(1, 16, 16))
    outcome = run_case(_files.load, str(path), options, memory=MEMORY, timeout=TIMEOUT)
    expect_error(outcome, ScanDataError, match="1000000000")


@pytest.mark.parametrize("fmt", H5_FORMATS)
def test_positions_declared_with_an_absurd_length_are_too_large(fmt, tmp_path):
    path, options = _files.write(fmt, tmp_path)
    shape = (10**10, 3) if fmt == "cxi" else (10**10,)
    _replace(path, _POSITIONS[fmt], shape=shape, dtype=np.float64, chunks=(1024, 3) if fmt == "cxi" else (1024,))
    outcome = run_case(_files.load, str(path), options, memory=MEMORY, timeout=TIMEOUT)
    expect_error(outcome, ScanTooLargeError, match="10000000000")


@pytest.mark.parametrize("fmt", H5_FORMATS)
def test_a_chunk_larger_than_memory_is_too_large(fmt, tmp_path):
    path, options = _files.write(fmt, tmp_path)
    data = _files.counts().astype(np.float32)
    # chunks (2^21, 16, 16) float32: 2 GiB per chunk (HDF5 allows up to 4 GiB), the 16 patterns in one
    _replace(path, _PATTERNS[fmt], shape=data.shape, maxshape=(None, 16, 16), dtype=np.float32,
             chunks=(1 << 21, 16, 16))
    outcome = run_case(_files.load, str(path), options, memory=MEMORY, timeout=TIMEOUT)
    expect_error(outcome, ScanTooLargeError, match="chunk")
