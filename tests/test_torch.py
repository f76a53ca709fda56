import copy
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ptychodata import GroupingConfig, extract_patches, prepare, simulate
from ptychodata.torch import GroupedDataset, GroupSampler, PatchExtractor, make_loader, to_device


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    scan = simulate(n_points=150, N=16, seed=5, pattern="jittered")
    cache = tmp_path_factory.mktemp("cache")
    return prepare(scan, GroupingConfig(gridsize=2, neighbor_count=6, seed=0), cache_dir=cache, progress=False)


def group_indices(loader) -> list[list[int]]:
    return [batch["group_index"].tolist() for batch in loader]


def flatten(batches) -> list[int]:
    return [index for batch in batches for index in batch]


# ---------------------------------------------------------------------- dataset and loader
@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_batches_equal_store_batches(store, num_workers):
    loader = make_loader(store, 32, num_workers=num_workers, with_Y=True, seed=3)
    seen = []
    for batch in loader:
        expected = store.batch(batch["group_index"].numpy(), with_Y=True, reuse=False)
        assert set(batch) == set(expected)
        for key, value in expected.items():
            assert isinstance(batch[key], torch.Tensor)
            np.testing.assert_array_equal(batch[key].numpy(), value, err_msg=key)
        seen.extend(batch["group_index"].tolist())
    assert sorted(seen) == list(range(len(store)))  # one epoch = every group once
    assert batch["probe"].stride()[0] != 0 and batch["X"].is_contiguous()


def test_main_process_batches_stay_valid_while_held_and_recycle_when_dropped(store):
    loader = make_loader(store, 16, num_workers=0, seed=2, pin_memory=False, background=0)
    kept = list(loader)  # every batch of the epoch held at once: none may be overwritten
    for batch in kept:
        expected = store.batch(batch["group_index"].numpy(), reuse=False)
        for key, value in expected.items():
            np.testing.assert_array_equal(batch[key].numpy(), value, err_msg=key)
    del kept, batch
    pool = loader.dataset.store._gatherer.pool
    allocated, reused = pool.allocated, pool.reused
    n_batches = sum(1 for _ in loader)  # each batch dropped as the next is taken
    # The loop holds one batch while the next is gathered: two sets alternate (a third
    # layout for the short last batch); everything else is recycled.
    assert pool.allocated - allocated <= 3
    assert pool.reused - reused >= n_batches - 3


def test_workers_with_a_shared_memory_ring_serve_correct_batches(store):
    loader = make_loader(store, 16, num_workers=2, shared_ring=4, seed=1, with_Y=True)
    seen = []
    for epoch in range(2):  # the ring wraps several times
        loader.set_epoch(epoch)
        for batch in loader:  # compared before the next batch is taken, as the ring requires
            expected = store.batch(batch["group_index"].numpy(), with_Y=True, reuse=False)
            for key, value in expected.items():
                np.testing.assert_array_equal(batch[key].numpy(), value, err_msg=key)
            seen.extend(batch["group_index"].tolist())
    assert sorted(seen) == sorted(list(range(len(store))) * 2)


def test_a_shared_batch_crosses_processes_as_one_buffer(store):
    from multiprocessing.reduction import ForkingPickler

    import torch.multiprocessing  # noqa: F401  (registers the shared-memory reducers)

    from ptychodata.torch import SharedBatch

    batch = SharedBatch.empty(store.batch_layout(5, with_Y=True))
    store.batch([3, 1, 4, 1, 5], with_Y=True, out={key: value.numpy() for key, value in batch.items()})
    received = ForkingPickler.loads(ForkingPickler.dumps(batch))
    assert isinstance(received, dict) and received.keys() == batch.keys()
    expected = store.batch([3, 1, 4, 1, 5], with_Y=True, reuse=False)
    for key, value in received.items():
        np.testing.assert_array_equal(value.numpy(), expected[key], err_msg=key)
    assert len({value.untyped_storage().data_ptr() for value in received.values()}) == 1
    assert all(value.is_shared() and value.is_contiguous() for value in received.values())
    moved = to_device(received, "cpu")
    assert isinstance(moved, SharedBatch) and moved.keys() == batch.keys()
    if torch.cuda.is_available():
        pinned = received.pin_memory()
        assert pinned.buffer.is_pinned() and all(value.is_pinned() for value in pinned.values())
        on_gpu = to_device(pinned, "cuda")
        for key, value in on_gpu.items():
            np.testing.assert_array_equal(value.cpu().numpy(), expected[key], err_msg=key)
    plain = copy.copy(received)  # what a pin thread may start from: a dict whose values get replaced
    assert type(plain) is dict and plain.keys() == batch.keys()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="page-locked memory needs CUDA")
def test_main_process_gathers_straight_into_pinned_memory(store):
    from ptychodata.torch import SharedBatch

    loader = make_loader(store, 16, num_workers=0, pin_memory=True, with_Y=True, seed=4)
    for batch in loader:
        assert isinstance(batch, SharedBatch) and batch.buffer.is_pinned()
        expected = store.batch(batch["group_index"].numpy(), with_Y=True, reuse=False)
        on_gpu = to_device(batch, "cuda")
        for key, value in expected.items():
            np.testing.assert_array_equal(on_gpu[key].cpu().numpy(), value, err_msg=key)


def test_pinned_gathering_needs_cuda(store):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ValueError, match="needs CUDA"):
        GroupedDataset(store, pin_memory=True)
    assert make_loader(store, 8, num_workers=0, pin_memory=True).dataset.pin_memory is False  # no CUDA: plain


def test_loader_is_deterministic_and_epoch_seeded(store):
    first = group_indices(make_loader(store, 40, num_workers=0, seed=7))
    again = group_indices(make_loader(store, 40, num_workers=0, seed=7))
    assert first == again
    loader = make_loader(store, 40, num_workers=0, seed=7)
    loader.set_epoch(1)
    assert group_indices(loader) != first
    unshuffled = group_indices(make_loader(store, 40, num_workers=0, shuffle=False))
    assert flatten(unshuffled) == list(range(len(store)))


def test_getitem_and_tensordict(store):
    dataset = GroupedDataset(store)
    item = dataset[3]
    assert item["X"].shape == (4, 16, 16) and int(item["group_index"]) == 3
    pytest.importorskip("tensordict")
    td_dataset = GroupedDataset(store, as_tensordict=True, with_Y=True)
    batch = td_dataset.__getitems__([1, 2, 3])
    assert batch.batch_size == torch.Size([3])
    np.testing.assert_array_equal(batch["X"].numpy(), store.batch([1, 2, 3], reuse=False)["X"])
    loader = make_loader(store, 16, num_workers=0, as_tensordict=True)
    assert next(iter(loader))["X"].shape == (16, 4, 16, 16)


def test_dataset_pickles_as_a_recipe(store):
    import pickle

    dataset = GroupedDataset(store, with_Y=True)
    blob = pickle.dumps(dataset)
    assert len(blob) < 2000  # the store's path, not its arrays
    again = pickle.loads(blob)
    np.testing.assert_array_equal(again.__getitems__([2])["X"].numpy(), dataset.__getitems__([2])["X"].numpy())


def test_device_Y_is_left_to_the_extractor(store):
    batch = GroupedDataset(store, with_Y="device").__getitems__([0, 5])
    assert "Y" not in batch
    extractor = PatchExtractor.from_store(store)
    expected = store.batch([0, 5], with_Y=True, reuse=False)["Y"]
    np.testing.assert_allclose(extractor.for_members(batch["nn_indices"]).numpy(), expected, atol=1e-6)


def test_patch_extractor_matches_numpy_including_edges():
    rng = np.random.default_rng(0)
    obj = (rng.normal(size=(40, 50)) + 1j * rng.normal(size=(40, 50))).astype(np.complex64)
    x = rng.uniform(-10, 60, 64)
    y = rng.uniform(-10, 50, 64)
    expected = extract_patches(obj, x, y, 12)
    got = PatchExtractor([obj], 12)(torch.from_numpy(x), torch.from_numpy(y))
    assert got.dtype == torch.complex64
    np.testing.assert_allclose(got.numpy(), expected, atol=2e-6)
    # chunks of 5 positions (temporaries bounded), written into a given output
    small = PatchExtractor([obj], 12, max_temp_bytes=5 * 40 * 13**2)
    out = torch.zeros((64, 12, 12), dtype=torch.complex64)
    assert small(torch.from_numpy(x), torch.from_numpy(y), out=out) is out
    np.testing.assert_allclose(out.numpy(), expected, atol=2e-6)


def test_import_ptychodata_does_not_import_torch():
    code = "import sys, ptychodata; ptychodata.prepare; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------- sampler, resume, elastic
def test_shards_are_disjoint_equal_and_complete():
    shards = [list(GroupSampler(103, 10, num_replicas=3, rank=r, seed=1)) for r in range(3)]
    lengths = [sum(len(b) for b in shard) for shard in shards]
    assert len(set(lengths)) == 1  # equal length per rank (padded)
    flat = [sorted(flatten(shard)) for shard in shards]
    assert set().union(*map(set, flat)) == set(range(103))
    assert sum(lengths) - 103 == 2  # two padding repeats make 103 divisible by 3
    dropped = [list(GroupSampler(103, 10, num_replicas=3, rank=r, drop_last=True)) for r in range(3)]
    assert all(len(b) == 10 for shard in dropped for b in shard)
    all_dropped = flatten(flatten(shard) for shard in dropped)
    assert len(all_dropped) == len(set(all_dropped)) == 90


@pytest.mark.parametrize("num_replicas, drop_last", [(1, False), (3, False), (3, True)])
def test_a_pass_is_each_steps_block_for_this_rank_in_order(num_replicas, drop_last):
    """begin_pass's positions and sizes (what the resident loader takes whole) are rank r's
    block of batch_size positions from each step of W·batch_size of the global order (padded
    to a multiple of W, or cut to whole steps), then its equal share of the last step."""
    W, bs = num_replicas, 8
    for rank in range(W):
        sampler = GroupSampler(103, bs, seed=1, num_replicas=W, rank=rank, drop_last=drop_last)
        order = sampler.global_order()
        order = order[: len(order) // (W * bs) * W * bs] if drop_last else np.resize(order, -(-len(order) // W) * W)
        steps = len(order) // (W * bs)
        expected = [order[(s * W + rank) * bs : (s * W + rank + 1) * bs] for s in range(steps)]
        share = (len(order) - steps * W * bs) // W
        if share:
            expected.append(order[steps * W * bs + rank * share : steps * W * bs + (rank + 1) * share])
        batches = sampler.begin_pass()
        assert batches.positions.dtype == np.int64 and batches.sizes.dtype == np.int64
        assert batches.sizes.tolist() == [len(b) for b in expected]
        np.testing.assert_array_equal(batches.positions, np.concatenate(expected))
        assert [b.tolist() for b in batches] == [b.tolist() for b in expected]
        assert list(sampler) == [b.tolist() for b in expected]


def test_an_empty_pass_has_no_batches():
    from ptychodata.torch._sampler import PassBatches

    empty = PassBatches.of([])
    assert len(empty) == 0 and list(empty) == [] and empty.positions.dtype == np.int64
    sampler = GroupSampler(5, 8, drop_last=True)
    assert len(sampler.begin_pass()) == 0 and list(sampler) == []


@pytest.mark.parametrize("num_workers, background", [(0, 0), (2, 0), (0, 3)])
def test_resume_after_k_batches_equals_uninterrupted_run(store, num_workers, background):
    uninterrupted = group_indices(make_loader(store, 16, num_workers=num_workers, seed=2))
    loader = make_loader(store, 16, num_workers=num_workers, seed=2, background=background)
    taken = []
    for batch in loader:
        taken.append(batch["group_index"].tolist())
        if len(taken) == 4:
            break
    state = loader.state_dict()
    resumed = make_loader(store, 16, num_workers=num_workers, seed=2)
    resumed.load_state_dict(state)
    assert taken + group_indices(resumed) == uninterrupted
    resumed.set_epoch(1)  # the next epoch is whole again
    assert sum(len(b) for b in group_indices(resumed)) == len(store)


def epochs_of(loader, epochs) -> list[list[list[int]]]:
    out = []
    for epoch in epochs:
        loader.set_epoch(epoch)
        out.append(group_indices(loader))
    return out


@pytest.mark.parametrize("save_at", ["after set_epoch", "before the first batch", "mid-epoch", "at the end"])
def test_resume_is_exact_at_every_point_a_user_may_save(store, save_at):
    """Train epochs 0-2 uninterrupted, or save during epoch 1 and resume in a new loader."""
    reference = epochs_of(make_loader(store, 16, seed=3), range(3))
    loader = make_loader(store, 16, seed=3)
    seen = [group_indices(loader)]  # epoch 0 (set_epoch(0) is the default)
    loader.set_epoch(1)
    taken = []
    if save_at == "before the first batch":
        iter(loader)  # an iterator made but not advanced yet
    elif save_at in ("mid-epoch", "at the end"):
        for batch in loader:
            taken.append(batch["group_index"].tolist())
            if save_at == "mid-epoch" and len(taken) == 3:
                break
    state = loader.state_dict()
    resumed = make_loader(store, 16, seed=3)
    resumed.load_state_dict(state)
    resumed.set_epoch(1)  # the usual loop calls set_epoch before iterating: it keeps the loaded position
    seen.append(taken + group_indices(resumed))
    seen += epochs_of(resumed, [2])
    assert seen == reference


def test_background_thread_serves_the_same_batches_and_stops_when_left(store):
    plain = make_loader(store, 16, num_workers=0, seed=5, with_Y=True)
    ahead = make_loader(store, 16, num_workers=0, seed=5, with_Y=True, background=3)
    kept = list(ahead)  # held while the thread gathers ahead: none may be overwritten
    assert [b["group_index"].tolist() for b in kept] == group_indices(plain)
    for batch in kept:
        expected = store.batch(batch["group_index"].numpy(), with_Y=True, reuse=False)
        for key, value in expected.items():
            np.testing.assert_array_equal(batch[key].numpy(), value, err_msg=key)
    before = threading.active_count()
    for _ in zip(range(2), ahead):  # leave mid-epoch
        pass
    assert threading.active_count() == before  # the prefetch thread has stopped


def test_background_thread_raises_the_gather_error_in_the_loop(store):
    class Failing(GroupedDataset):
        def __getitems__(self, indices):
            if 0 in indices:
                raise RuntimeError("gather failed for group 0")
            return super().__getitems__(indices)

    loader = make_loader(Failing(store), 8, num_workers=0, shuffle=False, background=2)
    with pytest.raises(RuntimeError, match="group 0"):
        list(loader)


@pytest.mark.parametrize("before, after", [(2, 1), (1, 2), (2, 3)])
def test_elastic_resume_covers_exactly_the_remainder(before, after):
    n, batch_size, k = 101, 8, 3
    old = [GroupSampler(n, batch_size, num_replicas=before, rank=r, seed=4) for r in range(before)]
    used = set()
    for sampler in old:
        iterator = iter(sampler)
        for _ in range(k):
            used.update(next(iterator))
    state = old[0].state_dict(batches_done=k)
    assert state == old[1 % before].state_dict(batches_done=k)
    remaining_before = set(range(n)) - used
    new = [GroupSampler(n, batch_size, num_replicas=after, rank=r) for r in range(after)]
    for sampler in new:
        sampler.load_state_dict(state)
    shares = [flatten(sampler) for sampler in new]
    assert set().union(*map(set, shares)) == remaining_before
    assert len({len(share) for share in shares}) == 1
    assert sum(map(len, shares)) - len(remaining_before) < after  # only padding repeats


DDP_SCRIPT = """
import sys, json, torch, torch.distributed as dist
from ptychodata import open_store
from ptychodata.torch import make_loader
rank, world, init, store_path, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
loader = make_loader(open_store(store_path), 16, num_workers=0, seed=9)
seen = [i for batch in loader for i in batch["group_index"].tolist()]
counts = [torch.zeros(1) for _ in range(world)]
dist.all_gather(counts, torch.tensor([float(len(seen))]))
json.dump({"seen": seen, "counts": [float(c) for c in counts]}, open(out, "w"))
dist.destroy_process_group()
"""


def test_ddp_gloo_two_processes_shard_disjoint_and_complete(store, tmp_path):
    import json

    init = f"file://{tmp_path / 'rendezvous'}"
    outputs = [tmp_path / f"rank{r}.json" for r in range(2)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    processes = [
        subprocess.Popen([sys.executable, "-c", DDP_SCRIPT, str(r), "2", init, str(store.path), str(outputs[r])],
                         env=env)
        for r in range(2)
    ]
    for process in processes:
        assert process.wait(timeout=120) == 0
    seen = [json.loads(path.read_text())["seen"] for path in outputs]
    assert len(seen[0]) == len(seen[1]) == len(store) // 2  # 150 groups, 2 ranks: no padding needed
    assert not set(seen[0]) & set(seen[1])
    assert set(seen[0]) | set(seen[1]) == set(range(len(store)))


# ---------------------------------------------------------------------- splits
def test_region_split_shares_no_pattern(store):
    train, val = store.split(0.2, by="region", seed=0)
    train_patterns = set(train.groups.ravel().tolist())
    val_patterns = set(val.groups.ravel().tolist())
    assert not train_patterns & val_patterns
    assert 0.1 < len(val) / len(store) < 0.45
    assert len(train) + len(val) < len(store)  # groups touching held-out patterns were dropped
    batch = val.batch([0, 1])
    np.testing.assert_array_equal(batch["group_index"], val.group_indices[:2])
    loader = make_loader(train, 8, num_workers=0)
    assert sorted(i for b in group_indices(loader) for i in b) == sorted(train.group_indices.tolist())


def test_random_split_partitions_groups(store):
    train, val = store.split(0.25, by="random", seed=1)
    assert len(train) + len(val) == len(store)
    assert not set(train.group_indices) & set(val.group_indices)
    with pytest.raises(ValueError, match="val_fraction"):
        store.split(1.5)
