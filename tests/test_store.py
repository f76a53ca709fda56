import json
import os
import pickle
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ptychodata import GroupingConfig, ScanData, StoreError, grouped_data, open_store, prepare, simulate
from ptychodata.errors import (
    GroupIndexError,
    ParameterError,
    ScanDataError,
    StoreClosedError,
    StoreNotFoundError,
)
from ptychodata.normalize import x_scale
from ptychodata.store import default_cache_dir
from ptychodata.store._buffers import BufferPool
from ptychodata.store._manifest import SCHEMA_VERSION

CONFIG = GroupingConfig(gridsize=2, neighbor_count=6, seed=0)


@pytest.fixture(scope="module")
def scan():
    return simulate(n_points=120, N=16, seed=11, pattern="jittered")


@pytest.fixture
def source(tmp_path, scan):
    return scan.save(tmp_path / "scan.npz")


def build_ids(store):
    return store.frames.build_id, store.grouping.build_id


def frames_slot(store) -> Path:
    """The frames store (``frames-<key>``) a store's grouping lives in."""
    return store.path.parent.parent


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
    pool = store._gatherer.pool
    expected = {i: store.batch([i, i + 1], reuse=False)["X"] for i in (1, 3, 5)}
    first = store.batch([1, 2])
    second = store.batch([3, 4])  # first is held: its arrays must not be lent out
    np.testing.assert_array_equal(first["X"], expected[1])
    np.testing.assert_array_equal(second["X"], expected[3])
    X_view = first["X"][1:]
    del first, second
    store.batch([5, 6])  # may reuse second's arrays, never first's: a view of it lives
    np.testing.assert_array_equal(X_view, expected[1][1:])
    reused = pool.reused
    del X_view
    third = store.batch([1, 2])
    assert pool.reused == reused + 1  # nothing refers to a pooled set any more: recycled
    np.testing.assert_array_equal(third["X"], expected[1])
    with pytest.raises(GroupIndexError, match="group index 120 out of range for a store of 120"):
        store.batch([120])
    with pytest.raises(IndexError):  # the built-in it refines, for existing except clauses
        store.batch([-121])


def test_buffer_pool_is_bounded_over_batch_sizes(tmp_path, source):
    store = prepare(source, CONFIG, cache_dir=tmp_path / "cache", progress=False)
    pool = store._gatherer.pool
    for size in range(1, 30):
        store.batch(np.arange(size))
    assert len(pool) <= pool.max_layouts * pool.max_sets


def test_batch_out_must_be_contiguous_and_of_the_layout(tmp_path, source):
    store = prepare(source, CONFIG, cache_dir=tmp_path / "cache", progress=False)
    layout = store.batch_layout(3)
    strided = {key: np.zeros((2 * shape[0], *shape[1:]), dtype)[::2] for key, (shape, dtype) in layout.items()}
    with pytest.raises(ParameterError, match=r"out\['X'\]: not C-contiguous"):
        store.batch([0, 1, 2], out=strided)
    wrong = {key: np.zeros(shape, dtype) for key, (shape, dtype) in layout.items()}
    wrong["X"] = np.zeros((3, 4, 16, 16), np.float64)
    with pytest.raises(ValueError, match=r"out\['X'\]: shape \(3, 4, 16, 16\), dtype float64; expected"):
        store.batch([0, 1, 2], out=wrong)
    out = {key: np.zeros(shape, dtype) for key, (shape, dtype) in layout.items()}
    got = store.batch([0, 1, 2], out=out)
    assert got["X"] is out["X"]
    np.testing.assert_array_equal(out["X"], store.batch([0, 1, 2], reuse=False)["X"])
    assert np.abs(out["X"]).sum() > 0


def test_split_stores_serve_only_their_groups(tmp_path, source):
    store = prepare(source, CONFIG, cache_dir=tmp_path / "cache", progress=False)
    train, val = store.split(0.25, by="region", seed=1)
    whole = store.grouped_data()
    for part in (train, val):
        chosen = part.group_indices
        assert len(part) == len(chosen) == part.info()["n_groups"]
        grouped = part.grouped_data()
        np.testing.assert_array_equal(grouped["nn_indices"], whole["nn_indices"][chosen])
        np.testing.assert_array_equal(grouped["X_full"], whole["X_full"][chosen])
        np.testing.assert_array_equal(grouped["coords_offsets"], whole["coords_offsets"][chosen])
        assert part.container(backend="numpy").X.shape[0] == len(chosen)
        batch = part.batch([0, len(part) - 1])
        np.testing.assert_array_equal(batch["group_index"], chosen[[0, -1]])
        np.testing.assert_array_equal(batch["X"], store.batch(chosen[[0, -1]], reuse=False)["X"])
    assert not set(train.group_indices) & set(val.group_indices)
    assert not set(train.groups.ravel()) & set(val.groups.ravel())  # region split: no shared pattern
    with pytest.raises(GroupIndexError, match="1-D sequence of ints"):
        val.batch([0.7])
    with pytest.raises(GroupIndexError, match="out of range"):
        val.batch([len(val)])
    inner_train, inner_val = train.split(0.5, by="random", seed=0)
    assert set(inner_train.group_indices) | set(inner_val.group_indices) == set(train.group_indices)
    restored = pickle.loads(pickle.dumps(val))
    np.testing.assert_array_equal(restored.group_indices, val.group_indices)


def test_closed_store_refuses_use(tmp_path, source):
    with prepare(source, CONFIG, cache_dir=tmp_path / "cache", progress=False) as store:
        assert len(store) == 120
    assert store.closed
    with pytest.raises(StoreClosedError, match="the store is closed"):
        store.batch([0])
    with pytest.raises(StoreError):
        len(store)
    store.close()  # idempotent
    assert "closed" in repr(store)


def test_gather_threads_survive_callers_with_different_thread_counts(tmp_path, source, monkeypatch):
    from ptychodata.store import _batch, _threads

    monkeypatch.setattr(_threads, "_MIN_THREAD_BYTES", 1)
    monkeypatch.setattr(_batch, "CACHE_BYTES", 4 * 16 * 16 * 4)
    store = prepare(source, CONFIG, cache_dir=tmp_path / "cache", progress=False)
    expected = store.batch(np.arange(40), reuse=False)["X"]
    errors = []

    def work(threads: int) -> None:
        try:
            for _ in range(60):
                got = store.batch(np.arange(40), reuse=False, threads=threads)["X"]
                if not np.array_equal(got, expected):
                    errors.append("wrong batch")
        except Exception as exc:  # noqa: BLE001 - collected and reported below
            errors.append(repr(exc))

    workers = [threading.Thread(target=work, args=(threads,)) for threads in (2, 3, 4, 2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []


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
    assert "X.npy" in materialized.grouping.files and "X.npy" not in plain.grouping.files
    assert materialized.frames.build_id == plain.frames.build_id  # frames shared
    index = [5, 9, 2]
    np.testing.assert_allclose(materialized.batch(index)["X"], plain.batch(index, reuse=False)["X"], rtol=1e-6)


def test_reuse_does_not_rebuild(tmp_path, source):
    cache = tmp_path / "cache"
    first = prepare(source, CONFIG, cache_dir=cache, progress=False)
    again = prepare(source, CONFIG, cache_dir=cache, progress=False)
    assert build_ids(again) == build_ids(first)
    reopened = open_store(first.path)
    assert build_ids(reopened) == build_ids(first)
    assert open_store(frames_slot(first)).path == first.path  # a frames store with one grouping
    assert build_ids(open_store(first.info()["build_path"])) == build_ids(first)  # one build, by its path
    with pytest.raises(StoreNotFoundError, match="not a prepared store"):
        open_store(tmp_path)


def test_new_grouping_reuses_frames(tmp_path, source):
    cache = tmp_path / "cache"
    first = prepare(source, CONFIG, cache_dir=cache, progress=False)
    other = prepare(source, GroupingConfig(gridsize=1, n_groups=50, seed=3), cache_dir=cache, progress=False)
    assert other.frames.build_id == first.frames.build_id
    assert other.grouping.build_id != first.grouping.build_id
    assert len(other) == 50 and other.C == 1
    with pytest.raises(StoreError, match="2 groupings"):
        open_store(frames_slot(first))


def test_modified_source_is_rebuilt(tmp_path, source, scan):
    cache = tmp_path / "cache"
    first = prepare(source, CONFIG, cache_dir=cache, progress=False)
    changed = simulate(n_points=120, N=16, seed=12, pattern="jittered")
    time.sleep(0.01)
    changed.save(source)
    second = prepare(source, CONFIG, cache_dir=cache, progress=False)
    assert second.frames.build_id != first.frames.build_id
    np.testing.assert_array_equal(second.patterns, changed.diffraction)
    np.testing.assert_array_equal(first.patterns, scan.diffraction)  # the open reader keeps its build


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
    np.testing.assert_allclose(verified.patterns, data["diff3d"])


def test_truncated_file_raises_and_prepare_rebuilds(tmp_path, source):
    cache = tmp_path / "cache"
    store = prepare(source, CONFIG, cache_dir=cache, progress=False)
    patterns = Path(store.info()["frames_path"]) / "patterns.npy"
    store.close()
    with open(patterns, "r+b") as handle:
        handle.truncate(patterns.stat().st_size - 100)
    with pytest.raises(StoreError, match="patterns.npy.*truncated"):
        open_store(store.path)
    rebuilt = prepare(source, CONFIG, cache_dir=cache, progress=False)
    # the same source makes the same build id: the damaged build was replaced by a whole one
    assert rebuilt.frames.build_id == store.frames.build_id
    assert patterns.stat().st_size == rebuilt.frames.files["patterns.npy"].bytes
    np.testing.assert_array_equal(rebuilt.patterns[:], ScanData.load(source).diffraction)
    groups_file = Path(rebuilt.info()["build_path"]) / "groups.npy"
    rebuilt.close()
    groups_file.write_bytes(groups_file.read_bytes()[:-8])
    with pytest.raises(StoreError, match="groups.npy"):
        open_store(rebuilt.path)


def test_schema_change_rebuilds(tmp_path, source):
    cache = tmp_path / "cache"
    store = prepare(source, CONFIG, cache_dir=cache, progress=False)
    manifest_path = Path(store.info()["frames_path"]) / "manifest.json"
    store.close()
    manifest = json.loads(manifest_path.read_text())
    manifest["schema_version"] = 0
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="schema version 0"):
        open_store(store.path)
    rebuilt = prepare(source, CONFIG, cache_dir=cache, progress=False)
    assert rebuilt.frames.schema_version == SCHEMA_VERSION
    assert json.loads(manifest_path.read_text())["schema_version"] == SCHEMA_VERSION


def test_multi_source_store_keeps_probes_and_scales(tmp_path):
    a = simulate(n_points=60, N=16, seed=1, probe="disk")
    b = simulate(n_points=80, N=16, seed=2, probe="gaussian", pattern="fermat")
    b = b.with_(diffraction=np.asarray(b.diffraction) * np.float32(7.0))
    store = prepare([a, b.save(tmp_path / "b.npz")], CONFIG, cache_dir=tmp_path / "cache", progress=False)
    assert store.n_experiments == 2 and len(store) == 140 and store.patterns.shape[0] == 140
    groups, experiment = store.groups, store.group_experiment
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
    rows = np.array([139, 0, 138, 1, 75])  # experiments out of order: each row its own experiment's probe
    mixed = store.batch(rows)
    for row, k in enumerate(mixed["experiment_id"].tolist()):
        np.testing.assert_array_equal(mixed["probe"][row], store.probe(k))
    probes = store.batch(rows, layout="ptycho_torch")["probe"]  # each experiment's, normalised
    expected = [1, 0, 1, 0, 1]
    for row, k in enumerate(expected):
        np.testing.assert_array_equal(probes[row], probes[expected.index(k)])
    assert not np.array_equal(probes[0], probes[1])
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
    from ptychodata.store import _batch, _threads

    monkeypatch.setattr(_batch, "CACHE_BYTES", 3 * 4 * 16 * 16 * 4)  # runs of 3 groups
    monkeypatch.setattr(_threads, "_MIN_THREAD_BYTES", 1)  # threads even for tiny batches
    a = simulate(n_points=60, N=16, seed=1)
    b = simulate(n_points=50, N=16, seed=2, probe="gaussian")
    store = open_store(prepare([a, b], CONFIG, cache_dir=tmp_path / "cache", progress=False).path, threads=3)
    patterns, groups = store.patterns, store.groups
    scales = np.asarray(store.x_scale, np.float32)[store.group_experiment]
    rng = np.random.default_rng(0)
    for size in (1, 2, 7, 31, 110):
        index = rng.permutation(len(store))[:size]
        expected = patterns[groups[index]] * scales[index][:, None, None, None]
        threaded = store.batch(index, reuse=False)
        np.testing.assert_array_equal(threaded["X"], expected)
        np.testing.assert_array_equal(store.batch(index, reuse=False, threads=1)["X"], expected)
    assert store._gatherer._threads._executor is not None  # the batches above did use the gather threads


def test_different_pattern_sizes_are_refused(tmp_path):
    with pytest.raises(ScanDataError, match="different pattern sizes .*N=16.*N=32"):
        prepare([simulate(n_points=20, N=16, seed=1), simulate(n_points=20, N=32, seed=1)], CONFIG,
                cache_dir=tmp_path, progress=False)


def test_intensity_sources_store_amplitudes(tmp_path, scan):
    counts = np.round(np.asarray(scan.diffraction, np.float64) ** 2 * 100).astype(np.uint32)
    with pytest.warns(UserWarning, match="intensity=True"):
        source = ScanData.from_arrays(diffraction=counts, xcoords=scan.xcoords, ycoords=scan.ycoords,
                                      probe=scan.probe, check_values=False)
    path = source.save(tmp_path / "counts.npz")
    # integer patterns are recognised as counts when the file is read: no intensity= needed
    store = prepare(path, CONFIG, cache_dir=tmp_path / "cache", progress=False)
    np.testing.assert_allclose(store.patterns, np.sqrt(counts), rtol=1e-6)
    np.testing.assert_allclose(store.amplitude_sums, np.sqrt(counts.astype(np.float64)).sum(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_allclose(store.energies, counts.sum(axis=(1, 2)), rtol=1e-6)


def test_intensity_true_on_a_counts_file_converts_once(tmp_path, scan):
    counts = np.round(np.asarray(scan.diffraction, np.float64) ** 2 * 100).astype(np.uint32)
    with pytest.warns(UserWarning, match="intensity=True"):
        source = ScanData.from_arrays(diffraction=counts, xcoords=scan.xcoords, ycoords=scan.ycoords,
                                      probe=scan.probe, check_values=False)
    path = source.save(tmp_path / "counts.npz")
    store = prepare(path, CONFIG, cache_dir=tmp_path / "cache", progress=False, intensity=True)
    np.testing.assert_allclose(store.patterns, np.sqrt(counts), rtol=1e-6)
    np.testing.assert_allclose(store.amplitude_sums, np.sqrt(counts.astype(np.float64)).sum(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_allclose(store.energies, counts.sum(axis=(1, 2)), rtol=1e-6)


def test_store_pickles_its_build_not_its_path(tmp_path, source, scan):
    cache = tmp_path / "cache"
    store = prepare(source, CONFIG, cache_dir=cache, progress=False)
    blob = pickle.dumps(store)
    assert len(blob) < 1000
    np.testing.assert_array_equal(pickle.loads(blob).batch([4])["X"], store.batch([4], reuse=False)["X"])
    time.sleep(0.01)
    simulate(n_points=120, N=16, seed=99, pattern="jittered").save(source)
    rebuilt = prepare(source, CONFIG, cache_dir=cache, progress=False)
    assert rebuilt.path == store.path and rebuilt.build_id != store.build_id
    again = pickle.loads(blob)  # e.g. a DataLoader worker started after the rebuild
    assert build_ids(again) == build_ids(store)
    np.testing.assert_array_equal(again.patterns, scan.diffraction)
    again.close()
    store.close()
    from ptychodata.store._cache import prune_cache

    assert prune_cache(cache) == 2  # no reader holds the old builds any more
    with pytest.raises(StoreNotFoundError, match="no such store build"):
        pickle.loads(blob)


def test_old_builds_stay_while_read_and_go_when_unread(tmp_path, source):
    from ptychodata.store._cache import prune_cache, remove_store

    cache = tmp_path / "cache"
    reader = prepare(source, CONFIG, cache_dir=cache, progress=False)
    kept = reader.batch([0, 5], reuse=False)
    time.sleep(0.01)
    simulate(n_points=120, N=16, seed=98, pattern="jittered").save(source)
    new = prepare(source, CONFIG, cache_dir=cache, progress=False)
    assert Path(reader.info()["frames_path"]).is_dir()  # held by the reader
    assert prune_cache(cache) == 0
    np.testing.assert_array_equal(reader.batch([0, 5])["X"], kept["X"])
    with pytest.raises(StoreError, match="in use by a reader"):
        remove_store(frames_slot(new))
    reader.close()
    assert prune_cache(cache) == 2  # the old frames and grouping builds
    assert len(list((frames_slot(new) / "builds").iterdir())) == 1
    remove_store(frames_slot(new), force=True)  # a forced removal: open readers keep their mapped data
    np.testing.assert_array_equal(new.batch([1])["X"], new.batch([1], reuse=False)["X"])
    assert not frames_slot(new).exists()


def test_in_memory_sources_are_keyed_by_everything_they_store(tmp_path, scan):
    cache = tmp_path / "cache"
    base = prepare(scan, CONFIG, cache_dir=cache, progress=False)
    variants = {
        "scan_index": scan.with_(scan_index=np.arange(scan.n_points)),
        "start positions": scan.with_(xcoords_start=scan.xcoords + 0.5),
        "Y": scan.with_(Y=np.ones((scan.n_points, 16, 16), np.complex64)),
        "metadata": scan.with_(metadata={"nphotons": 1e6}),
        "probe": scan.with_(probe=scan.probe * 2),
    }
    for name, variant in variants.items():
        other = prepare(variant, CONFIG, cache_dir=cache, progress=False)
        assert other.path != base.path, name
    assert prepare(scan.with_(), CONFIG, cache_dir=cache, progress=False).path == base.path


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


# ---------------------------------------------------------------------- real-file fields
def test_a_store_without_a_probe_serves_batches_without_one(tmp_path, scan):
    no_probe = ScanData.from_arrays(diffraction=scan.diffraction, xcoords=scan.xcoords, ycoords=scan.ycoords)
    store = prepare(no_probe, CONFIG, cache_dir=tmp_path / "cache", progress=False)
    assert not store.has_probe and store.probe(0) is None
    batch = store.batch([0, 1, 2])
    assert "probe" not in batch and "probe" not in store.batch_layout(3)
    np.testing.assert_array_equal(batch["X"], prepare(scan, CONFIG, cache_dir=tmp_path / "cache",
                                                      progress=False).batch([0, 1, 2], reuse=False)["X"])
    assert store.grouped_data()["X_full"].shape == (120, 16, 16, 4)
    with pytest.raises(StoreError, match="has no probe"):
        store.container()
    with pytest.raises(StoreError, match="no probe"):
        store.ptycho_torch_constants()


def test_bad_pixel_masks_are_stored_per_experiment_and_carried_by_batches(tmp_path, scan):
    mask = np.ones((16, 16), bool)
    mask[3, 5] = mask[10, 0] = False
    diffraction = np.array(scan.diffraction)
    diffraction[:, ~mask] = 0
    masked = scan.with_(diffraction=diffraction, mask=mask)
    other = simulate(n_points=50, N=16, seed=4)  # no mask: all pixels usable
    store = prepare([masked, other], CONFIG, cache_dir=tmp_path / "cache", progress=False)
    np.testing.assert_array_equal(store.mask(0), mask)
    np.testing.assert_array_equal(store.mask(1), np.ones((16, 16), bool))
    index = np.array([0, len(store) - 1])
    batch = store.batch(index)
    assert batch["mask"].dtype == np.bool_ and batch["mask"].shape == (2, 16, 16)
    np.testing.assert_array_equal(batch["mask"][0], mask)
    np.testing.assert_array_equal(batch["mask"][1], True)
    assert not batch["X"][0][:, ~mask].any()  # bad pixels hold 0
    assert store.frames.experiments[0].has_mask and not store.frames.experiments[1].has_mask
    assert "mask" not in prepare(scan, CONFIG, cache_dir=tmp_path / "cache", progress=False).batch([0])


def test_load_options_shape_the_store_and_its_key(tmp_path, scan, source):
    cache = tmp_path / "cache"
    whole = prepare(source, CONFIG, cache_dir=cache, progress=False)
    cropped = prepare(source, CONFIG, cache_dir=cache, progress=False, load_options={"crop": 12, "shift": False})
    assert cropped.N == 12 and whole.N == 16 and cropped.path != whole.path
    np.testing.assert_array_equal(cropped.patterns, np.asarray(scan.diffraction)[:, 2:14, 2:14])
    again = prepare(source, CONFIG, cache_dir=cache, progress=False, load_options={"shift": False, "crop": 12})
    assert build_ids(again) == build_ids(cropped)
    assert cropped.frames.load_options == {"crop": 12, "shift": False}
    with pytest.raises(ParameterError, match="pass intensity= to prepare itself"):
        prepare(source, CONFIG, cache_dir=cache, progress=False, load_options={"intensity": True})


def test_a_counts_file_is_recognised_and_converted_once(tmp_path, scan):
    counts = np.round(np.asarray(scan.diffraction, np.float64) ** 2 * 100).astype(np.uint32)
    with pytest.warns(UserWarning):
        path = ScanData.from_arrays(diffraction=counts, xcoords=scan.xcoords, ycoords=scan.ycoords,
                                    probe=scan.probe, check_values=False).save(tmp_path / "counts.npz")
    with pytest.warns(UserWarning, match="counts"):
        store = prepare(path, CONFIG, cache_dir=tmp_path / "cache", progress=False)
    np.testing.assert_allclose(store.patterns, np.sqrt(counts), rtol=1e-6)
    recorded = store.info()["experiments"][0]["metadata"]
    assert recorded["nphotons"] == pytest.approx(counts.sum(axis=(1, 2)).mean(), rel=1e-6)
    assert store.intensity_scale[0] == pytest.approx(np.sqrt(recorded["nphotons"]) / 8)


def test_groups_are_computed_once_beside_the_frames_build_and_match_a_fresh_grouping(tmp_path, monkeypatch):
    from ptychodata.grouping import group
    from ptychodata.store import _grouping_build

    calls = []
    real = _grouping_build.experiment_groups

    def counting(positions, names, config):
        calls.append(threading.current_thread().name)
        return real(positions, names, config)

    monkeypatch.setattr(_grouping_build, "experiment_groups", counting)
    a = simulate(n_points=60, N=16, seed=1)
    b = simulate(n_points=80, N=16, seed=2, pattern="fermat")
    config = GroupingConfig(gridsize=2, neighbor_count=6, seed=5, n_groups=100)
    store = prepare([a, b], config, cache_dir=tmp_path / "cache", progress=False)
    assert len(calls) == 1 and calls[0].startswith("ptychodata-grouping")  # on the pool, not again after
    # What a grouping of the stored positions makes, experiment by experiment (n_groups shared 43 / 57).
    expected = real([a.positions, b.positions], ["a", "b"], config)
    assert [len(g) for g in expected] == [43, 57]
    np.testing.assert_array_equal(store.groups, np.concatenate([expected[0], expected[1] + 60]))
    np.testing.assert_array_equal(expected[0], group(a.positions, replace(config, n_groups=43)))
    # A new grouping of the same frames build is made after it, on this thread.
    prepare([a, b], replace(config, seed=6), cache_dir=tmp_path / "cache", progress=False)
    assert len(calls) == 2 and not calls[1].startswith("ptychodata-grouping")


def test_groups_made_ahead_are_used_only_for_the_positions_they_were_made_from():
    from concurrent.futures import Future

    from ptychodata.store._grouping_build import GroupsAhead

    done = Future()
    done.set_result([np.zeros((3, 4), np.int64)])
    positions = [np.arange(10.0).reshape(5, 2)]
    ahead = GroupsAhead(positions, done)
    assert ahead.result_for([positions[0].copy()])[0].shape == (3, 4)
    moved = positions[0].copy()
    moved[2, 1] += 0.5
    assert ahead.result_for([moved]) is None
    assert ahead.result_for([positions[0], positions[0]]) is None


def test_a_bad_scan_found_while_grouping_ahead_names_its_source(tmp_path):
    small = simulate(n_points=8, N=16, seed=1).save(tmp_path / "small.npz")
    config = GroupingConfig(gridsize=3, neighbor_count=9, seed=0)
    with pytest.raises(ScanDataError, match=r"small\.npz: key 'xcoords': the scan has 8 points, fewer than C="):
        prepare(small, config, cache_dir=tmp_path / "cache", progress=False)
