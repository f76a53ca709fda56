"""Sharded resident loading: each rank holds a share of the frames; every group served once per epoch."""

import re
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ptychodata import GroupingConfig, prepare, simulate  # noqa: E402
from ptychodata.errors import ParameterError  # noqa: E402
from ptychodata.torch import DeviceStore, GroupSampler, ShardSampler, make_loader  # noqa: E402
from ptychodata.torch._shard import Sharding, shard_groups, sharded_resident  # noqa: E402

CONFIG = GroupingConfig(gridsize=2, neighbor_count=6, seed=0)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Three scans of 70, 40 and 25 points: three experiments of unequal size."""
    scans = [simulate(n_points=n, N=16, seed=seed, pattern="jittered") for seed, n in ((1, 70), (2, 40), (3, 25))]
    return prepare(scans, CONFIG, cache_dir=tmp_path_factory.mktemp("cache"), progress=False)


def epoch_batches(sharding: Sharding, W: int, B: int, epoch: int = 0, drop_last: bool = False, seed: int = 5):
    """Every rank's batches of one epoch, rank by rank."""
    per_rank = []
    for rank in range(W):
        sampler = ShardSampler(sharding, B, seed=seed, drop_last=drop_last, num_replicas=W, rank=rank)
        sampler.set_epoch(epoch)
        per_rank.append(list(sampler.iter_arrays()))
    return per_rank


@pytest.mark.parametrize("by, W", [("block", 2), ("block", 3), ("scan", 2), ("scan", 3)])
def test_every_group_is_served_once_per_epoch_from_its_ranks_shard(store, by, W):
    sharding = Sharding.of_store(store, by)
    shards = sharding.shards(W)
    assert np.array_equal(np.sort(np.concatenate(shards)), np.arange(len(store)))  # a partition
    per_rank = epoch_batches(sharding, W, 8)
    assert len({len(batches) for batches in per_rank}) == 1  # lockstep: equal numbers of batches
    assert len({tuple(len(b) for b in batches) for batches in per_rank}) == 1  # and of equal sizes
    served = np.concatenate([np.concatenate(batches) for batches in per_rank])
    for rank, batches in enumerate(per_rank):
        assert np.isin(np.concatenate(batches), shards[rank]).all()  # from its own shard only
    counts = np.bincount(served, minlength=len(store))
    assert (counts >= 1).all()
    padding = max(len(s) for s in shards) * W - len(store)
    assert counts.sum() - len(store) == padding  # repeats only to pad shorter shards
    if by == "block":
        assert padding < W  # block shards differ by at most one group
    again = epoch_batches(sharding, W, 8, epoch=1)
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(per_rank, again))  # reshuffled every epoch


def test_scan_shards_hold_whole_experiments_balanced_by_patterns(store):
    experiment = np.asarray(store.group_experiment)
    shards = shard_groups(store, 2, by="scan")
    held = [set(experiment[shard].tolist()) for shard in shards]
    assert held[0].isdisjoint(held[1]) and held[0] | held[1] == {0, 1, 2}
    assert held == [{0}, {1, 2}]  # 70 patterns against 40 + 25
    with pytest.raises(ParameterError, match=r"over 4 ranks, but the groups come from 3 scan\(s\)"):
        shard_groups(store, 4, by="scan")
    with pytest.raises(ParameterError, match="shard_by='rows'; expected one of"):
        shard_groups(store, 2, by="rows")


def test_drop_last_serves_whole_batches_of_the_shortest_shard(store):
    per_rank = epoch_batches(Sharding.of_store(store, "scan"), 2, 8, drop_last=True)
    shortest = min(len(s) for s in shard_groups(store, 2, by="scan"))
    assert all(len(batches) == shortest // 8 and all(len(b) == 8 for b in batches) for batches in per_rank)
    served = np.concatenate([np.concatenate(batches) for batches in per_rank])
    assert len(np.unique(served)) == len(served)


def run_until(sampler: ShardSampler, epoch: int, steps: int) -> list[np.ndarray]:
    sampler.set_epoch(epoch)
    taken = []
    for batch in sampler.iter_arrays():
        taken.append(batch)
        if len(taken) == steps:
            break
    return taken


@pytest.mark.parametrize("W2, B2", [(2, 8), (3, 5), (1, 16)])
def test_resume_with_any_ranks_and_batch_size_serves_the_rest_once(store, W2, B2):
    """Stop after 3 steps of epoch 2 on 2 ranks (batch 8), resume on W2 ranks with batch B2:
    the epoch's groups are served once in all, and with the same ranks and batch size the
    rest is exactly the uninterrupted run's."""
    sharding = Sharding.of_store(store, "block")
    states, before = [], []
    for rank in range(2):
        sampler = ShardSampler(sharding, 8, seed=3, num_replicas=2, rank=rank)
        before.append(run_until(sampler, 2, 3))
        states.append(sampler.state_dict())
    assert states[0] == states[1] and states[0]["consumed"] == 48 and states[0]["epoch"] == 2
    after = []
    for rank in range(W2):
        resumed = ShardSampler(sharding, B2, seed=0, num_replicas=W2, rank=rank)  # seed comes from the state
        resumed.load_state_dict(states[0])
        resumed.set_epoch(2)
        after.append(list(resumed.iter_arrays()))
    assert len({len(batches) for batches in after}) == 1
    served = np.concatenate([np.concatenate(b) for b in before] + [np.concatenate(b) for b in after if b])
    assert set(served.tolist()) == set(range(len(store)))
    first_time = np.concatenate([np.concatenate(b) for b in before])
    assert len(np.unique(first_time)) == 48
    rest = np.concatenate([np.concatenate(b) for b in after])
    # Nothing served before comes again, but for the padding of the continued part (the 2
    # ranks' shards of 68 and 67 groups: one group, from the shorter shard's start).
    assert np.isin(rest, first_time).sum() == (1 if (W2, B2) == (2, 8) else 0)
    assert len(rest) - len(np.unique(rest)) == (0 if (W2, B2) == (2, 8) else len(rest) - (len(store) - 48))
    if (W2, B2) == (2, 8):
        uninterrupted = epoch_batches(sharding, 2, 8, epoch=2, seed=3)
        assert all(np.array_equal(a, b) for r in range(2) for a, b in zip(after[r], uninterrupted[r][3:], strict=True))


def test_a_resumed_run_saved_again_resumes_the_rest_again(store):
    """Two interruptions in one epoch (2 ranks, then 3, then 1): still every group once."""
    sharding = Sharding.of_store(store, "scan")
    served = []
    state = None
    for W, B, steps in [(2, 6, 2), (3, 4, 3), (1, 10, None)]:
        states = []
        for rank in range(W):
            sampler = ShardSampler(sharding, B, seed=11, num_replicas=W, rank=rank)
            if state is not None:
                sampler.load_state_dict(state)
            taken = run_until(sampler, 1, steps or 10**6)
            served.extend(np.concatenate(taken).tolist() if taken else [])
            states.append(sampler.state_dict())
        assert all(s == states[0] for s in states)
        state = states[0]
    assert state["consumed"] == len(store)
    assert sorted(set(served)) == list(range(len(store)))
    counts = np.bincount(served)
    assert counts.max() <= 2  # repeats are padding only


def test_a_host_loader_state_resumes_sharded(store):
    """A GroupSampler state (the host loader's) says which groups its order consumed; the
    sharded loader serves exactly the others."""
    host = GroupSampler(len(store), 16, seed=4, num_replicas=1, rank=0)
    host.set_epoch(0)
    taken = [batch for _, batch in zip(range(3), host.iter_arrays())]
    state = host.state_dict()
    rest = []
    for rank in range(2):
        sampler = ShardSampler(Sharding.of_store(store, "block"), 16, num_replicas=2, rank=rank)
        sampler.load_state_dict(state)
        sampler.set_epoch(0)
        rest.extend(np.concatenate(list(sampler.iter_arrays())).tolist())
    first = np.concatenate(taken)
    assert len(first) == 48 and not np.isin(rest, first).any()
    assert set(rest) | set(first.tolist()) == set(range(len(store)))


@pytest.mark.parametrize("by", ["block", "scan"])
def test_a_ranks_device_store_holds_its_share_and_serves_the_host_batches(store, by):
    held, frames = [], 0
    for rank in range(2):
        sampler = ShardSampler(Sharding.of_store(store, by), 16, seed=2, num_replicas=2, rank=rank)
        resident = DeviceStore(store.subset(sampler.shard), "cpu")
        frames += len(resident.frames)
        held.append(len(resident.frames))
        for batch in sampler.iter_arrays():
            got = resident.batch(np.searchsorted(sampler.shard, batch))
            expected = store.batch(batch, reuse=False)
            assert list(got) == list(expected)
            for key, value in expected.items():
                assert torch.equal(got[key], torch.as_tensor(value)), key
    assert max(held) < store.n_patterns  # no rank holds every frame
    assert frames <= store.n_patterns * 1.2  # few frames held twice (block borders)


def test_make_loader_shards_and_refuses_what_does_not_apply(store):
    loader = make_loader(store, 16, resident=True, device="cpu", shard_by="scan", distributed=False)
    assert isinstance(loader.sampler, ShardSampler) and loader.sampler.num_replicas == 1
    seen = [i for batch in loader for i in batch["group_index"].tolist()]
    assert sorted(seen) == list(range(len(store)))
    with pytest.raises(ParameterError, match="shard_by='block' without resident=True"):
        make_loader(store, 16, shard_by="block")
    with pytest.raises(ParameterError, match="pass the store instead"):
        make_loader(DeviceStore(store, "cpu"), 16, resident=True, shard_by="block")
    dataset, sampler = sharded_resident(store, 8, shard_by="block", device="cpu", distributed=False)
    assert len(dataset) == len(store) and len(sampler.shard) == len(store)


# ---------------------------------------------------------------------- two gloo processes
def _rank(rank: int, world: int, init: str, path: str, out: str) -> None:
    import json

    import torch.distributed as dist

    from ptychodata import open_store

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    store = open_store(path)
    loader = make_loader(store, 8, resident=True, device="cpu", shard_by="block", seed=7)
    result = {"held": len(loader.dataset.frames), "epoch": [], "mismatch": 0, "taken": [], "rest": []}
    loader.set_epoch(0)
    for batch in loader:
        index = batch["group_index"].numpy()
        result["epoch"].extend(index.tolist())
        expected = store.batch(index, reuse=False)
        result["mismatch"] += sum(not torch.equal(batch[k], torch.as_tensor(v)) for k, v in expected.items())
    loader.set_epoch(1)
    for batch in loader:
        result["taken"].extend(batch["group_index"].tolist())
        if len(result["taken"]) == 16:
            break
    state = loader.state_dict()
    again = make_loader(store, 8, resident=True, device="cpu", shard_by="block", seed=7)
    again.load_state_dict(state)
    again.set_epoch(1)
    result["rest"] = [i for batch in again for i in batch["group_index"].tolist()]
    result["state"] = state
    dist.barrier()
    dist.destroy_process_group()
    with open(out, "w") as file:
        json.dump(result, file)


def test_two_gloo_ranks_hold_half_the_frames_and_serve_every_group(store, tmp_path):
    import json

    import torch.multiprocessing as mp

    outs = [str(tmp_path / f"rank{r}.json") for r in range(2)]
    init = f"file://{tmp_path / 'rendezvous'}"
    context = mp.start_processes(_spawned, args=(2, init, str(store.path), outs), nprocs=2, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + 180
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the two gloo ranks did not finish in 180 s")
    ranks = [json.loads(open(out).read()) for out in outs]
    assert [r["mismatch"] for r in ranks] == [0, 0]
    assert all(r["held"] < store.n_patterns for r in ranks)
    epoch = ranks[0]["epoch"] + ranks[1]["epoch"]
    assert sorted(set(epoch)) == list(range(len(store))) and len(epoch) - len(store) <= 1
    assert ranks[0]["state"] == ranks[1]["state"] and ranks[0]["state"]["consumed"] == 32
    first = set(ranks[0]["taken"] + ranks[1]["taken"])
    rest = ranks[0]["rest"] + ranks[1]["rest"]
    assert len(first) == 32 and first | set(rest) == set(range(len(store)))
    assert len(first & set(rest)) <= 1  # the shorter shard (67 of 135 groups) pads with its first group


def _spawned(rank: int, world: int, init: str, path: str, outs: list[str]) -> None:
    _rank(rank, world, init, path, outs[rank])


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"shuffle": "yes"}, "shuffle='yes'; expected True or False"),
    ({"drop_last": 1}, "drop_last=1; expected True or False"),
    ({"seed": 1.5}, "seed=1.5; expected an integer"),
    ({"num_replicas": 0, "rank": 0}, "num_replicas"),
    ({"num_replicas": 2, "rank": 2}, "rank=2; expected 0 <= rank < num_replicas=2"),
    ({"num_replicas": 2, "rank": -1}, "rank"),
])
def test_the_sharded_sampler_checks_its_parameters_as_the_group_sampler_does(store, kwargs, message):
    sharding = Sharding.of_store(store, "block")
    args = {"num_replicas": 1, "rank": 0, **kwargs}
    with pytest.raises(ParameterError, match=re.escape(message)):
        ShardSampler(sharding, 8, **args)
    with pytest.raises(ParameterError, match=re.escape(message)):
        GroupSampler(len(store), 8, **args)
