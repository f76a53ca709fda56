"""GPU-resident loading of datasets of many scans: DeviceStore and make_loader(resident=True)
over a DatasetStore against the host loader of the same dataset."""

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ptychodata import Dataset, GroupingConfig, open_dataset, simulate  # noqa: E402
from ptychodata.errors import DatasetChangedError, ParameterError  # noqa: E402
from ptychodata.io import write_npz  # noqa: E402
from ptychodata.torch import DeviceStore, make_loader  # noqa: E402
from ptychodata.torch._shard import Sharding  # noqa: E402

CONFIG = GroupingConfig(gridsize=2, neighbor_count=6, seed=5)
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")),
]
# (points, seed, brightness, probe shape, probe radius): four scans of different sizes, scales and probes
SCANS = [(30, 1, 1.0, "disk", 3.0), (36, 2, 4.0, "gaussian", 4.0), (25, 3, 0.3, "disk", 5.0), (28, 4, 2.0, "gaussian", 3.5)]


def _scan(points, seed, brightness, shape, radius, **changes):
    scan = simulate(points, 16, seed=seed, probe=shape, probe_radius=radius, pattern="jittered", progress=False)
    return dataclasses.replace(scan, diffraction=scan.diffraction * brightness, **changes)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Four scan files (the second with a bad-pixel mask, so batches carry one), their
    counts as uint32 files, and two scans without a probe."""
    root = tmp_path_factory.mktemp("scans")
    made = {"plain": [], "counts": [], "no probe": []}
    for number, (points, seed, brightness, shape, radius) in enumerate(SCANS):
        mask = None
        if number == 1:
            mask = np.ones((16, 16), bool)
            mask[2:4, 5] = False
        scan = _scan(points, seed, brightness, shape, radius, mask=mask)
        made["plain"].append(scan.save(root / f"scan{number}.npz"))
        counts = np.round(scan.diffraction.astype(np.float64) ** 2 * 50 / brightness**2).astype(np.uint32)
        arrays = {"diff3d": counts, "xcoords": scan.xcoords, "ycoords": scan.ycoords, "probeGuess": scan.probe,
                  "objectGuess": scan.object}
        made["counts"].append(write_npz(root / f"counts{number}.npz", arrays))
    for number, args in enumerate(SCANS[:2]):
        made["no probe"].append(_scan(*args, probe=None).save(root / f"bare{number}.npz"))
    return made


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def dataset(files, cache):
    """The four scans as one dataset."""
    made = Dataset.create("four", CONFIG, cache_dir=cache)
    made.add(files["plain"])
    with open_dataset("four", cache_dir=cache) as data:
        yield data


def assert_same_batch(got: dict, expected: dict, device: str, Y_atol: float = 0.0) -> None:
    """Same keys in the same order, dtypes, shapes and bits (Y, cut on the device from the
    objects, to ``Y_atol``), every tensor on ``device``."""
    assert list(got) == list(expected)
    for key, value in expected.items():
        tensor, value = got[key], torch.as_tensor(value)
        assert tensor.device.type == device, key
        assert tensor.dtype == value.dtype and tensor.shape == value.shape, key
        if key == "Y":
            np.testing.assert_allclose(tensor.cpu().numpy(), value.numpy(), atol=Y_atol, err_msg=key)
        else:
            assert torch.equal(tensor.cpu(), value), f"{key} differs from the host loader's"


def _host(data, batch_size, **options):
    return make_loader(data, batch_size, pin_memory=False, background=0, **options)


def _served(loader) -> list[int]:
    return [g for batch in loader for g in batch["group_index"].tolist()]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("prescale", [True, False])
def test_resident_batches_of_a_dataset_are_the_host_loaders_bit_for_bit(dataset, device, prescale):
    data = dataset
    assert data.n_experiments == 4 and len(set(data.x_scale)) == 4
    probes = [data.probe(k) for k in range(4)]
    assert all(not np.array_equal(probes[0], probe) for probe in probes[1:])
    held = DeviceStore(data, device, prescale=prescale)
    assert held.prescaled is prescale and len(held) == len(data)
    used = [np.unique(store.groups) + offset for store, offset in zip(data.stores, data.pattern_offsets)]
    assert held.frames.shape == (sum(map(len, used)), 16, 16)  # every scan's frames in one table
    host = _host(data, 16, seed=3, with_Y=True)
    resident = make_loader(held, 16, seed=3, with_Y=True, resident=True)
    assert len(resident) == len(host)
    seen = []
    for epoch in range(2):
        host.set_epoch(epoch)
        resident.set_epoch(epoch)
        for expected, got in zip(host, resident, strict=True):
            assert_same_batch(got, expected, device, Y_atol=2e-6)
            seen.extend(got["experiment_id"].tolist())
    assert "mask" in expected and not expected["mask"].all()  # one scan's mask, True for the others
    assert sorted(set(seen)) == [0, 1, 2, 3]


@pytest.mark.parametrize("device", DEVICES)
def test_a_split_of_a_dataset_holds_its_own_frames_and_serves_its_groups(dataset, device):
    train, val = dataset.split(0.3, by="region", seed=1)
    try:
        held = DeviceStore(val, device)
        assert held.frames.shape[0] == len(np.unique(held.store.groups)) < dataset.n_patterns
        index = np.random.default_rng(2).permutation(len(val))
        assert_same_batch(held.batch(index), val.batch(index, reuse=False), device)
        assert sorted(_served(make_loader(held, 8, resident=True, seed=1))) == sorted(val.group_indices.tolist())
    finally:
        train.close()
        val.close()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batching", ["random", "stratified"])
def test_weighted_epochs_and_resume_are_the_host_loaders(files, cache, device, batching):
    """Weights with fractional parts drawn anew each epoch: three epochs of the same groups in
    the same order; a state saved by the host loader resumes the resident one (and the reverse)
    where the host resumes; on a grown dataset both refuse it and both continue alike."""
    name = f"weighted-{batching}-{device}"  # the cache is the module's: one dataset per case
    weighted = Dataset.create(name, CONFIG, cache_dir=cache)
    weighted.add(files["plain"][:3])
    names = [path.name for path in files["plain"]]
    weighted.set_weights({names[0]: 2.5, names[2]: 0.4}, batching=batching)
    with open_dataset(name, cache_dir=cache) as data:
        assert data.weights is not None
        host, resident = _host(data, 8, seed=7), make_loader(data, 8, seed=7, resident=True, device=device)
        for epoch in range(3):
            host.set_epoch(epoch)
            resident.set_epoch(epoch)
            expected, got = list(host), list(resident)
            assert len(got) == len(expected) == len(host)
            for one, other in zip(expected, got):
                assert_same_batch(other, one, device)
        order = _served(expected)
        assert len(order) != len(data) and len(set(order)) < len(order)  # weighted: copies, some left out
        for loader in (host, resident):
            loader.set_epoch(1)
            for _ in zip(range(3), loader):
                pass
        state = host.state_dict()
        assert resident.state_dict() == state and state["consumed"] == 24
        resumed_host, resumed_resident = _host(data, 8), make_loader(data, 8, resident=True, device=device)
        for loader in (resumed_host, resumed_resident):
            loader.load_state_dict(state)
            loader.set_epoch(1)
        rest = _served(resumed_host)
        assert rest == _served(resumed_resident) and len(rest) > 0
    weighted.add(files["plain"][3])
    with open_dataset(name, cache_dir=cache) as grown:
        loaders = [_host(grown, 8, seed=7), make_loader(grown, 8, seed=7, resident=True, device=device)]
        for loader in loaders:
            with pytest.raises(DatasetChangedError, match="scans added"):
                loader.load_state_dict(state)
            loader.load_state_dict(state, on_dataset_change="continue")
        assert _served(loaders[0]) == _served(loaders[1])


@pytest.fixture(scope="module", params=["float16", "bfloat16", "uint16"])
def compact(request, files, cache):
    """A dataset of three scans stored in a 2-byte encoding (uint16: counts of counts files)."""
    dtype = request.param
    made = Dataset.create(f"compact-{dtype}", CONFIG, cache_dir=cache, frames_dtype=dtype,
                          intensity=True if dtype == "uint16" else None)
    made.add(files["counts" if dtype == "uint16" else "plain"][:3])
    with open_dataset(f"compact-{dtype}", cache_dir=cache) as data:
        yield data


@pytest.mark.parametrize("device", DEVICES)
def test_a_compact_dataset_is_held_compact_and_serves_the_host_batches(compact, device):
    data = compact
    stored = data.stores[0].frames_encoding
    assert not stored.is_identity and len(set(data.x_scale)) == 3
    held = DeviceStore(data, device)
    assert held.encoding == stored and held.frames.element_size() == 2 and not held.prescaled
    host, resident = _host(data, 16, seed=2), make_loader(held, 16, seed=2, resident=True)
    for expected, got in zip(host, resident, strict=True):
        assert_same_batch(got, expected, device)
    resident = make_loader(data, 16, seed=2, resident=True, device=device, frames="float32")
    assert resident.dataset.encoding.is_identity  # the float32 path of a compact dataset: the same bits
    for expected, got in zip(host, resident, strict=True):
        assert_same_batch(got, expected, device)


def test_scans_without_a_probe_are_refused_by_name(files, cache):
    bare = Dataset.create("bare", CONFIG, cache_dir=cache)
    bare.add([files["plain"][0], *files["no probe"]])
    with open_dataset("bare", cache_dir=cache) as data:
        assert not data.has_probe
        with pytest.raises(ParameterError, match=r"dataset 'bare': scan\(s\) bare0.npz, bare1.npz have no probe"):
            DeviceStore(data, "cpu")
        with pytest.raises(ParameterError, match="bare0.npz, bare1.npz have no probe"):
            make_loader(data, 8, resident=True, device="cpu")
        assert sorted(_served(_host(data, 8))) == list(range(len(data)))  # the host loader serves it


def test_sharding_by_scan_deals_whole_scans_and_serves_each_group_once(dataset, files, cache):
    data = dataset
    scan_of = np.searchsorted(data.group_offsets, data.group_indices, side="right") - 1
    shards = Sharding.of_store(data, "scan").shards(2)
    owned = [set(scan_of[shard].tolist()) for shard in shards]
    assert not owned[0] & owned[1] and owned[0] | owned[1] == {0, 1, 2, 3}  # whole scans, each on one rank
    patterns = np.diff(data.pattern_offsets)
    loads = sorted(int(patterns[list(scans)].sum()) for scans in owned)
    assert loads[1] - loads[0] <= patterns.max()
    loader = make_loader(data, 16, resident=True, device="cpu", shard_by="scan", seed=4)
    served = []
    for batch in loader:
        assert_same_batch(batch, data.batch(batch["group_index"].numpy(), reuse=False), "cpu")
        served.extend(batch["group_index"].tolist())
    assert sorted(served) == data.group_indices.tolist()
    state = loader.state_dict()
    assert state["fingerprint"] == data.fingerprint
    other = Dataset.create("sharded", CONFIG, cache_dir=cache)
    other.add(files["plain"][:3])
    with open_dataset("sharded", cache_dir=cache) as smaller:
        again = make_loader(smaller, 16, resident=True, device="cpu", shard_by="scan", seed=4)
        removed = next(uid for uid in data.uids if uid not in smaller.uids)
        with pytest.raises(DatasetChangedError, match=rf"added none, removed {removed} \(scan3.npz\)"):
            again.load_state_dict(state)
        with pytest.raises(ParameterError, match="cannot continue on a changed dataset"):
            again.load_state_dict(state, on_dataset_change="continue")
        again.load_state_dict(state, on_dataset_change="next_epoch")
        assert again.sampler.epoch == state["epoch"] + 1
        other.set_weights({files["plain"][0].name: 2})
        with open_dataset("sharded", cache_dir=cache) as weighted, \
                pytest.raises(ParameterError, match="has mixing weights, and shard_by='scan'"):
            make_loader(weighted, 16, resident=True, device="cpu", shard_by="scan")


def test_a_materialized_dataset_serves_its_stored_X(files, cache):
    made = Dataset.create("materialized", CONFIG, cache_dir=cache, materialize=True)
    made.add(files["plain"][1:3])
    with open_dataset("materialized", cache_dir=cache) as data:
        assert all(store.materialized_X is not None for store in data.stores)
        view = data.subset(np.random.default_rng(4).permutation(len(data))[: len(data) // 2])
        try:
            held = DeviceStore(view, "cpu")
            assert held.materialized and held.frames.shape == (len(view) * data.C, 16, 16)
            index = np.arange(len(view))[::-1]
            assert_same_batch(held.batch(index), view.batch(index, reuse=False), "cpu")
        finally:
            view.close()


def test_joined_rows_read_slices_and_rows_across_parts():
    from ptychodata.torch._joined import JoinedRows

    parts = [np.arange(n * 2).reshape(n, 2) + 100 * k for k, n in enumerate((3, 0, 4, 2))]
    whole = np.concatenate(parts)
    rows = JoinedRows(parts, np.concatenate([[0], np.cumsum([len(p) for p in parts])]))
    assert rows.shape == whole.shape and len(rows) == 9
    for chosen in (slice(None), slice(2, 6), slice(5, 5), slice(1, 9, 3)):
        np.testing.assert_array_equal(rows[chosen], whole[chosen])
    for index in ([8, 0, 3, 4, 2], [4, 5, 6], []):
        np.testing.assert_array_equal(rows[np.array(index, np.int64)], whole[np.array(index, np.int64)])
    with pytest.raises(IndexError, match="row 9 out of range for 9 rows"):
        rows[np.array([1, 9])]
    select = np.array([7, 1, 1, 4])
    picked = JoinedRows(parts, rows.offsets, select=select)
    np.testing.assert_array_equal(picked[1:4], whole[select[1:4]])
    np.testing.assert_array_equal(np.asarray(picked), whole[select])
