import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from ptychodata import GroupingConfig, ScanData, StoreError, grouped_data, open_store, prepare, simulate
from ptychodata.normalize import x_scale
from ptychodata.store._buffers import BufferPool
from ptychodata.store._prepare import default_cache_dir

CONFIG = GroupingConfig(gridsize=2, neighbor_count=6, seed=0)


@pytest.fixture(scope="module")
def scan():
    return simulate(n_points=120, N=16, seed=11, pattern="jittered")


@pytest.fixture
def source(tmp_path, scan):
    return scan.save(tmp_path / "scan.npz")


def build_ids(store):
    return store.frames.build_id, store.grouping.build_id


def test_store_equals_grouped_data(tmp_path, source, scan):
    store = prepare(source, CONFIG, cache_dir=tmp_path / "cache", progress=False)
    expected = grouped_data(scan, CONFIG)
    got = store.grouped_data()
    for key, value in expected.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(got[key], value, err_msg=key)
        else:
            assert got[key] == value, key
    assert len(store) == 120 and store.C == 4 and store.N == 16


def test_batch_is_the_channels_first_grouped_dict(tmp_path, source, scan):
    store = prepare(source, CONFIG, cache_dir=tmp_path / "cache", progress=False)
    expected = grouped_data(scan, CONFIG)
    index = np.array([7, 3, 100, 3, 0])
    batch = store.batch(index, with_Y=True)
    np.testing.assert_allclose(batch["X"], expected["X_full"][index].transpose(0, 3, 1, 2), rtol=1e-6)
    np.testing.assert_array_equal(batch["Y"], expected["Y"][index].transpose(0, 3, 1, 2))
    np.testing.assert_allclose(batch["coords_relative"][:, :, 0, :],
                               expected["coords_relative"][index, 0].transpose(0, 2, 1), rtol=1e-6)
    np.testing.assert_allclose(batch["coords_offsets"][:, 0, 0, :], expected["coords_offsets"][index, 0, :, 0],
                               rtol=1e-6)
    np.testing.assert_array_equal(batch["nn_indices"], expected["nn_indices"][index])
    np.testing.assert_array_equal(batch["group_index"], index)
    np.testing.assert_array_equal(batch["experiment_id"], 0)
    np.testing.assert_array_equal(batch["probe"], np.broadcast_to(scan.probe, (5, 16, 16)))
    assert batch["probe"].strides[0] != 0
    dtypes = {k: v.dtype for k, v in batch.items()}
    assert dtypes == {"X": np.float32, "Y": np.complex64, "coords_relative": np.float32,
                      "coords_offsets": np.float32, "nn_indices": np.int64, "group_index": np.int64,
                      "experiment_id": np.int64, "probe": np.complex64}


def test_sorted_reads_give_the_same_batch(tmp_path, source):
    store = prepare(source, CONFIG, cache_dir=tmp_path / "cache", progress=False)
    sorted_store = open_store(store.path, sorted_reads=True)
    index = [90, 4, 17, 4, 63]
    expected = store.batch(index, with_Y=True, reuse=False)
    got = sorted_store.batch(index, with_Y=True)
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)


def test_batch_buffers_are_recycled_only_when_nothing_refers_to_them(tmp_path, source):
    store = prepare(source, CONFIG, cache_dir=tmp_path / "cache", progress=False)
    first = store.batch([1, 2])
    kept = first["X"].copy()
    address = first["X"].ctypes.data
    second = store.batch([3, 4])
    assert second["X"].ctypes.data != address  # first is still held: never overwritten
    np.testing.assert_array_equal(first["X"], kept)
    X_view = first["X"][1:]
    del first, second
    assert store.batch([5, 6])["X"].ctypes.data != address  # a view of it is still alive
    del X_view
    third = store.batch([1, 2])
    assert third["X"].ctypes.data == address  # nothing refers to it any more: recycled
    np.testing.assert_array_equal(third["X"], kept)
    fresh = store.batch([1, 2], reuse=False)
    np.testing.assert_array_equal(fresh["X"], kept)
    assert fresh["X"].ctypes.data != address
    with pytest.raises(IndexError, match="out of range"):
        store.batch([120])


def test_buffer_pool_never_lends_a_set_to_two_threads():
    pool = BufferPool(max_sets=3)
    layout = {"X": ((64, 64), np.float32)}
    errors = []

    def work(tag: float) -> None:
        for _ in range(200):
            arrays = pool.take(layout)
            arrays["X"].fill(tag)
            time.sleep(0)
            if not np.all(arrays["X"] == tag):
                errors.append(tag)

    threads = [threading.Thread(target=work, args=(float(tag),)) for tag in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(pool) == 3


def test_materialized_store_serves_the_same_batches(tmp_path, source):
    plain = prepare(source, CONFIG, cache_dir=tmp_path / "cache", progress=False)
    materialized = prepare(source, CONFIG, cache_dir=tmp_path / "cache", progress=False, materialize=True)
    assert (materialized.path / "X.npy").exists() and not (plain.path / "X.npy").exists()
    assert materialized.frames.build_id == plain.frames.build_id  # frames shared
    index = [5, 9, 2]
    np.testing.assert_allclose(materialized.batch(index)["X"], plain.batch(index, reuse=False)["X"], rtol=1e-6)


def test_reuse_does_not_rebuild(tmp_path, source):
    cache = tmp_path / "cache"
    first = prepare(source, CONFIG, cache_dir=cache, progress=False)
    start = time.perf_counter()
    again = prepare(source, CONFIG, cache_dir=cache, progress=False)
    assert build_ids(again) == build_ids(first)
    assert time.perf_counter() - start < 1.0  # generous: the benchmark measures milliseconds
    reopened = open_store(first.path)
    assert build_ids(reopened) == build_ids(first)
    assert open_store(first.frames_path).path == first.path  # a frame store with one grouping


def test_new_grouping_reuses_frames(tmp_path, source):
    cache = tmp_path / "cache"
    first = prepare(source, CONFIG, cache_dir=cache, progress=False)
    other = prepare(source, GroupingConfig(gridsize=1, n_groups=50, seed=3), cache_dir=cache, progress=False)
    assert other.frames.build_id == first.frames.build_id
    assert other.grouping.build_id != first.grouping.build_id
    assert len(other) == 50 and other.C == 1
    with pytest.raises(StoreError, match="2 groupings"):
        open_store(first.frames_path)


def test_modified_source_is_rebuilt(tmp_path, source, scan):
    cache = tmp_path / "cache"
    first = prepare(source, CONFIG, cache_dir=cache, progress=False)
    changed = simulate(n_points=120, N=16, seed=12, pattern="jittered")
    time.sleep(0.01)
    changed.save(source)
    second = prepare(source, CONFIG, cache_dir=cache, progress=False)
    assert second.frames.build_id != first.frames.build_id
    np.testing.assert_array_equal(second.array("patterns"), changed.diffraction)


def test_verify_catches_content_change_with_same_size_and_mtime(tmp_path, source):
    cache = tmp_path / "cache"
    first = prepare(source, CONFIG, cache_dir=cache, progress=False)
    stat = source.stat()
    data = dict(np.load(source))
    data["diff3d"] = data["diff3d"] * np.float32(1.5)
    np.savez(source, **data)
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert source.stat().st_size == stat.st_size
    unverified = prepare(source, CONFIG, cache_dir=cache, progress=False)
    assert unverified.frames.build_id == first.frames.build_id  # size+mtime cannot see it
    verified = prepare(source, CONFIG, cache_dir=cache, progress=False, verify=True)
    assert verified.frames.build_id != first.frames.build_id
    np.testing.assert_allclose(verified.array("patterns"), data["diff3d"])


def test_truncated_file_raises_and_prepare_rebuilds(tmp_path, source):
    cache = tmp_path / "cache"
    store = prepare(source, CONFIG, cache_dir=cache, progress=False)
    patterns = store.frames_path / "patterns.npy"
    with open(patterns, "r+b") as handle:
        handle.truncate(patterns.stat().st_size - 100)
    with pytest.raises(StoreError, match="patterns.npy.*truncated"):
        open_store(store.path)
    rebuilt = prepare(source, CONFIG, cache_dir=cache, progress=False)
    assert rebuilt.frames.build_id != store.frames.build_id
    groups_file = rebuilt.path / "groups.npy"
    groups_file.write_bytes(groups_file.read_bytes()[:-8])
    with pytest.raises(StoreError, match="groups.npy"):
        open_store(rebuilt.path)


def test_schema_change_rebuilds(tmp_path, source):
    cache = tmp_path / "cache"
    store = prepare(source, CONFIG, cache_dir=cache, progress=False)
    manifest_path = store.frames_path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["schema_version"] = 0
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="schema version 0"):
        open_store(store.path)
    rebuilt = prepare(source, CONFIG, cache_dir=cache, progress=False)
    assert rebuilt.frames.schema_version == 1 and rebuilt.frames.build_id != store.frames.build_id


def test_multi_source_store_keeps_probes_and_scales(tmp_path):
    a = simulate(n_points=60, N=16, seed=1, probe="disk")
    b = simulate(n_points=80, N=16, seed=2, probe="gaussian", pattern="fermat")
    b = b.with_(diffraction=np.asarray(b.diffraction) * np.float32(7.0))
    store = prepare([a, b.save(tmp_path / "b.npz")], CONFIG, cache_dir=tmp_path / "cache", progress=False)
    assert store.n_experiments == 2 and len(store) == 140 and store.array("patterns").shape[0] == 140
    groups, experiment = store.array("groups"), store.array("group_experiment")
    # grouping never crosses experiments
    assert (groups[experiment == 0] < 60).all() and (groups[experiment == 1] >= 60).all()
    scale_a = grouped_data(a, CONFIG)["x_scale"]
    assert store.grouping.x_scale[0] == pytest.approx(scale_a)
    scale_b = x_scale(b.diffraction, groups[experiment == 1] - 60)
    assert store.grouping.x_scale[1] == pytest.approx(scale_b)
    assert scale_b < scale_a / 3  # b's patterns are 7 times brighter
    batch = store.batch(np.array([0, 139]))
    np.testing.assert_array_equal(batch["experiment_id"], [0, 1])
    np.testing.assert_array_equal(batch["probe"][0], a.probe)
    np.testing.assert_array_equal(batch["probe"][1], b.probe)
    np.testing.assert_array_equal(store.probe(1), b.probe)
    np.testing.assert_array_equal(store.object(0), a.object)
    np.testing.assert_array_equal(store.positions[60:], b.positions)
    assert store.x_scale == store.grouping.x_scale
    energy = (batch["X"].astype(np.float64) ** 2).sum(axis=(2, 3)).mean(axis=1)
    assert np.all(np.abs(energy / 64 - 1) < 0.5)  # both experiments normalised to (N/2)^2
    assert store.grouped_data(experiment=1)["x_scale"] == store.grouping.x_scale[1]
    with pytest.raises(StoreError, match="experiment="):
        store.container()
    assert store.container(experiment=0, backend="numpy").X.shape == (60, 16, 16, 4)


def test_threaded_gather_equals_the_direct_formula(tmp_path, monkeypatch):
    from ptychodata.store import _store

    monkeypatch.setattr(_store, "_CACHE_BYTES", 3 * 4 * 16 * 16 * 4)  # runs of 3 groups
    monkeypatch.setattr(_store, "_MIN_THREAD_BYTES", 1)  # threads even for tiny batches
    a = simulate(n_points=60, N=16, seed=1)
    b = simulate(n_points=50, N=16, seed=2, probe="gaussian")
    store = open_store(prepare([a, b], CONFIG, cache_dir=tmp_path / "cache", progress=False).path, threads=3)
    patterns, groups = store.array("patterns"), store.array("groups")
    scales = np.asarray(store.x_scale, np.float32)[store.array("group_experiment")]
    rng = np.random.default_rng(0)
    for size in (1, 2, 7, 31, 110):
        index = rng.permutation(len(store))[:size]
        expected = patterns[groups[index]] * scales[index][:, None, None, None]
        threaded = store.batch(index, reuse=False)
        np.testing.assert_array_equal(threaded["X"], expected)
        np.testing.assert_array_equal(store.batch(index, reuse=False, threads=1)["X"], expected)
    assert store._executor is not None  # the batches above did use the gather threads


def test_different_pattern_sizes_are_refused(tmp_path):
    with pytest.raises(Exception, match="N=16.*N=32|different pattern sizes"):
        prepare([simulate(n_points=20, N=16, seed=1), simulate(n_points=20, N=32, seed=1)], CONFIG,
                cache_dir=tmp_path, progress=False)


def test_intensity_sources_store_amplitudes(tmp_path, scan):
    counts = np.round(np.asarray(scan.diffraction, np.float64) ** 2 * 100).astype(np.uint32)
    with pytest.warns(UserWarning, match="intensity=True"):
        source = ScanData.from_arrays(diffraction=counts, xcoords=scan.xcoords, ycoords=scan.ycoords,
                                      probe=scan.probe, check_values=False)
    path = source.save(tmp_path / "counts.npz")
    # integer patterns are recognised as counts when the file is read (issue 9): no intensity= needed
    store = prepare(path, CONFIG, cache_dir=tmp_path / "cache", progress=False)
    np.testing.assert_allclose(store.array("patterns"), np.sqrt(counts), rtol=1e-6)


@pytest.mark.xfail(strict=True, reason="store/ converts counts itself after ScanData.load already did: it must pass "
                   "intensity= to ScanData.load and drop its own counts_to_amplitude (issue 9 hand-over)")
def test_intensity_true_on_a_counts_file_converts_once(tmp_path, scan):
    counts = np.round(np.asarray(scan.diffraction, np.float64) ** 2 * 100).astype(np.uint32)
    with pytest.warns(UserWarning, match="intensity=True"):
        source = ScanData.from_arrays(diffraction=counts, xcoords=scan.xcoords, ycoords=scan.ycoords,
                                      probe=scan.probe, check_values=False)
    path = source.save(tmp_path / "counts.npz")
    store = prepare(path, CONFIG, cache_dir=tmp_path / "cache", progress=False, intensity=True)
    np.testing.assert_allclose(store.array("patterns"), np.sqrt(counts), rtol=1e-6)


def test_store_pickles_by_path(tmp_path, source):
    store = prepare(source, CONFIG, cache_dir=tmp_path / "cache", progress=False)
    blob = pickle.dumps(store)
    assert len(blob) < 1000
    again = pickle.loads(blob)
    np.testing.assert_array_equal(again.batch([4])["X"], store.batch([4], reuse=False)["X"])


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("PTYCHODATA_CACHE", str(tmp_path / "here"))
    assert default_cache_dir() == tmp_path / "here"
    monkeypatch.delenv("PTYCHODATA_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "ptychodata"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "ptychodata"


def test_unwritable_cache_dir_is_a_clear_error(tmp_path, source):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="a_file/cache: cannot create the cache directory"):
        prepare(source, CONFIG, cache_dir=blocker / "cache", progress=False)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_cache_dir_is_a_clear_error(tmp_path, source):
    cache = tmp_path / "ro"
    cache.mkdir()
    cache.chmod(0o500)
    try:
        with pytest.raises(StoreError, match="not writable"):
            prepare(source, CONFIG, cache_dir=cache, progress=False)
    finally:
        cache.chmod(0o700)


# ---------------------------------------------------------------------- crashes and races
PREPARE_SCRIPT = textwrap.dedent(
    """
    import sys
    from ptychodata import GroupingConfig, prepare
    store = prepare(sys.argv[1], GroupingConfig(gridsize=2, neighbor_count=6, seed=0, n_groups=int(sys.argv[3])),
                    cache_dir=sys.argv[2], progress=False, materialize=True)
    print(store.frames.build_id, store.grouping.build_id, flush=True)
    """
)


@pytest.fixture(scope="module")
def big_source(tmp_path_factory):
    """About 100 MB of patterns, so a build takes long enough to be interrupted."""
    path = tmp_path_factory.mktemp("big") / "big.npz"
    rng = np.random.default_rng(0)
    side = 80
    rows, cols = np.divmod(np.arange(side * side), side)
    scan = ScanData.from_arrays(
        diffraction=rng.random((side * side, 64, 64), dtype=np.float32),
        xcoords=cols * 4.0 + 0.3, ycoords=rows * 4.0 + 0.6, probe=np.ones((64, 64), np.complex64),
    )
    return scan.save(path)


def run_prepare(source: Path, cache: Path, n_groups: int = 6400) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", PREPARE_SCRIPT, str(source), str(cache), str(n_groups)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def grouping_dirs(cache: Path) -> list[Path]:
    return [p for p in cache.glob("frames-*/groupings/*") if p.is_dir() and not p.name.startswith(".")]


def assert_no_partial_store(cache: Path) -> None:
    """Every directory under a final (non-temporary) name opens as a complete store."""
    for frames in cache.glob("frames-*"):
        if frames.is_dir():
            assert (frames / "manifest.json").exists(), f"partial frame store {frames}"
    for grouping in grouping_dirs(cache):
        open_store(grouping)


def test_sigkill_never_leaves_a_partial_store(tmp_path, big_source):
    cache = tmp_path / "cache"
    start = time.perf_counter()
    reference = run_prepare(big_source, tmp_path / "timing")
    _, err = reference.communicate(timeout=120)
    assert reference.returncode == 0, err
    full = time.perf_counter() - start
    interrupted_builds = 0
    for fraction in (0.15, 0.35, 0.55, 0.75, 0.9):
        process = run_prepare(big_source, cache)
        time.sleep(full * fraction)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert_no_partial_store(cache)
        interrupted_builds += bool(list(cache.rglob(".tmp-*")))
    assert interrupted_builds >= 2, "the kills should land in the middle of builds"
    finished = run_prepare(big_source, cache)
    _, err = finished.communicate(timeout=120)
    assert finished.returncode == 0, err
    assert_no_partial_store(cache)
    assert not list(cache.glob(".tmp-*")), "leftover temporaries are cleaned by the next build"
    (grouping,) = grouping_dirs(cache)
    store = open_store(grouping)
    np.testing.assert_array_equal(store.array("patterns")[-1], np.load(big_source)["diff3d"][-1])


def test_concurrent_prepares_build_once(tmp_path, big_source):
    cache = tmp_path / "cache"
    processes = [run_prepare(big_source, cache, n_groups=3000) for _ in range(2)]
    results = [process.communicate(timeout=180) for process in processes]
    for process, (out, err) in zip(processes, results):
        assert process.returncode == 0, err
    ids = [out.split() for out, _ in results]
    assert ids[0] == ids[1]  # the second waited for the first's build and reused it
    assert len(list(cache.glob("frames-*/"))) == 1
