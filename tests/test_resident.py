"""GPU-resident loading: DeviceStore and make_loader(resident=True) against the host loader."""

import dataclasses
import json
import os
import subprocess
import sys
import time

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
import datetime, json, sys
import torch, torch.distributed as dist
from ptychodata import open_store
from ptychodata.torch import make_loader

rank, world, init, path, selection, device, out = sys.argv[1:]
rank, world = int(rank), int(world)
if device == "cuda":
    device = f"cuda:{rank % torch.cuda.device_count()}"
dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world,
                        timeout=datetime.timedelta(seconds=60))
store = open_store(path).subset(json.loads(selection))
B, SEED = 16, 9
mismatches = []


def host(**options):
    return make_loader(store, B, seed=SEED, with_Y=True, pin_memory=False, distributed=True, **options)


def resident(**options):
    loader = make_loader(store, B, seed=SEED, with_Y=True, resident=True, device=device, distributed=True, **options)
    assert (loader.sampler.num_replicas, loader.sampler.rank) == (world, rank)
    return loader


def compare(tag, host_loader, resident_loader):
    # Every batch of the two loaders, key by key: order, dtype, shape, device and bits.
    served = []
    for number, (expected, got) in enumerate(zip(host_loader, resident_loader, strict=True)):
        if list(got) != list(expected):
            mismatches.append(f"{tag} batch {number}: keys {list(got)} != {list(expected)}")
        for key, value in expected.items():
            tensor = got.get(key)
            if tensor is None or torch.device(tensor.device) != torch.device(device) or tensor.dtype != value.dtype \\
                    or tensor.shape != value.shape or not torch.equal(tensor.cpu(), value):
                mismatches.append(f"{tag} batch {number}: {key} differs from the host loader's")
        served.append(got["group_index"].tolist())
    return served


result = {"epochs": {}}
host_loader, resident_loader = host(), resident()
assert len(host_loader) == len(resident_loader)
for epoch in (0, 1):
    host_loader.set_epoch(epoch)
    resident_loader.set_epoch(epoch)
    result["epochs"][epoch] = compare(f"epoch {epoch}", host_loader, resident_loader)
result["drop_last"] = compare("drop_last", host(drop_last=True), resident(drop_last=True))

# Stop after 2 batches of epoch 1 (both loaders), save, resume in fresh loaders, then a whole epoch 2.
states, taken = [], []
for make in (host, resident):
    loader = make()
    loader.set_epoch(1)
    batches = []
    for batch in loader:
        batches.append(batch["group_index"].tolist())
        if len(batches) == 2:
            break
    taken.append(batches)
    states.append(loader.state_dict())
every_rank = [None] * world
dist.all_gather_object(every_rank, states[1])
result.update(taken=taken, states=states, every_rank_state=every_rank)
host_loader, resident_loader = host(), resident()
for loader in (host_loader, resident_loader):
    loader.load_state_dict(states[1])
    loader.set_epoch(1)  # the usual loop calls set_epoch first: it keeps the loaded position
result["resumed"] = compare("resumed epoch 1", host_loader, resident_loader)
host_loader.set_epoch(2)
resident_loader.set_epoch(2)
result["after_resume"] = compare("epoch 2 after the resume", host_loader, resident_loader)
result["mismatches"] = mismatches
dist.barrier()
dist.destroy_process_group()
with open(out, "w") as file:
    json.dump(result, file)
"""


def run_ranks(script: str, arguments: list[str], tmp_path, world: int = 2, timeout: float = 120) -> list[dict]:
    """Run ``script`` as ``world`` processes of one gloo group (file rendezvous in ``tmp_path``),
    each with ``rank world init *arguments out``; every process is ended by ``timeout``.
    Returns each rank's JSON output."""
    init = f"file://{tmp_path / 'rendezvous'}"
    outputs = [tmp_path / f"rank{r}.json" for r in range(world)]
    logs = [tmp_path / f"rank{r}.log" for r in range(world)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    processes = []
    try:
        for r in range(world):
            with open(logs[r], "w") as log:
                command = [sys.executable, "-c", script, str(r), str(world), init, *arguments, str(outputs[r])]
                processes.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + timeout
        for process in processes:
            process.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    failed = [r for r, process in enumerate(processes) if process.returncode != 0]
    assert not failed, "\n".join(f"rank {r} exited {processes[r].returncode}:\n{logs[r].read_text()[-3000:]}"
                                 for r in failed)
    return [json.loads(path.read_text()) for path in outputs]


def interleave(per_rank: list[list[list[int]]]) -> list[int]:
    """The global order the ranks' batches were dealt from: step by step, rank 0's batch, rank 1's..."""
    assert len({len(batches) for batches in per_rank}) == 1, "ranks have different numbers of batches"
    return [i for step in zip(*per_rank) for batch in step for i in batch]


@pytest.mark.parametrize("device", DEVICES)
def test_ddp_ranks_get_the_host_loaders_batches_through_epochs_and_resume(two_experiments, tmp_path, device):
    """Two gloo ranks, each with a resident and a host loader (distributed=True) over 147 of
    two experiments' 180 groups (an odd count: the sampler pads the last step). Every
    batch is the host's bit for bit on every key (Y from stored patches), in epochs 0 and 1,
    with drop_last, after a resume mid-epoch 1, and in epoch 2 after it; the ranks' batches
    interleave to the epoch's permutation padded by its first groups."""
    store = two_experiments
    selection = np.random.default_rng(4).permutation(len(store))[:147]
    seed, B, world = 9, 16, 2
    ranks = run_ranks(DDP_SCRIPT, [str(store.path), json.dumps(selection.tolist()), device], tmp_path)
    assert [r["mismatches"] for r in ranks] == [[], []]

    def order(epoch: int, start: int = 0) -> list[int]:
        """Group indices (not positions) of the epoch's permutation from ``start``, padded
        with its first ones to a multiple of the ranks."""
        positions = np.random.default_rng([seed, epoch]).permutation(len(selection))[start:]
        positions = np.concatenate([positions, positions[: -len(positions) % world]])
        return selection[positions].tolist()

    epochs = {int(epoch): interleave([r["epochs"][epoch] for r in ranks]) for epoch in ranks[0]["epochs"]}
    assert epochs == {0: order(0), 1: order(1)}
    assert epochs[0] != epochs[1]  # set_epoch reshuffles (and the host loader agreed on each)
    assert len(epochs[0]) == 148 and len(set(epochs[0])) == 147  # one padding repeat: 74 groups a rank
    assert all(len(batch) == B for r in ranks for batch in r["epochs"]["0"][:-1])
    assert [len(r["epochs"]["0"][-1]) for r in ranks] == [10, 10]  # the short last step: 19 groups + 1 repeat

    dropped = interleave([r["drop_last"] for r in ranks])
    assert dropped == order(0)[: 147 // (world * B) * world * B]
    assert all(len(batch) == B for r in ranks for batch in r["drop_last"])

    # The saved state is the same on both ranks and for both loaders, and names the global position.
    state = ranks[0]["states"][1]
    assert state == {"epoch": 1, "seed": seed, "shuffle": True, "n_groups": 147, "consumed": 2 * world * B}
    assert all(r["states"] == [state, state] and r["every_rank_state"] == [state, state] for r in ranks)
    assert all(r["taken"][0] == r["taken"][1] == r["epochs"]["1"][:2] for r in ranks)
    taken = interleave([r["taken"][1] for r in ranks])
    resumed = interleave([r["resumed"] for r in ranks])
    assert taken == order(1)[: 2 * world * B]
    assert resumed == order(1, start=2 * world * B)  # what remained, padded again by its own first group
    assert interleave([r["after_resume"] for r in ranks]) == order(2)


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
