"""Compact frames (counts as uint16/uint32, float16/bfloat16 amplitudes) and zero-copy stores."""

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from ptychodata import GroupingConfig, StoreError, open_store, prepare, simulate
from ptychodata.cli import main
from ptychodata.errors import FramesRangeError, ParameterError, ScanDataError
from ptychodata.io import write_npz
from ptychodata.store._frames import FramesEncoding

CONFIG = GroupingConfig(gridsize=2, neighbor_count=7, seed=3)


def scan_arrays(scan, diffraction):
    return {"diff3d": diffraction, "xcoords": scan.xcoords, "ycoords": scan.ycoords, "probeGuess": scan.probe,
            "objectGuess": scan.object}


@pytest.fixture(scope="module")
def scan():
    return simulate(n_points=240, N=16, seed=5)


@pytest.fixture
def counts_file(tmp_path, scan):
    """Whole-number counts as uint16, up to a few thousand photons a pixel."""
    counts = np.round(scan.diffraction.astype(np.float64) ** 2 * 400).astype(np.uint16)
    assert counts.max() > 1000
    return write_npz(tmp_path / "counts.npz", scan_arrays(scan, counts))


@pytest.fixture
def amplitude_file(tmp_path, scan):
    return scan.save(tmp_path / "scan.npz")


def all_X(store, **options):
    return store.batch(np.arange(len(store)), reuse=False, **options)["X"]


def manifest_of(store) -> dict:
    return json.loads((Path(store.info()["frames_path"]) / "manifest.json").read_text())


def patterns_bytes(store) -> int:
    """Bytes of pattern data in the store's patterns.npy: its size less its header."""
    path = Path(store.info()["frames_path"]).joinpath("patterns.npy")
    with open(path, "rb") as handle:
        major, _ = np.lib.format.read_magic(handle)
        (np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0)(handle)
        return path.stat().st_size - handle.tell()


# ---------------------------------------------------------------------- counts
@pytest.mark.parametrize("dtype", ["uint16", "uint32"])
def test_counts_store_serves_exactly_the_float32_store_X(tmp_path, counts_file, dtype):
    cache = tmp_path / "cache"
    reference = prepare(counts_file, CONFIG, cache_dir=cache, intensity=True, progress=False)
    compact = prepare(counts_file, CONFIG, cache_dir=cache, intensity=True, frames_dtype=dtype, progress=False)
    assert compact.patterns.dtype == np.dtype(dtype) and reference.patterns.dtype == np.float32
    np.testing.assert_array_equal(compact.patterns, np.load(counts_file)["diff3d"].astype(dtype))
    assert compact.x_scale == reference.x_scale
    np.testing.assert_array_equal(all_X(compact), all_X(reference))
    with open_store(compact.path, sorted_reads=True) as sorted_store:
        np.testing.assert_array_equal(all_X(sorted_store), all_X(reference))
    # X is sqrt(counts)·scale computed in float32, and the batch keeps the contract's dtype.
    batch = compact.batch(np.arange(10), reuse=False)
    counts = np.load(counts_file)["diff3d"][batch["nn_indices"]]
    expected = np.sqrt(counts.astype(np.float32)) * np.float32(compact.x_scale[0])
    assert batch["X"].dtype == np.float32
    np.testing.assert_array_equal(batch["X"], expected)
    itemsize = np.dtype(dtype).itemsize
    assert patterns_bytes(compact) == compact.n_patterns * 16 * 16 * itemsize
    assert patterns_bytes(reference) == compact.n_patterns * 16 * 16 * 4
    patterns = manifest_of(compact)["patterns"]
    assert patterns["dtype"] == dtype and patterns["values"] == "counts"
    assert patterns["storage"] == np.dtype(dtype).str and patterns["conversion"] == "A = sqrt(float32(stored))"
    assert patterns["file"] is None


def test_counts_store_grouped_data_equals_the_float32_store(tmp_path, counts_file):
    cache = tmp_path / "cache"
    reference = prepare(counts_file, CONFIG, cache_dir=cache, intensity=True, progress=False).grouped_data()
    compact = prepare(counts_file, CONFIG, cache_dir=cache, intensity=True, frames_dtype="uint16",
                      progress=False).grouped_data()
    for key in ("diffraction", "X_full", "nn_indices", "coords_offsets", "coords_relative", "Y"):
        np.testing.assert_array_equal(compact[key], reference[key])
    assert compact["x_scale"] == reference["x_scale"]


def test_materialized_counts_store_matches_the_gathered_X(tmp_path, counts_file):
    cache = tmp_path / "cache"
    gathered = prepare(counts_file, CONFIG, cache_dir=cache, intensity=True, frames_dtype="uint16", progress=False)
    materialized = prepare(counts_file, CONFIG, cache_dir=cache, intensity=True, frames_dtype="uint16",
                           materialize=True, progress=False)
    assert materialized.grouping.materialized
    np.testing.assert_array_equal(all_X(materialized), all_X(gathered))


def test_counts_that_do_not_fit_are_refused_naming_the_pattern(tmp_path, scan):
    big = np.zeros(scan.diffraction.shape, np.uint32)
    big[7, 3, 3] = 70_000
    source = write_npz(tmp_path / "big.npz", scan_arrays(scan, big))
    with pytest.raises(FramesRangeError, match=r"pattern 7 holds counts in \[0, 70000\]; frames_dtype='uint16' "
                       r"holds whole counts in \[0, 65535\]; use frames_dtype='uint32'"):
        prepare(source, CONFIG, cache_dir=tmp_path / "c", intensity=True, frames_dtype="uint16", progress=False)
    stored = prepare(source, CONFIG, cache_dir=tmp_path / "c", intensity=True, frames_dtype="uint32", progress=False,
                     load_options={"shift": False})  # one bright pixel near a corner would read as unshifted
    assert int(stored.patterns[7, 3, 3]) == 70_000


def test_fractional_counts_are_refused_for_integer_storage(tmp_path, scan):
    counts = np.round(scan.diffraction.astype(np.float32) ** 2 * 100)
    counts[11, 0, 5] = 2.5
    source = write_npz(tmp_path / "frac.npz", scan_arrays(scan, counts))
    with pytest.raises(FramesRangeError, match=r"pattern 11 holds 2\.5, not a whole count; frames_dtype='uint16'"):
        prepare(source, CONFIG, cache_dir=tmp_path / "c", intensity=True, frames_dtype="uint16", progress=False)


def test_integer_storage_needs_counts_and_a_known_dtype(tmp_path, amplitude_file):
    with pytest.raises(ParameterError, match="intensity=True"):
        prepare(amplitude_file, CONFIG, cache_dir=tmp_path / "c", frames_dtype="uint16", progress=False)
    with pytest.raises(ParameterError, match="frames_dtype='int8'"):
        prepare(amplitude_file, CONFIG, cache_dir=tmp_path / "c", frames_dtype="int8", progress=False)
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").glob("frames-*"))


# ---------------------------------------------------------------------- float16 / bfloat16
def decoded(stored: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "float16":
        return stored.astype(np.float32)
    return (stored.astype(np.uint32) << 16).view(np.float32)


@pytest.mark.parametrize(("dtype", "rounding"), [("float16", 2.0**-11), ("bfloat16", 2.0**-8)])
def test_half_precision_amplitudes_are_within_rounding_of_float32(tmp_path, amplitude_file, dtype, rounding):
    cache = tmp_path / "cache"
    reference = prepare(amplitude_file, CONFIG, cache_dir=cache, progress=False)
    compact = prepare(amplitude_file, CONFIG, cache_dir=cache, frames_dtype=dtype, progress=False)
    assert compact.patterns.dtype == (np.float16 if dtype == "float16" else np.uint16)
    source = np.load(amplitude_file)["diff3d"]
    # Stored values: the source rounded to the nearest representable value.
    values = decoded(np.asarray(compact.patterns), dtype)
    normal = source > np.float32(2.0**-14)  # float16's normal range; bfloat16 has float32's
    assert np.all(np.abs(values - source)[normal] <= rounding * source[normal])
    # X is exactly A(stored)·scale in float32, and within rounding (of A and of the scale) of float32's.
    X, X32 = all_X(compact), all_X(reference)
    members = compact.groups
    np.testing.assert_array_equal(X, values[members] * np.float32(compact.x_scale[0]))
    assert X.dtype == np.float32
    assert abs(compact.x_scale[0] / reference.x_scale[0] - 1) <= rounding
    big = X32 > 2.0**-14 * reference.x_scale[0]
    assert np.all(np.abs(X - X32)[big] <= 2.5 * rounding * X32[big])
    assert patterns_bytes(compact) == compact.n_patterns * 16 * 16 * 2
    patterns = manifest_of(compact)["patterns"]
    assert patterns["dtype"] == dtype and patterns["values"] == "amplitude"
    # grouped_data serves what the batches serve (channels-last).
    grouped = compact.grouped_data()
    np.testing.assert_array_equal(grouped["X_full"], X.transpose(0, 2, 3, 1))


def test_bfloat16_rounds_to_nearest_even():
    one = np.float32(1.0)
    values = np.array([1 + 2.0**-8, 1 + 3 * 2.0**-8, 1 + 2.0**-8 + 2.0**-20, 3.0], np.float32).reshape(1, 2, 2)
    stored = FramesEncoding("bfloat16").encode(values, values, 0, "")
    back = decoded(stored, "bfloat16").reshape(-1)
    # Ties go to the even mantissa; just past a tie goes up.
    assert list(back) == [one, 1 + 2.0**-6, 1 + 2.0**-7, 3.0]


def test_float16_overflow_is_refused(tmp_path, scan):
    amplitudes = scan.diffraction.astype(np.float32).copy()
    amplitudes[4, 1, 1] = 1e5
    source = write_npz(tmp_path / "loud.npz", scan_arrays(scan, amplitudes))
    with pytest.raises(ScanDataError, match=r"pattern 4 has amplitude 100000, beyond float16's largest"):
        prepare(source, CONFIG, cache_dir=tmp_path / "c", frames_dtype="float16", progress=False)


# ---------------------------------------------------------------------- zero-copy
def test_zero_copy_serves_the_source_in_place(tmp_path, amplitude_file):
    cache = tmp_path / "cache"
    copied = prepare(amplitude_file, CONFIG, cache_dir=cache, progress=False)
    in_place = prepare(amplitude_file, CONFIG, cache_dir=cache, copy=False, progress=False)
    assert in_place.zero_copy and not copied.zero_copy
    np.testing.assert_array_equal(all_X(in_place), all_X(copied))
    np.testing.assert_array_equal(in_place.energies, copied.energies)
    np.testing.assert_array_equal(in_place.amplitude_sums, copied.amplitude_sums)
    frames_dir = Path(in_place.info()["frames_path"])
    assert not (frames_dir / "patterns.npy").exists()
    stored_bytes = sum(f.stat().st_size for f in frames_dir.rglob("*") if f.is_file())
    assert stored_bytes < in_place.patterns.nbytes
    entry = manifest_of(in_place)["patterns"]
    stat = os.stat(amplitude_file)
    assert entry["file"] == str(Path(amplitude_file).resolve())
    assert (entry["size"], entry["mtime_ns"]) == (stat.st_size, stat.st_mtime_ns)
    assert entry["offset"] > 0 and entry["shape"] == [240, 16, 16]
    with open(amplitude_file, "rb") as handle:  # the recorded offset is where the patterns are
        handle.seek(entry["offset"])
        head = np.frombuffer(handle.read(16 * 16 * 4), np.float32).reshape(16, 16)
    np.testing.assert_array_equal(head, np.load(amplitude_file)["diff3d"][0])
    assert manifest_of(in_place)["experiments"][0]["source"]["content_hash"] is None
    # Reused as is; a pickled copy (DataLoader workers) serves the same build from the same file.
    again = prepare(amplitude_file, CONFIG, cache_dir=cache, copy=False, progress=False)
    assert again.frames_build_id == in_place.frames_build_id
    clone = pickle.loads(pickle.dumps(in_place))
    np.testing.assert_array_equal(all_X(clone), all_X(in_place))


def test_zero_copy_of_a_changed_source_is_refused_then_rebuilt(tmp_path, scan, amplitude_file):
    cache = tmp_path / "cache"
    store = prepare(amplitude_file, CONFIG, cache_dir=cache, copy=False, progress=False)
    first_X = all_X(store)
    store.close()
    changed = scan.diffraction.astype(np.float32) * 2
    write_npz(amplitude_file, scan_arrays(scan, changed) | {"xcoords_start": scan.xcoords_start,
                                                            "ycoords_start": scan.ycoords_start,
                                                            "scan_index": scan.scan_index})
    with pytest.raises(StoreError, match="changed"):
        open_store(store.path)
    rebuilt = prepare(amplitude_file, CONFIG, cache_dir=cache, copy=False, progress=False)
    assert rebuilt.frames_build_id != store.frames_build_id
    np.testing.assert_array_equal(np.asarray(rebuilt.patterns), changed)
    # Doubled amplitudes, same normalised X (the §5 scale halves).
    np.testing.assert_allclose(all_X(rebuilt), first_X, rtol=1e-6)


def test_zero_copy_source_touched_or_removed_is_refused(tmp_path, amplitude_file):
    store = prepare(amplitude_file, CONFIG, cache_dir=tmp_path / "cache", copy=False, progress=False)
    store.close()
    stat = os.stat(amplitude_file)
    os.utime(amplitude_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    with pytest.raises(StoreError, match="changed"):
        open_store(store.path)
    os.unlink(amplitude_file)
    with pytest.raises(StoreError, match="is gone"):
        open_store(store.path)


def test_zero_copy_counts_serve_the_float32_store_X(tmp_path, counts_file):
    cache = tmp_path / "cache"
    reference = prepare(counts_file, CONFIG, cache_dir=cache, intensity=True, progress=False)
    in_place = prepare(counts_file, CONFIG, cache_dir=cache, intensity=True, copy=False, verify=True, progress=False)
    assert in_place.zero_copy and in_place.frames_encoding == FramesEncoding("uint16", "counts")
    np.testing.assert_array_equal(all_X(in_place), all_X(reference))


def test_zero_copy_refuses_what_it_cannot_reference(tmp_path, scan, amplitude_file):
    cache = tmp_path / "cache"
    compressed = tmp_path / "compressed.npz"
    np.savez_compressed(compressed, **scan_arrays(scan, scan.diffraction))
    with pytest.raises(ParameterError, match="uncompressed .npz member"):
        prepare(compressed, CONFIG, cache_dir=cache, copy=False, progress=False)
    with pytest.raises(ParameterError, match="got 2 sources"):
        prepare([amplitude_file, amplitude_file], CONFIG, cache_dir=cache, copy=False, progress=False)
    with pytest.raises(ParameterError, match="in-memory ScanData"):
        prepare(scan, CONFIG, cache_dir=cache, copy=False, progress=False)
    with pytest.raises(ParameterError, match="frames_dtype='float16' but the source holds float32"):
        prepare(amplitude_file, CONFIG, cache_dir=cache, copy=False, frames_dtype="float16", progress=False)
    doubles = write_npz(tmp_path / "f64.npz", scan_arrays(scan, scan.diffraction.astype(np.float64)))
    with pytest.raises(ParameterError, match="the patterns are float64"):
        prepare(doubles, CONFIG, cache_dir=cache, copy=False, progress=False)
    big_endian = write_npz(tmp_path / "be.npz", scan_arrays(scan, scan.diffraction.astype(">f4")))
    with pytest.raises(ParameterError, match="big-endian"):
        prepare(big_endian, CONFIG, cache_dir=cache, copy=False, progress=False)


def test_cli_prepare_no_copy_and_frames_dtype(tmp_path, amplitude_file, counts_file, capsys):
    cache = tmp_path / "cache"
    assert main(["prepare", str(amplitude_file), "--no-copy", "--gridsize", "2", "--neighbors", "7",
                 "--cache-dir", str(cache), "--quiet"]) == 0
    with open_store(capsys.readouterr().out.strip()) as store:
        assert store.zero_copy
    assert main(["prepare", str(counts_file), "--intensity", "--frames-dtype", "uint16", "--cache-dir", str(cache),
                 "--quiet"]) == 0
    with open_store(capsys.readouterr().out.strip()) as store:
        assert store.frames_encoding == FramesEncoding("uint16", "counts")
    assert main(["prepare", str(amplitude_file), "--frames-dtype", "uint16", "--cache-dir", str(cache)]) == 2
    err = capsys.readouterr().err
    assert "--intensity" in err and "intensity=True" not in err


@pytest.mark.parametrize("scale", [None, np.float32(123.456), np.float32(3e-4)])
def test_decoding_is_exact_for_every_stored_value(scale):
    """Every finite non-negative float16, bfloat16 up to 2**97, every uint16 count: the gather's
    conversion equals NumPy's own float32 conversion (then one float32 multiply)."""
    from ptychodata.store._frames import decode_into

    half = np.arange(0x7C00, dtype=np.uint16)  # +0 .. largest finite float16, subnormals included
    brain = np.arange(0x7000, dtype=np.uint16)  # +0 .. 2**97 in bfloat16 (scaled stays finite)
    counts = np.arange(65536, dtype=np.uint16)
    cases = [
        (FramesEncoding("float16"), half.view(np.float16), half.view(np.float16).astype(np.float32)),
        (FramesEncoding("bfloat16"), brain, (brain.astype(np.uint32) << 16).view(np.float32)),
        (FramesEncoding("uint16", "counts"), counts, np.sqrt(counts.astype(np.float32))),
    ]
    for encoding, stored, expected in cases:
        out = np.empty(stored.shape, np.float32)
        decode_into(encoding, stored.reshape(1, 1, -1), out.reshape(1, 1, -1), scale)
        np.testing.assert_array_equal(out, expected if scale is None else expected * scale, err_msg=encoding.dtype)


# ---------------------------------------------------------------------- the streamed copy
def test_streamed_prepare_reports_the_first_bad_pattern_of_many_chunks(tmp_path, scan, monkeypatch):
    from ptychodata.store import _files

    monkeypatch.setattr(_files, "STREAM_CHUNK_BYTES", 16 * 16 * 4 * 7)  # 7 patterns a chunk: 35 chunks in the ring
    amplitudes = scan.diffraction.astype(np.float32).copy()
    amplitudes[200, 2, 2] = np.nan
    amplitudes[60, 1, 1] = -1.0
    source = write_npz(tmp_path / "bad.npz", scan_arrays(scan, amplitudes))
    with pytest.raises(ScanDataError, match=r"pattern 60 holds NaN, Inf or negative"):
        prepare(source, CONFIG, cache_dir=tmp_path / "c", progress=False)


def test_streamed_prepare_in_small_chunks_stores_what_one_chunk_stores(tmp_path, amplitude_file, monkeypatch):
    from ptychodata.store import _files

    whole = prepare(amplitude_file, CONFIG, cache_dir=tmp_path / "a", progress=False)
    monkeypatch.setattr(_files, "STREAM_CHUNK_BYTES", 16 * 16 * 4 * 7)
    chunked = prepare(amplitude_file, CONFIG, cache_dir=tmp_path / "b", progress=False)
    for name in ("patterns", "energies", "amplitude_sums"):
        np.testing.assert_array_equal(getattr(chunked, name), getattr(whole, name))
    np.testing.assert_array_equal(all_X(chunked), all_X(whole))


def test_zero_copy_materialized_X_equals_the_copy_store(tmp_path, amplitude_file):
    cache = tmp_path / "cache"
    copied = prepare(amplitude_file, CONFIG, cache_dir=cache, materialize=True, progress=False)
    in_place = prepare(amplitude_file, CONFIG, cache_dir=cache, materialize=True, copy=False, progress=False)
    assert in_place.zero_copy and in_place.grouping.materialized
    np.testing.assert_array_equal(all_X(in_place), all_X(copied))


def test_a_count_or_amplitude_an_encoding_cannot_hold_is_named_with_what_it_holds():
    from ptychodata.store import FramesEncoding

    counts = np.zeros((4, 2, 2), np.float64)
    assert FramesEncoding("uint16", "counts").unencodable(counts) is None
    for value, found in [(np.inf, "holds inf, not a whole count"), (-3.0, "holds counts in [-3, 0]"),
                         (70_000.0, "holds counts in [0, 70000]"), (0.5, "holds 0.5, not a whole count")]:
        counts[2, 1, 0] = value
        assert FramesEncoding("uint16", "counts").unencodable(counts) == (2, found)
    assert FramesEncoding("uint32", "counts").unencodable(counts[:, :, :1] * 0 + 70_000) is None
    amplitude = np.ones((3, 2, 2), np.float32)
    amplitude[1, 0, 0] = np.nan
    assert FramesEncoding("float16").unencodable(amplitude, amplitude) == (1, "has amplitude nan, not a finite amplitude")
    amplitude[1, 0, 0] = 1e5
    assert FramesEncoding("float16").unencodable(amplitude, amplitude) == (
        1, "has amplitude 100000, beyond float16's largest 65504")
    assert FramesEncoding("bfloat16").unencodable(amplitude, amplitude) is None
