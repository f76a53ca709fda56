"""GPU-resident loading: DeviceStore and make_loader(resident=True) against the host loader."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ptychodata import GroupingConfig, prepare, simulate
from ptychodata.errors import GroupIndexError, ParameterError
from ptychodata.torch import DeviceStore, make_loader

CONFIG = GroupingConfig(gridsize=2, neighbor_count=6, seed=0)
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")),
]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    scan = simulate(n_points=150, N=16, seed=5, pattern="jittered")
    return prepare(scan, CONFIG, cache_dir=tmp_path_factory.mktemp("cache"), progress=False)


@pytest.fixture(scope="module")
def two_experiments(tmp_path_factory):
    """Two scans of different brightness (so two x_scales and two probes), each with stored
    ground-truth patches and no object."""
    scans = []
    for seed, scale in [(1, 1.0), (2, 3.0)]:
        scan = simulate(n_points=90, N=16, seed=seed, pattern="jittered")
        rng = np.random.default_rng(seed)
        Y = (rng.normal(size=(scan.n_points, 16, 16)) + 1j * rng.normal(size=(scan.n_points, 16, 16))).astype(np.complex64)
        scans.append(dataclasses.replace(scan, diffraction=scan.diffraction * scale, object=None, Y=Y))
    return prepare(scans, CONFIG, cache_dir=tmp_path_factory.mktemp("cache2"), progress=False)


def assert_same_batch(got: dict, expected: dict, device: str, Y_atol: float | None = None) -> None:
    """Same keys in the same order, same shapes and dtypes, same bits (Y to ``Y_atol`` when
    it is cut by PatchExtractor), every tensor contiguous on ``device``."""
    assert list(got) == list(expected)
    for key, value in expected.items():
        tensor = got[key]
        assert tensor.device.type == device, key
        assert tensor.is_contiguous(), key
        value = torch.as_tensor(value)
        assert tensor.dtype == value.dtype and tensor.shape == value.shape, key
        if key == "Y" and Y_atol is not None:
            np.testing.assert_allclose(tensor.cpu().numpy(), value.numpy(), atol=Y_atol, err_msg=key)
        else:
            assert torch.equal(tensor.cpu(), value), f"{key} differs from the host loader's"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("prescale, gather_bytes", [(True, 1 << 27), (False, 1 << 27), (True, 0)])
def test_resident_batches_equal_host_loader_bit_for_bit(store, device, prescale, gather_bytes):
    """150 groups in batches of 32: a run of 4 batches gathered at once and a short last batch
    (or, gather_bytes=0, one batch per gather)."""
    host = make_loader(store, 32, seed=3, with_Y=True, pin_memory=False)
    held = DeviceStore(store, device, prescale=prescale, gather_bytes=gather_bytes)
    assert (held.batches_per_gather(32) == 1) if gather_bytes == 0 else (held.batches_per_gather(32) >= 4)
    resident = make_loader(held, 32, seed=3, with_Y=True, resident=True)
    assert len(resident) == len(host)
    n = 0
    for epoch in range(2):
        host.set_epoch(epoch)
        resident.set_epoch(epoch)
        for expected, got in zip(host, resident, strict=True):
            assert_same_batch(got, expected, device, Y_atol=2e-6)  # Y cut from the object on the device
            n += len(got["X"])
    assert n == 2 * len(store)
    assert resident.dataset.prescaled is prescale


@pytest.mark.parametrize("device", DEVICES)
def test_several_experiments_and_stored_patches_are_bit_exact(two_experiments, device):
    store = two_experiments
    assert len(set(store.x_scale)) == 2 and store.stored_patches is not None
    for prescale in (True, False):
        resident = DeviceStore(store, device, prescale=prescale)
        index = np.random.default_rng(0).permutation(len(store))[:40]
        assert_same_batch(resident.batch(index, with_Y=True), store.batch(index, with_Y=True, reuse=False), device)


@pytest.mark.parametrize("device", DEVICES)
def test_a_split_holds_only_its_own_frames_and_serves_its_groups(store, device):
    train, val = store.split(0.2, by="region", seed=0)
    resident = DeviceStore(val, device, with_Y=True)
    used = np.unique(val.groups)
    assert len(used) < store.n_patterns
    assert resident.frames.shape == (len(used), store.N, store.N)
    assert len(resident) == len(val)
    index = [0, 3, -1, 2]
    assert_same_batch(resident.batch(index, with_Y=True), val.batch(index, with_Y=True, reuse=False), device, 2e-6)
    loader = make_loader(resident, 8, resident=True, seed=1)
    seen = [i for batch in loader for i in batch["group_index"].tolist()]
    assert sorted(seen) == sorted(val.group_indices.tolist())


def test_a_materialized_store_serves_its_stored_X(tmp_path):
    scan = simulate(n_points=80, N=16, seed=3, pattern="jittered")
    store = prepare(scan, CONFIG, cache_dir=tmp_path, progress=False, materialize=True)
    assert store.materialized_X is not None
    resident = DeviceStore(store, "cpu")
    assert resident.frames.shape == (len(store) * store.C, store.N, store.N)
    index = np.arange(len(store))[::-3]
    assert_same_batch(resident.batch(index, with_Y=True), store.batch(index, with_Y=True, reuse=False), "cpu", 2e-6)


def test_batches_held_together_stay_intact(store):
    """Batches of one gather share a buffer: each must stay its own while all are held."""
    loader = make_loader(DeviceStore(store, "cpu", gather_bytes=1 << 24), 16, seed=2, resident=True)
    kept = list(loader)
    assert len({batch["X"].untyped_storage().data_ptr() for batch in kept}) < len(kept)  # shared buffers
    for batch in kept:
        expected = store.batch(batch["group_index"].numpy(), reuse=False)
        assert_same_batch(batch, expected, "cpu")
    kept[0]["X"].fill_(-1.0)  # writing into one batch leaves its neighbours in the buffer alone
    expected = store.batch(kept[1]["group_index"].numpy(), reuse=False)
    assert_same_batch(kept[1], expected, "cpu")


def test_tensor_indices_and_index_errors(store):
    resident = DeviceStore(store, "cpu")
    expected = store.batch([5, -2, 0], reuse=False)
    assert_same_batch(resident.batch(torch.tensor([5, -2, 0])), expected, "cpu")
    with pytest.raises(GroupIndexError, match=f"group index {len(store)} out of range"):
        resident.batch([0, len(store)])
    with pytest.raises(GroupIndexError, match="1-D"):
        resident.batch(torch.tensor([0.5]))
    with pytest.raises(GroupIndexError, match=f"group index {-len(store) - 1} out of range"):
        resident.batch(torch.tensor([-len(store) - 1]))


# ---------------------------------------------------------------------- sampler, resume, DDP
@pytest.mark.parametrize("save_after", [0, 1, 4])
def test_resume_is_exact_and_interchangeable_with_the_host_loader(store, save_after):
    """A state saved by a resident loader resumes a host loader where it stopped, and the reverse."""
    reference = [b["group_index"].tolist() for b in make_loader(store, 32, seed=7, pin_memory=False)]
    resident = make_loader(store, 32, seed=7, resident=True, device="cpu")
    taken = []
    for batch in resident if save_after else ():
        taken.append(batch["group_index"].tolist())
        if len(taken) == save_after:
            break
    host = make_loader(store, 32, seed=7, pin_memory=False)
    host.load_state_dict(resident.state_dict())
    assert taken + [b["group_index"].tolist() for b in host] == reference
    again = make_loader(store, 32, seed=7, resident=True, device="cpu")
    again.load_state_dict(resident.state_dict())
    again.set_epoch(0)  # the usual loop calls set_epoch first: it keeps the loaded position
    assert taken + [b["group_index"].tolist() for b in again] == reference


DDP_SCRIPT = """
import sys, json, torch, torch.distributed as dist
from ptychodata import open_store
from ptychodata.torch import make_loader
rank, world, init, store_path, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
store = open_store(store_path)
host = make_loader(store, 16, seed=9, pin_memory=False)
resident = make_loader(store, 16, seed=9, resident=True, device="cpu")
same = all(torch.equal(h[k], r[k]) for h, r in zip(host, resident, strict=True) for k in h)
seen = [i for batch in resident for i in batch["group_index"].tolist()]
json.dump({"seen": seen, "same": same, "replicas": resident.sampler.num_replicas}, open(out, "w"))
dist.destroy_process_group()
"""


def test_ddp_ranks_shard_like_the_host_loader(store, tmp_path):
    init = f"file://{tmp_path / 'rendezvous'}"
    outputs = [tmp_path / f"rank{r}.json" for r in range(2)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    processes = [
        subprocess.Popen([sys.executable, "-c", DDP_SCRIPT, str(r), "2", init, str(store.path), str(outputs[r])], env=env)
        for r in range(2)
    ]
    for process in processes:
        assert process.wait(timeout=120) == 0
    results = [json.loads(path.read_text()) for path in outputs]
    assert all(r["same"] and r["replicas"] == 2 for r in results)
    seen = [r["seen"] for r in results]
    assert len(seen[0]) == len(seen[1]) == len(store) // 2
    assert not set(seen[0]) & set(seen[1])
    assert set(seen[0]) | set(seen[1]) == set(range(len(store)))


# ---------------------------------------------------------------------- options
def test_tensordict_batches(store):
    pytest.importorskip("tensordict")
    loader = make_loader(store, 16, resident=True, device="cpu", as_tensordict=True, shuffle=False)
    batch = next(iter(loader))
    assert batch.batch_size == torch.Size([16])
    assert torch.equal(batch["X"], torch.from_numpy(store.batch(np.arange(16), reuse=False)["X"]))


@pytest.mark.parametrize(
    "option, message",
    [
        ({"num_workers": 2}, "num_workers=2 with resident=True"),
        ({"pin_memory": True}, "pin_memory=True with resident=True"),
        ({"background": 2}, "background=2 with resident=True"),
        ({"shared_ring": 4}, "shared_ring=4 with resident=True"),
        ({"with_Y": "yes"}, "with_Y='yes'"),
    ],
)
def test_host_only_options_are_refused_with_resident(store, option, message):
    with pytest.raises(ParameterError, match=message):
        make_loader(store, 8, resident=True, device="cpu", **option)


def test_a_device_store_on_another_device_is_refused(store):
    with pytest.raises(ParameterError, match="but the DeviceStore given is on cpu"):
        make_loader(DeviceStore(store, "cpu"), 8, resident=True, device="cuda:0")


def test_device_without_resident_is_refused(store):
    with pytest.raises(ParameterError, match="without resident=True"):
        make_loader(store, 8, device="cpu")


def test_with_Y_needs_ground_truth(tmp_path):
    scan = simulate(n_points=60, N=16, seed=4)
    store = prepare(dataclasses.replace(scan, object=None), CONFIG, cache_dir=tmp_path, progress=False)
    resident = DeviceStore(store, "cpu")
    assert set(resident.batch([0, 1])) == set(store.batch_layout(2))
    with pytest.raises(ParameterError, match="no object or Y"):
        resident.batch([0, 1], with_Y=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_device_without_cuda_is_refused(store):
    with pytest.raises(ParameterError, match="CUDA is not available"):
        DeviceStore(store, "cuda")
