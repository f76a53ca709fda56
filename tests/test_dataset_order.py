"""Epoch orders keyed by each group's identity: stable when scans are added, resumable when the
dataset changed (strict, continue, next_epoch), shared by any number of ranks."""

import numpy as np
import pytest

pytest.importorskip("torch")

from _group_keys import keys_of
from ptychodata.dataset import GroupKeys
from ptychodata.errors import DatasetChangedError, ParameterError
from ptychodata.torch import GroupSampler


def _keys(sizes: dict[str, int], fingerprint: str) -> GroupKeys:
    return keys_of(sizes, fingerprint)


def _identity(sizes: dict[str, int]) -> list[tuple[str, int]]:
    return [(u, i) for u in sorted(sizes) for i in range(sizes[u])]


def _served(sampler: GroupSampler) -> list[int]:
    return [int(i) for batch in sampler.iter_arrays() for i in batch]


def test_adding_a_scan_keeps_the_others_relative_order():
    small = {"aa": 40, "bb": 25}
    large = {**small, "ab": 30}
    before, after = _keys(small, "f1"), _keys(large, "f2")
    names_before, names_after = _identity(small), _identity(large)
    order_before = [names_before[i] for i in before.order(7, 3)]
    order_after = [names_after[i] for i in after.order(7, 3) if names_after[i][0] != "ab"]
    assert order_before == order_after
    assert [names_before[i] for i in before.order(7, 4)] != order_before  # epochs differ


def test_strict_resume_names_the_scans_added_and_removed():
    sampler = GroupSampler(65, 8, seed=1, keys=_keys({"aa": 40, "bb": 25}, "f1"))
    for _ in zip(range(3), sampler.iter_arrays()):
        pass
    state = sampler.state_dict(batches_done=3)
    changed = GroupSampler(70, 8, seed=1, keys=_keys({"aa": 40, "cc": 30}, "f2"))
    with pytest.raises(DatasetChangedError, match=r"added cc, removed bb;"):
        changed.load_state_dict(state)


def test_continue_serves_each_later_group_once_and_none_consumed_before():
    small = {"aa": 40, "bb": 25}
    large = {**small, "ab": 30}
    sampler = GroupSampler(65, 8, seed=5, keys=_keys(small, "f1"))
    sampler.set_epoch(2)
    consumed = []
    for batch, _ in zip(sampler.iter_arrays(), range(4)):
        consumed += [_identity(small)[i] for i in batch]
    state = sampler.state_dict(batches_done=4)
    keys = _keys(large, "f2")
    resumed = GroupSampler(95, 8, seed=0, keys=keys)
    resumed.load_state_dict(state, on_dataset_change="continue")
    rest = [_identity(large)[i] for i in _served(resumed)]
    assert resumed.epoch == 2 and len(rest) == len(set(rest))
    assert not set(rest) & set(consumed)
    all_keys = keys.keys(5, 2)
    last = max(int(all_keys[_identity(large).index(name)]) for name in consumed)
    later = {name for i, name in enumerate(_identity(large)) if int(all_keys[i]) > last}
    assert set(rest) == later
    assert any(name[0] == "ab" for name in rest)


def test_strict_resume_says_when_only_the_weights_changed():
    sampler = GroupSampler(65, 8, seed=1, keys=_keys({"aa": 40, "bb": 25}, "f1"))
    state = sampler.state_dict()
    weighted = GroupSampler(65, 8, seed=1, keys=_weighted({"aa": 40, "bb": 25}, MIXED, "f2"))
    with pytest.raises(DatasetChangedError, match=r"removed none \(the same scans: their weights or tags changed\)"):
        weighted.load_state_dict(state)


def test_next_epoch_starts_the_following_epoch():
    sampler = GroupSampler(65, 8, seed=1, keys=_keys({"aa": 40, "bb": 25}, "f1"))
    sampler.set_epoch(4)
    state = sampler.state_dict(batches_done=2)
    resumed = GroupSampler(70, 8, seed=1, keys=_keys({"aa": 40, "cc": 30}, "f2"))
    resumed.load_state_dict(state, on_dataset_change="next_epoch")
    assert resumed.epoch == 5 and sorted(_served(resumed)) == list(range(70))


@pytest.mark.parametrize(("before", "after"), [(2, 3), (3, 2), (1, 4)])
def test_ranks_share_what_remained_after_a_change_of_world_size(before, after):
    keys = _keys({"aa": 50, "bb": 33}, "f1")
    first = [GroupSampler(83, 4, seed=3, keys=keys, num_replicas=before, rank=r) for r in range(before)]
    served = []
    for sampler in first:
        served += [int(i) for batch, _ in zip(sampler.iter_arrays(), range(3)) for i in batch]
    state = first[0].state_dict(batches_done=3)
    rest = []
    for r in range(after):
        sampler = GroupSampler(83, 4, seed=3, keys=keys, num_replicas=after, rank=r)
        sampler.load_state_dict(state)
        rest += _served(sampler)
    assert set(served) | set(rest) == set(range(83)) and not set(served) & set(rest)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"consumed": -5}, r"state\['consumed'\]=-5; expected a non-negative integer"),
        ({"consumed": 99}, "exceeds"),
        ({"epoch": 1.5}, r"state\['epoch'\]=1.5"),
        ({"seed": "x"}, r"state\['seed'\]='x'"),
    ],
)
def test_a_malformed_state_is_refused_by_name(change, match):
    sampler = GroupSampler(20, 4)
    state = {**sampler.state_dict(), **change}
    with pytest.raises(ParameterError, match=match):
        sampler.load_state_dict(state)


def test_bad_epochs_and_modes_are_refused():
    sampler = GroupSampler(20, 4)
    with pytest.raises(ParameterError, match="epoch=-1; expected a non-negative integer"):
        sampler.set_epoch(-1)
    with pytest.raises(ParameterError, match="on_dataset_change='maybe'"):
        sampler.load_state_dict(sampler.state_dict(), on_dataset_change="maybe")
    with pytest.raises(ParameterError, match="batch_size=2.5"):
        GroupSampler(20, 2.5)


def test_plain_stores_keep_their_order():
    plain = GroupSampler(30, 4, seed=9)
    plain.set_epoch(2)
    np.testing.assert_array_equal(plain.global_order(), np.random.default_rng([9, 2]).permutation(30))


# ---------------------------------------------------------------- weighted epochs
from collections import Counter  # noqa: E402

from ptychodata.dataset import WeightRule, Weights  # noqa: E402

TAGS = {"aa": {"kind": "sim"}, "bb": {"kind": "real"}, "cc": {"kind": "sim"}, "ab": {"kind": "real"}}
MIXED = Weights("repeat", (WeightRule(1.5, tag=("kind", "sim")), WeightRule(0.6, tag=("kind", "real"))))


def _weighted(sizes, weights, fingerprint):
    return keys_of(sizes, fingerprint, weights, TAGS)


def _steps(samplers):
    """The global steps of one pass: rank 0's batch, rank 1's, ... for each step."""
    per_rank = [[b.tolist() for b in sampler.iter_arrays()] for sampler in samplers]
    return [sum((batches[t] for batches in per_rank), []) for t in range(len(per_rank[0]))]


@pytest.mark.parametrize("batching", ["random", "stratified"])
def test_a_weighted_sampler_serves_the_epoch_counts(batching):
    sizes = {"aa": 40, "bb": 25, "cc": 10}
    weights = Weights("repeat", MIXED.rules, batching=batching)
    keys = _weighted(sizes, weights, "f1")
    sampler = GroupSampler(75, 8, seed=2, keys=keys)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        served = np.concatenate(list(sampler.iter_arrays()))
        assert np.bincount(keys.scan[served], minlength=3).tolist() == [60, 15, 15]
    assert sampler.state_dict()["epoch_length"] == 90


def test_stratified_global_batches_hold_each_stratum_within_one_of_its_quota():
    sizes = {"aa": 40, "bb": 25, "cc": 10}
    keys = _weighted(sizes, Weights("repeat", MIXED.rules, batching="stratified"), "f1")
    strata = keys.mixing.strata[keys.scan]  # kind=sim (aa, cc: 75 items), kind=real (bb: 15)
    samplers = [GroupSampler(75, 7, seed=4, keys=keys, num_replicas=2, rank=r) for r in range(2)]
    steps = _steps(samplers)
    totals = np.bincount(np.concatenate([strata[s] for s in steps]), minlength=2)
    assert totals.tolist() == [15, 75] or totals.tolist() == [75, 15]
    for step in steps:
        counts = np.bincount(strata[step], minlength=2)
        quota = len(step) * totals / totals.sum()
        assert np.all(np.abs(counts - quota) <= 1), (counts, quota)


@pytest.mark.parametrize("batching", ["random", "stratified"])
def test_a_weighted_run_resumed_mid_epoch_serves_exactly_the_rest(batching):
    keys = _weighted({"aa": 40, "bb": 25, "cc": 10}, Weights("repeat", MIXED.rules, batching=batching), "f1")
    whole = [GroupSampler(75, 5, seed=8, keys=keys, num_replicas=2, rank=r) for r in range(2)]
    for sampler in whole:
        sampler.set_epoch(3)
    expected = [[b.tolist() for b in s.iter_arrays()] for s in whole]
    first = [GroupSampler(75, 5, seed=8, keys=keys, num_replicas=2, rank=r) for r in range(2)]
    for sampler in first:
        sampler.set_epoch(3)
        for _ in zip(range(4), sampler.iter_arrays()):
            pass
    state = first[0].state_dict(batches_done=4)
    for r in range(2):
        resumed = GroupSampler(75, 5, seed=0, keys=keys, num_replicas=2, rank=r)
        resumed.load_state_dict(state)
        resumed.set_epoch(3)
        assert [b.tolist() for b in resumed.iter_arrays()] == expected[r][4:]


def test_a_stratified_run_resumed_on_three_ranks_deals_what_remained():
    keys = _weighted({"aa": 40, "bb": 25, "cc": 10}, Weights("repeat", MIXED.rules, batching="stratified"), "f1")
    strata = keys.mixing.strata[keys.scan]
    first = [GroupSampler(75, 4, seed=5, keys=keys, num_replicas=2, rank=r) for r in range(2)]
    served = Counter()
    for sampler in first:
        for batch, _ in zip(sampler.iter_arrays(), range(3)):
            served.update(batch.tolist())
    state = first[0].state_dict(batches_done=3)
    later = [GroupSampler(75, 4, seed=5, keys=keys, num_replicas=3, rank=r) for r in range(3)]
    for sampler in later:
        sampler.load_state_dict(state)
    steps = _steps(later)
    rest = Counter(g for step in steps for g in step)
    assert served + rest == Counter(keys.epoch(5, 0).groups.tolist())
    remaining = np.bincount(np.concatenate([strata[s] for s in steps]), minlength=2)
    for step in steps:
        quota = len(step) * remaining / remaining.sum()
        assert np.all(np.abs(np.bincount(strata[step], minlength=2) - quota) <= 1)


@pytest.mark.parametrize("batching", ["random", "stratified"])
def test_continue_on_a_weighted_dataset_serves_each_later_item_once(batching):
    weights = Weights("repeat", MIXED.rules, batching=batching)
    small, large = {"aa": 40, "bb": 25}, {"aa": 40, "bb": 25, "ab": 30}
    before, after = _weighted(small, weights, "f1"), _weighted(large, weights, "f2")
    sampler = GroupSampler(65, 6, seed=3, keys=before)
    sampler.set_epoch(1)
    names_before = [(u, i) for u in sorted(small) for i in range(small[u])]
    consumed = Counter()
    for batch, _ in zip(sampler.iter_arrays(), range(5)):
        consumed.update(names_before[g] for g in batch)
    state = sampler.state_dict(batches_done=5)
    resumed = GroupSampler(95, 6, seed=0, keys=after)
    resumed.load_state_dict(state, on_dataset_change="continue")
    names_after = [(u, i) for u in sorted(large) for i in range(large[u])]
    rest = Counter(names_after[g] for batch in resumed.iter_arrays() for g in batch)
    items = after.epoch(3, 1)
    item_keys = after.item_keys(3, 1, items.groups, items.copies)
    if batching == "random":
        later = item_keys > np.uint64(state["last_key"])
    else:
        stratum = after.mixing.strata[after.scan[items.groups]]
        names = after.mixing.strata_names
        bounds = np.array([state["strata_last"].get(names[s]) or 0 for s in stratum], np.uint64)
        later = item_keys > bounds
    assert rest == Counter(names_after[g] for g in items.groups[later])
    # what was consumed is not served again: per group, consumed + rest copies <= copies in the new epoch
    total = Counter(names_after[g] for g in items.groups)
    assert all(consumed[n] + rest[n] <= total[n] for n in total)
    assert any(name[0] == "ab" for name in rest)
