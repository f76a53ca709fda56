import json
import zipfile

import numpy as np
import pytest

from ptychodata import ScanData, ScanDataError, ScanFileNotFoundError
from ptychodata.io import read_npz


def arrays(M=12, N=8, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "diffraction": rng.uniform(0, 2, (M, N, N)).astype(np.float32),
        "xcoords": rng.uniform(10, 40, M),
        "ycoords": rng.uniform(10, 40, M),
        "probeGuess": (rng.normal(size=(N, N)) + 1j).astype(np.complex64),
        "objectGuess": np.ones((60, 60), np.complex64),
    }


def write(tmp_path, name="scan.npz", compressed=False, **members):
    path = tmp_path / name
    (np.savez_compressed if compressed else np.savez)(path, **members)
    return path


# ---------------------------------------------------------------- reading
def test_load_memory_maps_uncompressed_members(tmp_path):
    data = arrays()
    scan = ScanData.load(write(tmp_path, **data))
    assert isinstance(scan.diffraction, np.memmap)
    np.testing.assert_array_equal(scan.diffraction, data["diffraction"])
    np.testing.assert_array_equal(scan.xcoords, data["xcoords"])
    assert scan.probe.dtype == np.complex64 and scan.object.shape == (60, 60)
    assert scan.n_points == 12 and scan.N == 8


def test_load_reads_compressed_members(tmp_path):
    data = arrays()
    scan = ScanData.load(write(tmp_path, compressed=True, **data))
    assert not isinstance(scan.diffraction, np.memmap)
    np.testing.assert_array_equal(scan.diffraction, data["diffraction"])


def test_diff3d_is_accepted_and_diffraction_wins(tmp_path):
    data = arrays()
    diff3d = data.pop("diffraction")
    scan = ScanData.load(write(tmp_path, diff3d=diff3d, **data))
    np.testing.assert_array_equal(scan.diffraction, diff3d)
    scan = ScanData.load(write(tmp_path, "both.npz", diff3d=diff3d * 0, diffraction=diff3d, **data))
    np.testing.assert_array_equal(scan.diffraction, diff3d)


def test_legacy_and_singleton_layouts(tmp_path):
    data = arrays()
    legacy = {**data, "diffraction": np.moveaxis(data["diffraction"], 0, 2)}  # (N, N, M)
    scan = ScanData.load(write(tmp_path, "legacy.npz", **legacy))
    np.testing.assert_array_equal(scan.diffraction, data["diffraction"])
    singleton = {**data, "diffraction": data["diffraction"][..., None], "probeGuess": data["probeGuess"][..., None]}
    scan = ScanData.load(write(tmp_path, "single.npz", **singleton))
    assert scan.diffraction.shape == (12, 8, 8) and scan.probe.shape == (8, 8)
    leading = {**data, "probeGuess": data["probeGuess"][None]}
    assert ScanData.load(write(tmp_path, "lead.npz", **leading)).probe.shape == (8, 8)


def test_optional_keys_default_and_metadata(tmp_path):
    data = arrays()
    del data["objectGuess"]
    scan = ScanData.load(write(tmp_path, _metadata=np.array(json.dumps({"nphotons": 1e6})), extra=np.arange(3),
                               **data))
    np.testing.assert_array_equal(scan.xcoords_start, scan.xcoords)
    np.testing.assert_array_equal(scan.scan_index, np.zeros(12))
    assert scan.object is None and scan.Y is None
    assert scan.nphotons == 1e6
    np.testing.assert_array_equal(scan.extras["extra"], np.arange(3))


def test_intensity_true_takes_the_square_root(tmp_path):
    data = arrays()
    counts = np.random.default_rng(1).poisson(50, (12, 8, 8)).astype(np.uint16)
    scan = ScanData.load(write(tmp_path, **{**data, "diffraction": counts}), intensity=True)
    assert scan.diffraction.dtype == np.float32
    np.testing.assert_allclose(scan.diffraction, np.sqrt(counts.astype(np.float64)), rtol=1e-6)


def test_intensity_true_names_the_bad_pattern(tmp_path):
    counts = np.ones((12, 8, 8), np.float32)
    counts[9, 2, 2] = -3
    with pytest.raises(ScanDataError, match="scan.npz: key 'diffraction': pattern 9 holds NaN, Inf or negative"):
        ScanData.load(write(tmp_path, **{**arrays(), "diffraction": counts}), intensity=True)


def test_integer_diffraction_is_counts_with_a_warning(tmp_path):
    data = arrays()
    counts = np.full((12, 8, 8), 9, np.uint16)
    with pytest.warns(UserWarning, match="integer dtype uint16.*sqrt\\(counts\\).*intensity=False"):
        scan = ScanData.load(write(tmp_path, **{**data, "diffraction": counts}))
    np.testing.assert_array_equal(np.asarray(scan.diffraction), np.full((12, 8, 8), 3, np.float32))
    assert scan.metadata["nphotons"] == pytest.approx(9 * 64)
    kept = ScanData.load(write(tmp_path, "kept.npz", **{**data, "diffraction": counts}), intensity=False)
    assert kept.diffraction.dtype == np.uint16 and kept.diffraction.max() == 9


def test_save_round_trip_and_ptychopinn_keys(tmp_path, small_scan):
    path = small_scan.save(tmp_path / "out.npz")
    with np.load(path) as raw:  # what PtychoPINN's RawData.from_file reads
        for key in ("diff3d", "xcoords", "ycoords", "xcoords_start", "ycoords_start", "probeGuess",
                    "scan_index", "objectGuess"):
            assert key in raw.files, key
        assert raw["diff3d"].shape == (small_scan.n_points, small_scan.N, small_scan.N)
    again = ScanData.load(path)
    np.testing.assert_array_equal(again.diffraction, small_scan.diffraction)
    np.testing.assert_array_equal(again.object, small_scan.object)
    assert again.metadata == small_scan.metadata
    assert not list(tmp_path.glob(".*tmp"))  # no temporary left behind


def test_from_arrays_defaults():
    data = arrays()
    scan = ScanData.from_arrays(diffraction=data["diffraction"], xcoords=data["xcoords"],
                                ycoords=data["ycoords"], probe=data["probeGuess"])
    assert scan.object is None and scan.scan_index.dtype == np.int64 and len(scan) == 12


# ---------------------------------------------------------------- errors
def expect_error(tmp_path, match, **members):
    with pytest.raises(ScanDataError, match=match) as info:
        ScanData.load(write(tmp_path, **members))
    assert "scan.npz" in str(info.value)
    return info.value


def test_missing_key_lists_present_keys(tmp_path):
    data = arrays()
    del data["probeGuess"]
    assert ScanData.load(write(tmp_path, **data)).probe is None  # the probe is optional (§10)
    del data["diffraction"]
    error = expect_error(tmp_path, "missing required key.*diffraction \\(or diff3d\\)", **data)
    assert "xcoords" in str(error)  # the keys present are listed


def test_length_mismatch(tmp_path):
    data = arrays()
    expect_error(tmp_path, "length mismatch.*'?diffraction'?.*\\(13, 8, 8\\)",
                 **{**data, "diffraction": np.ones((13, 8, 8), np.float32)})
    expect_error(tmp_path, "length mismatch: xcoords has 12, ycoords has 11",
                 **{**data, "ycoords": data["ycoords"][:11]})
    expect_error(tmp_path, "xcoords_start has 5", **{**data, "xcoords_start": np.zeros(5)})


def test_non_square_patterns(tmp_path):
    data = arrays()
    expect_error(tmp_path, "'diffraction'.*non-square.*\\(8, 6\\)",
                 **{**data, "diffraction": np.ones((12, 8, 6), np.float32)})


def test_probe_size_must_match(tmp_path):
    data = arrays()
    expect_error(tmp_path, "'probeGuess'.*\\(4, 4\\); expected \\(8, 8\\)",
                 **{**data, "probeGuess": np.ones((4, 4), np.complex64)})


def test_larger_probe_is_centre_cropped(tmp_path):
    data = arrays()
    big = np.arange(256, dtype=np.complex64).reshape(16, 16)
    with pytest.warns(UserWarning, match="probe of 16×16 centre-cropped to the pattern size 8×8"):
        scan = ScanData.load(write(tmp_path, **{**data, "probeGuess": big}))
    np.testing.assert_array_equal(scan.probe, big[4:12, 4:12])


def test_complex_diffraction(tmp_path):
    data = arrays()
    expect_error(tmp_path, "'diffraction'.*complex", **{**data, "diffraction": data["diffraction"] + 0j})


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_coordinates(tmp_path, bad):
    data = arrays()
    ycoords = data["ycoords"].copy()
    ycoords[4] = bad
    expect_error(tmp_path, "'ycoords'.*index 4", **{**data, "ycoords": ycoords})


def test_all_identical_positions_are_refused(tmp_path):
    data = arrays()
    same = np.full(12, 25.0)
    expect_error(tmp_path, r"all 12 positions are identical \(x = 25, y = 25\)", **{**data, "xcoords": same, "ycoords": same})
    with pytest.raises(ScanDataError, match="identical"):
        ScanData(diffraction=data["diffraction"], xcoords=same, ycoords=same)
    one = ScanData(diffraction=data["diffraction"][:1], xcoords=same[:1], ycoords=same[:1])  # one point: no scan to judge
    assert one.n_points == 1


@pytest.mark.parametrize("bad, what", [(np.nan, "NaN or Inf"), (np.inf, "NaN or Inf"), (-1.0, "negative")])
def test_bad_amplitudes(tmp_path, bad, what):
    data = arrays()
    diffraction = data["diffraction"].copy()
    diffraction[5, 2, 3] = bad
    expect_error(tmp_path, f"'diffraction'.*{what}.*pattern 5", **{**data, "diffraction": diffraction})


def test_not_a_zip(tmp_path):
    path = tmp_path / "scan.npz"
    path.write_text("hello")
    with pytest.raises(ScanDataError, match="scan.npz.*not a readable .npz"):
        ScanData.load(path)


def test_truncated_file(tmp_path):
    path = write(tmp_path, **arrays(M=200))
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ScanDataError, match="scan.npz"):
        ScanData.load(path)


def test_member_shorter_than_its_header_says(tmp_path):
    # A zip whose directory is intact but whose diffraction member holds fewer bytes than its
    # .npy header promises (a copy cut and re-zipped, say).
    import io

    from numpy.lib import format as npy_format

    header = io.BytesIO()
    npy_format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (1000, 8, 8)})
    path = tmp_path / "scan.npz"
    data = arrays()
    with zipfile.ZipFile(path, "w") as archive:
        for key, value in data.items():
            if key != "diffraction":
                with archive.open(f"{key}.npy", "w") as member:
                    np.save(member, value)
        archive.writestr("diffraction.npy", header.getvalue() + b"\0" * 64)
    with pytest.raises(ScanDataError, match="scan.npz: key 'diffraction' is truncated"):
        read_npz(path)


def test_missing_file(tmp_path):
    with pytest.raises(ScanFileNotFoundError, match="nothere.npz"):
        ScanData.load(tmp_path / "nothere.npz")


def test_object_arrays_are_refused(tmp_path):
    path = tmp_path / "scan.npz"
    np.savez(path, **arrays(), junk=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ScanDataError, match="'junk'.*objects"):
        ScanData.load(path)


def test_check_values_is_the_rule_load_applies():
    data = arrays()
    data["diffraction"][7, 1, 1] = np.nan
    scan = ScanData.from_arrays(diffraction=data["diffraction"], xcoords=data["xcoords"], ycoords=data["ycoords"],
                                check_values=False)
    with pytest.raises(ScanDataError, match="NaN or Inf.*pattern 7"):
        scan.check_values()
    assert scan.check_values(max_bytes=100) is False  # too large to read whole here: left to the readers
    clean = arrays()
    assert ScanData.from_arrays(diffraction=clean["diffraction"], xcoords=clean["xcoords"],
                                ycoords=clean["ycoords"]).check_values() is True
