"""Datasets of many scans: one build per scan, composed by reference, stable under edits."""

import os
import pickle

import numpy as np
import pytest

from ptychodata import Dataset, DatasetSpec, GroupingConfig, open_dataset, prepare_scan, simulate
from ptychodata.dataset import scan_seed
from ptychodata.errors import ParameterError, ScanFileNotFoundError, ScanFormatError, StoreNotFoundError

CONFIG = GroupingConfig(gridsize=2, neighbor_count=6, seed=11)


@pytest.fixture(scope="module")
def scan_files(tmp_path_factory):
    """Four small simulated scans of one N, and one of another N."""
    root = tmp_path_factory.mktemp("scans")
    paths = {}
    for name, seed, points, N in (("a", 1, 36, 16), ("b", 2, 49, 16), ("c", 3, 30, 16), ("d", 4, 25, 16), ("n24", 5, 25, 24)):
        paths[name] = root / f"{name}.npz"
        simulate(points, N, seed=seed, progress=False).save(paths[name])
    return paths


def _files_state(cache, build):
    """inode and mtime of every file of a scan's builds."""
    slot = cache / build.grouping_path
    frames = slot.parent.parent / "builds" / build.frames_build_id
    grouping = slot / "builds" / build.grouping_build_id
    return {p: (p.stat().st_ino, p.stat().st_mtime_ns) for d in (frames, grouping) for p in sorted(d.iterdir())}


def test_a_scan_in_a_dataset_is_the_scan_prepared_alone(tmp_path, scan_files):
    spec = DatasetSpec(CONFIG)
    alone = prepare_scan(scan_files["b"], spec, cache_dir=tmp_path / "alone")
    dataset = Dataset.create("lab", CONFIG, cache_dir=tmp_path / "shared")
    dataset.add([scan_files["a"], scan_files["b"], scan_files["c"]])
    inside = next(build for build in dataset.scans() if build.uid == alone.uid)
    assert inside.seed == alone.seed == scan_seed(CONFIG.seed, alone.uid)
    assert (inside.frames_build_id, inside.grouping_build_id) == (alone.frames_build_id, alone.grouping_build_id)
    with alone.open(tmp_path / "alone") as one, inside.open(tmp_path / "shared") as other:
        np.testing.assert_array_equal(one.groups, other.groups)
        np.testing.assert_array_equal(one.group_centres, other.group_centres)
        np.testing.assert_array_equal(one.group_relative, other.group_relative)
        assert one.x_scale == other.x_scale and one.intensity_scale == other.intensity_scale
        np.testing.assert_array_equal(one.batch(np.arange(len(one)))["X"], other.batch(np.arange(len(other)))["X"])


def test_adding_a_scan_builds_only_it_and_leaves_the_others_untouched(tmp_path, scan_files):
    dataset = Dataset.create("grow", CONFIG, cache_dir=tmp_path)
    first = dataset.add([scan_files["a"], scan_files["b"]])
    before = {b.uid: (b, _files_state(tmp_path, b)) for b in dataset.scans()}
    second = dataset.add(scan_files["c"])
    assert second.added == [str(scan_files["c"].resolve())] and second.build_id != first.build_id
    after = {b.uid: b for b in dataset.scans()}
    for uid, (build, files) in before.items():
        assert after[uid] == build
        assert _files_state(tmp_path, after[uid]) == files
    again = dataset.add([scan_files["a"], scan_files["b"], scan_files["c"]])
    assert again.build_id == second.build_id and again.added == [] and len(again.unchanged) == 3


def test_one_composition_reached_in_two_orders_has_one_fingerprint(tmp_path, scan_files):
    one = Dataset.create("one", CONFIG, cache_dir=tmp_path)
    two = Dataset.create("two", CONFIG, cache_dir=tmp_path)
    one.add([scan_files["a"], scan_files["b"]])
    one.add(scan_files["c"])
    two.add(scan_files["c"])
    two.add([scan_files["b"], scan_files["a"], scan_files["d"]])
    two.remove(scan_files["d"].name)
    assert one.build_id == two.build_id
    assert open_dataset("one", cache_dir=tmp_path).fingerprint == one.build_id


def test_remove_writes_a_manifest_and_touches_no_pattern(tmp_path, scan_files):
    dataset = Dataset.create("rm", CONFIG, cache_dir=tmp_path)
    dataset.add([scan_files["a"], scan_files["b"]])
    two = dataset.build_id
    gone = next(b for b in dataset.scans() if b.name == "b.npz")
    files = _files_state(tmp_path, gone)
    change = dataset.remove("b.npz")
    assert change.removed == [str(scan_files["b"].resolve())]
    assert [b.name for b in dataset.scans()] == ["a.npz"]
    assert _files_state(tmp_path, gone) == files
    assert dataset.diff(two) == {
        "added": [],
        "removed": [{"uid": gone.uid, "name": "b.npz", "path": str(scan_files["b"].resolve())}],
    }
    with pytest.raises(ParameterError, match=r"nope.npz: not a scan of dataset 'rm' \(its scans: a.npz\)"):
        dataset.remove("nope.npz")


def test_bad_additions_are_named_and_leave_the_dataset_as_it_was(tmp_path, scan_files):
    dataset = Dataset.create("strict", CONFIG, cache_dir=tmp_path)
    dataset.add(scan_files["a"])
    live = dataset.build_id
    twin = tmp_path / "a-copy.npz"
    twin.write_bytes(scan_files["a"].read_bytes())
    with pytest.raises(ParameterError, match=r"a-copy.npz: the same bytes as .*a.npz, already in dataset 'strict'"):
        dataset.add(twin)
    with pytest.raises(ParameterError, match=r"n24.npz: patterns of 24×24, but the dataset's are 16×16 .*crop= or bin="):
        dataset.add(scan_files["n24"])
    with pytest.raises(ScanFileNotFoundError, match="missing.npz: no such file"):
        dataset.add([scan_files["b"], tmp_path / "missing.npz"])
    assert dataset.build_id == live
    change = dataset.add([scan_files["b"], tmp_path / "missing.npz", scan_files["n24"]], keep_going=True)
    assert change.added == [str(scan_files["b"].resolve())]
    assert sorted(os.path.basename(p) for p in change.failed) == ["missing.npz", "n24.npz"]
    assert sorted(b.name for b in dataset.scans()) == ["a.npz", "b.npz"]


def test_a_changed_source_is_removed_and_added(tmp_path, scan_files):
    path = tmp_path / "live.npz"
    path.write_bytes(scan_files["c"].read_bytes())
    dataset = Dataset.create("live", CONFIG, cache_dir=tmp_path / "cache")
    dataset.add(path)
    old = dataset.scans()[0]
    simulate(30, 16, seed=9, progress=False).save(path)
    change = dataset.add(path)
    assert change.removed == change.added == [str(path.resolve())]
    new = dataset.scans()[0]
    assert new.uid != old.uid and new.seed != old.seed


def test_the_spec_is_fixed_and_unknown_datasets_name_the_known_ones(tmp_path):
    Dataset.create("fixed", CONFIG, cache_dir=tmp_path)
    assert Dataset.create("fixed", CONFIG, cache_dir=tmp_path).spec == DatasetSpec(CONFIG)
    with pytest.raises(ParameterError, match="exists .* with another spec"):
        Dataset.create("fixed", GroupingConfig(gridsize=1, seed=11), cache_dir=tmp_path)
    with pytest.raises(StoreNotFoundError, match=r"no dataset 'other' .*datasets there: fixed"):
        open_dataset("other", cache_dir=tmp_path)
    with pytest.raises(ParameterError, match="dataset name '../x'"):
        Dataset.create("../x", CONFIG, cache_dir=tmp_path)
    with pytest.raises(ParameterError, match="config.seed=None"):
        DatasetSpec(GroupingConfig(seed=None))


def test_spec_digest_and_pickling(tmp_path):
    spec = DatasetSpec(CONFIG, {"crop": 16.0}, frames_dtype=np.float32)
    same = DatasetSpec(CONFIG, {"crop": 16}, frames_dtype="float32")
    assert spec == same and spec.digest() == same.digest()
    assert pickle.loads(pickle.dumps(spec)) == spec
    assert DatasetSpec.from_dict(spec.to_dict()) == spec
    assert DatasetSpec(CONFIG, {"crop": 12}).digest() != spec.digest()


def test_batches_of_a_dataset_are_its_scans_batches(tmp_path, scan_files):
    dataset = Dataset.create("batches", CONFIG, cache_dir=tmp_path)
    dataset.add([scan_files["a"], scan_files["b"], scan_files["c"]])
    with open_dataset("batches", cache_dir=tmp_path) as data:
        sizes = [len(store) for store in data.stores]
        assert len(data) == sum(sizes) and data.n_experiments == 3 and (data.N, data.C) == (16, 4)
        offsets = np.cumsum([0] + sizes)
        picks = np.array([offsets[2] + 1, 0, offsets[1] + 3, offsets[1], offsets[2]])
        batch = data.batch(picks)
        assert set(batch) == set(data.batch_layout(len(picks)))
        for row, index in enumerate(picks):
            k = int(np.searchsorted(offsets, index, side="right") - 1)
            local = data.stores[k].batch([index - offsets[k]], reuse=False)
            np.testing.assert_array_equal(batch["X"][row], local["X"][0])
            np.testing.assert_array_equal(batch["coords_relative"][row], local["coords_relative"][0])
            assert batch["experiment_id"][row] == k and batch["group_index"][row] == index
            patterns = sum(data.stores[j].n_patterns for j in range(k))
            np.testing.assert_array_equal(batch["nn_indices"][row], local["nn_indices"][0] + patterns)
        clone = pickle.loads(pickle.dumps(data))
        np.testing.assert_array_equal(clone.batch(picks)["X"], batch["X"])
        clone.close()



def test_a_batch_shared_among_gather_threads_is_each_scans_own_gather(tmp_path, scan_files, monkeypatch):
    from ptychodata.dataset import _view
    from ptychodata.store import _threads

    monkeypatch.setattr(_threads, "_MIN_THREAD_BYTES", 1)  # threads even for a small batch
    monkeypatch.setattr(_view, "CACHE_BYTES", 5 * 4 * 16 * 16 * 4)  # pieces of 5 groups: runs of a scan cut
    dataset = Dataset.create("threads", CONFIG, cache_dir=tmp_path)
    dataset.add([scan_files["a"], scan_files["b"], scan_files["c"], scan_files["d"]])
    with open_dataset("threads", cache_dir=tmp_path) as data:
        offsets = np.cumsum([0] + [len(store) for store in data.stores])
        shuffled = np.random.default_rng(3).permutation(len(data))
        for picks in (shuffled, shuffled[shuffled < offsets[1]][::-1]):  # every scan's groups; one scan's
            batch = data.batch(picks, threads=3)
            assert data._threads._executor is not None, "the batch was shared among threads"
            for row, index in enumerate(picks):
                k = int(np.searchsorted(offsets, index, side="right") - 1)
                local = data.stores[k].batch([index - offsets[k]], reuse=False)
                np.testing.assert_array_equal(batch["X"][row], local["X"][0])
                np.testing.assert_array_equal(batch["probe"][row], local["probe"][0])
                assert batch["experiment_id"][row] == k

def test_each_row_of_a_dataset_batch_carries_its_own_scans_probe(tmp_path):
    from ptychodata import ScanData

    paths = []
    for k in range(3):  # three scans whose probes differ
        scan = simulate(30, 16, seed=k, progress=False)
        probe = (scan.probe * np.exp(1j * (k + 1) * 0.7)).astype(np.complex64)
        paths.append(ScanData.from_arrays(diffraction=scan.diffraction, xcoords=scan.xcoords, ycoords=scan.ycoords,
                                          probe=probe).save(tmp_path / f"p{k}.npz"))
    Dataset.create("probes", CONFIG, cache_dir=tmp_path / "cache").add(paths)
    with open_dataset("probes", cache_dir=tmp_path / "cache") as data:
        picks = np.random.default_rng(5).permutation(len(data))
        batch = data.batch(picks)
        for row, k in enumerate(batch["experiment_id"].tolist()):
            np.testing.assert_array_equal(batch["probe"][row], data.probe(k))
        assert len({data.probe(k).tobytes() for k in range(3)}) == 3


def test_splits_keep_their_groups_when_scans_are_added(tmp_path, scan_files):
    dataset = Dataset.create("splits", CONFIG, cache_dir=tmp_path)
    dataset.add([scan_files["a"], scan_files["b"], scan_files["c"]])

    def val_groups(by):
        with open_dataset("splits", cache_dir=tmp_path) as data:
            train, val = data.split(0.3, by=by, seed=4)
            chosen = {}
            for view, label in ((train, "train"), (val, "val")):
                batch = view.batch(np.arange(len(view)))
                for k, g in zip(batch["experiment_id"], batch["group_index"]):
                    uid = data.uids[k]
                    chosen.setdefault((uid, label), set()).add(int(g - data._group_offsets[k]))
                view.close()
            assert not set(train.group_indices) & set(val.group_indices)
            return chosen

    for by in ("region", "scan"):
        before = val_groups(by)
        dataset.add(scan_files["d"])
        after = val_groups(by)
        for key, groups in before.items():
            assert after[key] == groups, (by, key)
        dataset.remove("d.npz")


def test_the_host_loader_serves_every_group_of_a_dataset_once(tmp_path, scan_files):
    torch = pytest.importorskip("torch")
    from ptychodata.torch import make_loader

    dataset = Dataset.create("loader", CONFIG, cache_dir=tmp_path)
    dataset.add([scan_files["a"], scan_files["b"]])
    with open_dataset("loader", cache_dir=tmp_path) as data:
        seen = []
        for batch in make_loader(data, batch_size=8, shuffle=True, seed=0, num_workers=0):
            seen.extend(batch["group_index"].tolist())
            assert isinstance(batch["X"], torch.Tensor) and batch["X"].shape[1:] == (4, 16, 16)
        assert sorted(seen) == list(range(len(data)))


def test_build_ids_are_the_same_in_every_cache(tmp_path, scan_files):
    spec = DatasetSpec(CONFIG)
    one = prepare_scan(scan_files["d"], spec, cache_dir=tmp_path / "one")
    two = prepare_scan(scan_files["d"], spec, cache_dir=tmp_path / "two")
    assert (one.frames_build_id, one.grouping_build_id) == (two.frames_build_id, two.grouping_build_id)
    again = prepare_scan(scan_files["d"], spec, cache_dir=tmp_path / "one")
    assert again.grouping_build_id == one.grouping_build_id
    assert pickle.loads(pickle.dumps(one)) == one


def test_a_loader_resumes_on_a_grown_dataset_without_repeating_a_group(tmp_path, scan_files):
    pytest.importorskip("torch")
    from ptychodata.errors import DatasetChangedError
    from ptychodata.torch import make_loader

    dataset = Dataset.create("resume", CONFIG, cache_dir=tmp_path)
    dataset.add([scan_files["a"], scan_files["b"]])
    seen = set()
    with open_dataset("resume", cache_dir=tmp_path) as data:
        loader = make_loader(data, batch_size=8, seed=3, num_workers=0)
        for batch, _ in zip(loader, range(3)):
            seen |= {(data.uids[e], int(g - data._group_offsets[e])) for e, g in
                     zip(batch["experiment_id"].tolist(), batch["group_index"].tolist())}
        state = loader.state_dict()
    assert state["fingerprint"] == dataset.build_id and len(seen) == 24
    dataset.add(scan_files["c"])
    with open_dataset("resume", cache_dir=tmp_path) as grown:
        loader = make_loader(grown, batch_size=8, seed=3, num_workers=0)
        with pytest.raises(DatasetChangedError, match="scans added"):
            loader.load_state_dict(state)
        loader.load_state_dict(state, on_dataset_change="continue")
        rest = [(grown.uids[e], int(g - grown._group_offsets[e])) for batch in loader
                for e, g in zip(batch["experiment_id"].tolist(), batch["group_index"].tolist())]
    assert len(rest) == len(set(rest)) and not set(rest) & seen
    new_uid = next(b.uid for b in dataset.scans() if b.name == "c.npz")
    assert any(uid == new_uid for uid, _ in rest)


def _npy_digests(cache):
    import hashlib

    return {
        p.relative_to(cache).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(cache.rglob("*.npy"))
    }


def test_serial_and_process_pool_preparation_give_the_same_bytes(tmp_path, scan_files):
    sources = [scan_files["a"], scan_files["b"], scan_files["c"]]
    serial = Dataset.create("same", CONFIG, cache_dir=tmp_path / "serial")
    serial.add(sources)
    pooled = Dataset.create("same", CONFIG, cache_dir=tmp_path / "pool")
    pooled.add(sources, executor=2)
    assert pooled.build_id == serial.build_id
    assert [b.grouping_build_id for b in pooled.scans()] == [b.grouping_build_id for b in serial.scans()]
    assert _npy_digests(tmp_path / "pool") == _npy_digests(tmp_path / "serial")


def test_a_failure_on_an_executor_is_named_and_the_others_are_built(tmp_path, scan_files):
    from concurrent.futures import ThreadPoolExecutor

    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not a scan")
    dataset = Dataset.create("faults", CONFIG, cache_dir=tmp_path / "cache")
    with ThreadPoolExecutor(2) as pool:
        with pytest.raises(ScanFormatError, match="broken.npz: not a readable .npz"):
            dataset.add([scan_files["a"], broken], executor=pool)
        assert dataset.build_id is None
        change = dataset.add([scan_files["a"], broken, scan_files["b"]], executor=pool, keep_going=True)
    assert list(change.failed) == [str(broken.resolve())] and len(change.added) == 2


def test_a_dask_cluster_prepares_the_same_builds(tmp_path, scan_files):
    distributed = pytest.importorskip("distributed")
    sources = [scan_files["a"], scan_files["b"]]
    serial = Dataset.create("dask", CONFIG, cache_dir=tmp_path / "serial")
    serial.add(sources)
    on_dask = Dataset.create("dask", CONFIG, cache_dir=tmp_path / "dask")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with distributed.Client(cluster) as client:
            change = on_dask.add(sources, executor=client.get_executor())
    assert len(change.added) == 2 and on_dask.build_id == serial.build_id
    assert _npy_digests(tmp_path / "dask") == _npy_digests(tmp_path / "serial")


ADD_ONE = """
import sys
from ptychodata import Dataset
Dataset(sys.argv[1], sys.argv[2]).add(sys.argv[3])
"""


def test_processes_adding_at_once_lose_no_scan(tmp_path, scan_files):
    import subprocess
    import sys

    Dataset.create("crowd", CONFIG, cache_dir=tmp_path)
    names = ["a", "b", "c", "d"]
    racers = [
        subprocess.Popen([sys.executable, "-c", ADD_ONE, "crowd", str(tmp_path), str(scan_files[n])],
                         stderr=subprocess.PIPE, text=True)
        for n in names
    ]
    errors = [racer.communicate(timeout=180)[1] for racer in racers]
    assert [racer.returncode for racer in racers] == [0] * 4, errors
    assert sorted(b.name for b in Dataset("crowd", tmp_path).scans()) == [f"{n}.npz" for n in names]


def test_a_publisher_that_died_before_moving_current_is_rolled_forward(tmp_path, scan_files):
    dataset = Dataset.create("roll", CONFIG, cache_dir=tmp_path)
    dataset.add(scan_files["a"])
    live = dataset.paths.current()
    # a publisher won the successor of the live build, wrote its manifest and died
    other = Dataset.create("roll-other", CONFIG, cache_dir=tmp_path)
    other.add([scan_files["a"], scan_files["b"]])
    orphan = other.manifest()
    (dataset.paths.build(orphan.build_id)).write_text(other.paths.build(orphan.build_id).read_text().replace(
        '"name": "roll-other"', '"name": "roll"'))
    (dataset.paths.root / "successors" / str(live[1])).write_text(orphan.build_id + "\n")
    dataset.add(scan_files["c"])
    assert sorted(b.name for b in dataset.scans()) == ["a.npz", "b.npz", "c.npz"]
    assert dataset.paths.current()[1] == live[1] + 2


DESCRIPTORS = """
import os, resource, sys
import numpy as np
from ptychodata import open_dataset
from ptychodata.errors import StoreError
n_scans, spare = int(sys.argv[2]), int(sys.argv[3])
baseline = len(os.listdir("/proc/self/fd"))
resource.setrlimit(resource.RLIMIT_NOFILE, (baseline + spare, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
try:
    with open_dataset("fds", cache_dir=sys.argv[1]) as data:
        batch = data.batch(np.arange(len(data)))
        print("served", len(batch["X"]), "groups of", data.n_experiments, "scans")
except StoreError as exc:
    print(exc)
"""


def test_an_open_scan_holds_one_descriptor_and_running_out_names_the_limit(tmp_path):
    import subprocess
    import sys

    n_scans = 40
    dataset = Dataset.create("fds", CONFIG, cache_dir=tmp_path)
    dataset.add([simulate(12, 16, seed=100 + k, progress=False).save(tmp_path / f"s{k}.npz") for k in range(n_scans)])
    run = [sys.executable, "-c", DESCRIPTORS, str(tmp_path), str(n_scans)]
    enough = subprocess.run([*run, str(n_scans + 2)], capture_output=True, text=True)
    assert enough.stdout.startswith("served") and f"of {n_scans} scans" in enough.stdout, enough.stdout + enough.stderr
    short = subprocess.run([*run, str(n_scans // 2)], capture_output=True, text=True)
    assert "ran out of file descriptors after opening" in short.stdout, short.stdout + short.stderr
    assert "(ulimit -n" in short.stdout


def test_the_ptycho_torch_layout_of_a_dataset_is_each_scans_own(tmp_path, scan_files):
    dataset = Dataset.create("pt", CONFIG, cache_dir=tmp_path)
    dataset.add([scan_files["a"], scan_files["b"]])
    with open_dataset("pt", cache_dir=tmp_path) as data:
        constants = data.ptycho_torch_constants()
        first = len(data.stores[0])
        picks = np.array([first + 2, 1, first, 0])
        batch = data.batch(picks, layout="ptycho_torch", constants=constants)
        assert set(batch) == set(data.batch_layout(4, layout="ptycho_torch"))
        for row, index in enumerate(picks):
            k = int(index >= first)
            local = data.stores[k].batch([index - k * first], layout="ptycho_torch", constants=constants[k])
            for key in ("images", "coords_relative", "rms_scaling_constant", "probe", "probe_scaling"):
                np.testing.assert_array_equal(batch[key][row], local[key][0], err_msg=key)
            assert batch["experiment_id"][row] == k
        assert not np.array_equal(batch["rms_scaling_constant"][0], batch["rms_scaling_constant"][1])
        pytest.importorskip("tensordict")
        from ptychodata.torch import make_loader

        served = sum(len(b[0]["images"]) for b in make_loader(data, batch_size=8, num_workers=0, layout="ptycho_torch"))
        assert served == len(data)


def test_builds_a_dataset_lists_survive_prune_and_are_not_removed(tmp_path, scan_files):
    from ptychodata.errors import StoreError
    from ptychodata.store import prune_cache, remove_store

    path = tmp_path / "moving.npz"
    path.write_bytes(scan_files["a"].read_bytes())
    dataset = Dataset.create("kept", CONFIG, cache_dir=tmp_path / "cache")
    dataset.add(path)
    first = dataset.build_id
    simulate(30, 16, seed=21, progress=False).save(path)  # the file changes: a new build in the same slot
    dataset.add(path)
    assert prune_cache(tmp_path / "cache") == 0
    with open_dataset("kept", cache_dir=tmp_path / "cache", build_id=first) as old:
        assert len(old) > 0 and old.batch([0])["X"].shape[0] == 1  # the earlier build still opens
    slot = (tmp_path / "cache" / dataset.scans()[0].grouping_path).parent.parent
    with pytest.raises(StoreError, match="builds a dataset lists"):
        remove_store(slot)
    info = dataset.info()
    assert info["bytes_held_only_here"] >= info["bytes"] > 0  # both builds of the changed file are held
    twin = Dataset.create("kept-too", CONFIG, cache_dir=tmp_path / "cache")
    twin.add(path)  # shares the live build
    assert 0 < dataset.info()["bytes_held_only_here"] < info["bytes_held_only_here"]


def test_a_missing_file_is_one_error_in_every_entry_point(tmp_path):
    from ptychodata import ScanData, prepare

    missing = tmp_path / "nope.npz"
    calls = [
        lambda: ScanData.load(missing),
        lambda: prepare(missing, CONFIG, cache_dir=tmp_path / "cache", progress=False),
        lambda: prepare_scan(missing, DatasetSpec(CONFIG), cache_dir=tmp_path / "cache"),
    ]
    for call in calls:
        with pytest.raises(ScanFileNotFoundError, match=r"nope.npz: no such file$"):
            call()
