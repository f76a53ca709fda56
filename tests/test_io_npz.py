"""The NPZ reader on PtychoPINN's files: ``_metadata`` as a pickled 0-d object array, and
``nphotons`` where PtychoPINN's metadata manager puts it."""

import json
import os
import pickle
import zipfile
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from numpy.lib import format as npy_format

from ptychodata import GroupingConfig, ScanData, ScanDataError, grouped_data
from ptychodata.io import read_npz


def scan_arrays(M=10, N=8, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "diff3d": rng.uniform(0, 2, (M, N, N)).astype(np.float32),
        "xcoords": rng.uniform(10, 40, M),
        "ycoords": rng.uniform(10, 40, M),
        "xcoords_start": rng.uniform(10, 40, M),
        "ycoords_start": rng.uniform(10, 40, M),
        "probeGuess": (rng.normal(size=(N, N)) + 1j).astype(np.complex64),
        "scan_index": np.zeros(M, np.int64),
    }


PTYCHOPINN_METADATA = {
    "creation_info": {"script": "simulate_and_save.py"},
    "physics_parameters": {"nphotons": 1e9, "gridsize": 1},
}


def write_like_ptychopinn(path, metadata=PTYCHOPINN_METADATA, compressed=True):
    """As PtychoPINN's metadata manager saves: ``_metadata`` a 0-d object array holding JSON."""
    save = np.savez_compressed if compressed else np.savez
    save(path, **scan_arrays(), _metadata=np.array(json.dumps(metadata), dtype=object))
    return path


def write_npy_member(path, key, payload: bytes, header_dtype="|O", shape=()):
    """An .npz holding a valid scan plus ``key`` whose .npy header says ``header_dtype`` and
    whose body is ``payload`` (a pickle we built by hand)."""
    np.savez(path, **scan_arrays())
    header = {"descr": header_dtype, "fortran_order": False, "shape": shape}
    buffer = BytesIO()
    npy_format.write_array_header_1_0(buffer, header)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(f"{key}.npy", buffer.getvalue() + payload)
    return path


class _RunsShell:
    """Unpickling this runs ``touch marker`` through os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _WritesFile:
    """Unpickling this writes a marker file through pathlib."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "ran"))


# ---------------------------------------------------------------- PtychoPINN's _metadata
@pytest.mark.parametrize("compressed", [True, False])
def test_ptychopinn_metadata_file_opens(tmp_path, compressed):
    path = write_like_ptychopinn(tmp_path / "pp.npz", compressed=compressed)
    with pytest.raises(ValueError, match="allow_pickle"):  # what numpy itself does without pickles
        np.load(path)["_metadata"]
    scan = ScanData.load(path)
    assert scan.metadata == PTYCHOPINN_METADATA
    assert scan.nphotons == 1e9
    np.testing.assert_array_equal(scan.diffraction, scan_arrays()["diff3d"])


def test_metadata_member_is_a_0d_object_array_holding_the_json(tmp_path):
    members = read_npz(write_like_ptychopinn(tmp_path / "pp.npz"))
    assert members["_metadata"].shape == () and members["_metadata"].dtype == object
    assert json.loads(members["_metadata"].item()) == PTYCHOPINN_METADATA


def test_numpy_1_pickles_are_read_too(tmp_path):
    """numpy 1.x names ``numpy.core.multiarray._reconstruct``, numpy 2 ``numpy._core...``."""
    text = json.dumps({"nphotons": 5e6})
    payload = pickle.dumps(np.array(text, dtype=object), protocol=3)  # as numpy 1.x np.save
    payload = payload.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray\n_reconstruct" in payload
    scan = ScanData.load(write_npy_member(tmp_path / "np1.npz", "_metadata", payload))
    assert scan.metadata == {"nphotons": 5e6}


@pytest.mark.parametrize("hostile", [_RunsShell, _WritesFile])
def test_hostile_pickle_in_metadata_does_not_run(tmp_path, hostile):
    marker = tmp_path / "marker"
    payload = pickle.dumps(np.array(hostile(marker), dtype=object), protocol=4)
    path = write_npy_member(tmp_path / "evil.npz", "_metadata", payload)
    with pytest.raises(ScanDataError, match=r"evil\.npz: key '_metadata': the pickle asks for .*refused"):
        ScanData.load(path)
    assert not marker.exists()


def test_hostile_pickle_without_an_array_is_refused(tmp_path):
    marker = tmp_path / "marker"
    path = write_npy_member(tmp_path / "evil.npz", "_metadata", pickle.dumps(_RunsShell(marker)))
    with pytest.raises(ScanDataError, match=r"key '_metadata': the pickle asks for (posix|nt|os)\.system"):
        read_npz(path)
    assert not marker.exists()


def test_object_array_of_other_shape_is_refused_before_unpickling(tmp_path):
    marker = tmp_path / "marker"
    payload = pickle.dumps(np.array([_RunsShell(marker)], dtype=object))
    path = write_npy_member(tmp_path / "list.npz", "_metadata", payload, shape=(1,))
    with pytest.raises(ScanDataError, match=r"key '_metadata': holds Python objects \(dtype object, shape \(1,\)\)"):
        read_npz(path)
    assert not marker.exists()


def test_object_array_holding_a_non_string_is_refused(tmp_path):
    payload = pickle.dumps(np.array(7, dtype=object))
    path = write_npy_member(tmp_path / "int.npz", "_metadata", payload)
    with pytest.raises(ScanDataError, match=r"int\.npz: key '_metadata'.*holding int; expected .*holding a str"):
        read_npz(path)


def test_truncated_pickle_is_a_scan_data_error(tmp_path):
    payload = pickle.dumps(np.array("{}", dtype=object))[:20]
    path = write_npy_member(tmp_path / "cut.npz", "_metadata", payload)
    with pytest.raises(ScanDataError, match=r"cut\.npz: key '_metadata': not a readable pickled"):
        read_npz(path)


def test_metadata_json_must_be_an_object(tmp_path):
    path = write_like_ptychopinn(tmp_path / "list.npz", metadata=[1, 2])
    with pytest.raises(ScanDataError, match=r"list\.npz: key '_metadata': JSON list; expected an object"):
        ScanData.load(path)


# ---------------------------------------------------------------- nphotons
def test_nphotons_from_physics_parameters_reaches_intensity_scale(tmp_path):
    scan = ScanData.load(write_like_ptychopinn(tmp_path / "pp.npz"))
    grouped = grouped_data(scan, GroupingConfig(n_groups=4, seed=0), with_Y=False)
    assert grouped["intensity_scale"] == pytest.approx(np.sqrt(1e9) / (scan.N / 2), rel=1e-12)


def test_nphotons_top_level_still_read(tmp_path):
    scan = ScanData.load(write_like_ptychopinn(tmp_path / "top.npz", metadata={"nphotons": 2e4}))
    assert scan.nphotons == 2e4


@pytest.mark.parametrize(
    "metadata, message",
    [
        ({"nphotons": 1e6, "physics_parameters": {"nphotons": 1e7}}, "nphotons = 1000000.0 but physics_parameters"),
        ({"physics_parameters": {"nphotons": "many"}}, r"physics_parameters\.nphotons = 'many'; expected a positive"),
        ({"nphotons": -3}, "nphotons = -3; expected a positive finite"),
        ({"physics_parameters": [1e6]}, "physics_parameters is a list; expected a JSON object"),
    ],
)
def test_bad_or_conflicting_nphotons_named(tmp_path, metadata, message):
    path = write_like_ptychopinn(tmp_path / "bad.npz", metadata=metadata)
    with pytest.raises(ScanDataError, match=rf"bad\.npz: key '_metadata': {message}"):
        ScanData.load(path)


def test_save_writes_nphotons_where_ptychopinn_reads_it(tmp_path):
    scan = ScanData.load(write_like_ptychopinn(tmp_path / "pp.npz"))
    scan.save(tmp_path / "ours.npz")
    with np.load(tmp_path / "ours.npz") as saved:  # no pickle needed for our own metadata
        metadata = json.loads(saved["_metadata"].item())
    assert metadata["physics_parameters"] == {"nphotons": 1e9, "gridsize": 1}
    assert metadata["nphotons"] == 1e9
    assert metadata["creation_info"] == PTYCHOPINN_METADATA["creation_info"]
    assert ScanData.load(tmp_path / "ours.npz").nphotons == 1e9


def test_save_without_nphotons_adds_no_physics_parameters(tmp_path, small_scan):
    scan = small_scan.with_(metadata={"note": "x"})
    scan.save(tmp_path / "plain.npz")
    with np.load(tmp_path / "plain.npz") as saved:
        assert json.loads(saved["_metadata"].item()) == {"note": "x"}


@pytest.mark.parametrize("mmap", [True, False])
@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_members_read_back_exactly_in_every_order_and_byte_order(tmp_path, save, mmap):
    rng = np.random.default_rng(3)
    arrays = {
        "c_order": rng.normal(size=(5, 4, 3)).astype("<f4"),
        "fortran": np.asfortranarray(rng.normal(size=(6, 7))),
        "big_endian": rng.integers(0, 1000, size=(9,)).astype(">u4"),
        "complex": (rng.normal(size=(3, 3)) + 1j).astype(np.complex64),
        "scalar": np.array(2.5),
        "empty": np.zeros((0, 4), np.float32),
    }
    save(tmp_path / "a.npz", **arrays)
    read = read_npz(tmp_path / "a.npz", mmap=mmap)
    assert sorted(read) == sorted(arrays)
    for key, value in arrays.items():
        assert read[key].dtype == value.dtype and read[key].shape == value.shape, key
        np.testing.assert_array_equal(read[key], value)


def test_a_member_longer_than_its_header_declares_is_refused(tmp_path):
    buffer = BytesIO()
    np.save(buffer, np.arange(4.0))
    with zipfile.ZipFile(tmp_path / "a.npz", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("x.npy", buffer.getvalue() + bytes(100))
    with pytest.raises(ScanDataError, match=r"key 'x' is damaged or forged: .*shape \(4,\) float64, 32 bytes.*132"):
        read_npz(tmp_path / "a.npz")
