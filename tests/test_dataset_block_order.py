"""Block order over a dataset's keys, for a corpus larger than memory: each window reads a few
blocks of neighbouring groups of its scans, yet the order stays put when scans are added, follows
the weights, and resumes (also on a changed dataset) without serving an item twice."""

from collections import Counter

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from _group_keys import keys_of  # noqa: E402
from ptychodata.dataset import GroupKeys, WeightRule, Weights  # noqa: E402
from ptychodata.errors import GroupIndexError, ParameterError  # noqa: E402
from ptychodata.torch import GroupSampler  # noqa: E402

TAGS = {"aa": {"kind": "sim"}, "bb": {"kind": "real"}, "cc": {"kind": "sim"}, "ab": {"kind": "real"}}
WEIGHTS = Weights("repeat", (WeightRule(2.5, tag=("kind", "sim")), WeightRule(0.6, tag=("kind", "real"))))


def _keys(sizes: dict[str, int], fingerprint: str, weights: Weights | None = None) -> GroupKeys:
    return keys_of(sizes, fingerprint, weights, TAGS)


def _names(keys: GroupKeys, groups) -> list[tuple[str, int]]:
    return [(keys.uids[keys.scan[g]], int(keys.local[g])) for g in groups]


def _block_copies(keys: GroupKeys, items, block: int, begin: int, end: int) -> set:
    copies = np.zeros(len(items), int) if items.copies is None else items.copies
    return {(int(keys.scan[g]), int(keys.local[g]) // block, int(c))
            for g, c in zip(items.groups[begin:end], copies[begin:end])}


@pytest.mark.parametrize(("block", "window"), [(8, 3), (1, 5), (500, 2), (7, 1)])
def test_every_group_once_and_each_window_is_a_few_whole_blocks_in_key_order(block, window):
    keys = _keys({"aa": 100, "bb": 37, "cc": 250}, "f")
    items = keys.epoch(4, 2, block=block, window=window)
    assert np.array_equal(np.sort(items.groups), np.arange(387))
    bounds = items.windows
    assert bounds[0] == 0 and bounds[-1] == 387 and np.all(np.diff(bounds) > 0)
    assert len(items.window_keys) == len(bounds) - 1
    for w, (begin, end) in enumerate(zip(bounds[:-1], bounds[1:])):
        blocks = _block_copies(keys, items, block, begin, end)
        assert len(blocks) <= window
        whole = [g for g in range(387) if (int(keys.scan[g]), int(keys.local[g]) // block, 0) in blocks]
        assert sorted(items.groups[begin:end].tolist()) == whole  # whole blocks, nothing else
        item_keys = keys.item_keys(4, 2, items.groups[begin:end])
        assert np.all(np.diff(item_keys.astype(np.float64)) >= 0)  # the window's items by their keys
        block_keys = keys.block_keys(4, 2, block, items.groups[begin:end])
        assert [block_keys.min(), block_keys.max()] == items.window_keys[w].tolist()
    assert not np.array_equal(items.groups, keys.epoch(4, 3, block=block, window=window).groups) or block >= 250


def test_adding_a_scan_moves_no_block_of_the_others_ahead_of_another():
    small = {"aa": 100, "bb": 37, "cc": 250}
    before, after = _keys(small, "f1"), _keys({**small, "ab": 90}, "f2")
    block, window = 8, 3

    def window_of_each_block(keys):
        items = keys.epoch(6, 1, block=block, window=window)
        at = {}
        for w, (begin, end) in enumerate(zip(items.windows[:-1], items.windows[1:])):
            for uid, local in _names(keys, items.groups[begin:end]):
                at[(uid, local // block)] = w
        return at

    old, new = window_of_each_block(before), window_of_each_block(after)
    spans = [[new[b] for b in old if old[b] == w] for w in range(max(old.values()) + 1)]
    assert all(max(a) <= min(b) for a, b in zip(spans, spans[1:]))  # a block after another stays after it
    assert any(uid == "ab" for uid, _ in new)


def test_a_weighted_epoch_in_block_order_holds_the_weighted_items():
    keys = _keys({"aa": 40, "bb": 25, "cc": 10}, "f", WEIGHTS)
    plain = keys.epoch(3, 5)
    items = keys.epoch(3, 5, block=6, window=2)
    assert Counter(zip(items.groups.tolist(), items.copies.tolist())) == \
        Counter(zip(plain.groups.tolist(), plain.copies.tolist()))
    assert len(items) == 40 * 5 // 2 + 15 + 25  # aa and cc 2.5 times, bb 0.6 times
    for begin, end in zip(items.windows[:-1], items.windows[1:]):
        assert len(_block_copies(keys, items, 6, begin, end)) <= 2  # copies of one block are blocks of their own


def test_a_block_ordered_run_resumed_on_other_ranks_serves_exactly_the_rest():
    keys = _keys({"aa": 100, "bb": 37, "cc": 250}, "f", WEIGHTS)
    n = len(keys.identities)
    first = [GroupSampler(n, 5, seed=8, keys=keys, block=16, window=2, num_replicas=2, rank=r) for r in range(2)]
    served = Counter()
    for sampler in first:
        sampler.set_epoch(1)
        for batch, _ in zip(sampler.iter_arrays(), range(7)):
            served.update(batch.tolist())
    state = first[0].state_dict(batches_done=7)
    assert state["block"] == [16, 2] and len(state["window_keys"]) == 2 and state["served"] == []
    whole = keys.epoch(8, 1, block=16, window=2)
    rest = Counter()
    for r in range(3):
        resumed = GroupSampler(n, 4, seed=0, keys=keys, num_replicas=3, rank=r)  # no block given: the state's
        resumed.load_state_dict(state)
        resumed.set_epoch(1)
        np.testing.assert_array_equal(resumed.remaining(), whole.groups[7 * 2 * 5 :])
        rest.update(int(g) for batch in resumed.iter_arrays() for g in batch)
    assert Counter(whole.groups.tolist()) - (served + rest) == Counter()  # every item served
    assert sum((served + rest).values()) - len(whole) < 3  # and no more than the padding of the last step


@pytest.mark.parametrize("weights", [None, WEIGHTS], ids=["plain", "weighted"])
def test_continue_on_a_grown_dataset_serves_each_later_item_once_and_stays_in_block_order(weights):
    block, window = 8, 2
    sizes = [{"aa": 60, "bb": 37}, {"aa": 60, "bb": 37, "cc": 50}, {"aa": 60, "bb": 37, "cc": 50, "ab": 45}]
    keys = [_keys(s, f"f{i}", weights) for i, s in enumerate(sizes)]
    consumed = Counter()
    sampler = GroupSampler(len(keys[0].identities), 6, seed=3, keys=keys[0], block=block, window=window)
    sampler.set_epoch(2)
    states = []
    for k in range(3):  # serve 4 batches, save, continue on the next composition (twice), then finish
        if k:
            sampler = GroupSampler(len(keys[k].identities), 6, seed=0, keys=keys[k])
            sampler.load_state_dict(states[-1], on_dataset_change="continue")
        items = sampler._plan().items
        for begin, end in zip(items.windows[:-1], items.windows[1:]):  # the rest is still in windows of blocks
            assert len(_block_copies(keys[k], items, block, begin, end)) <= window
        batches = list(sampler.iter_arrays()) if k == 2 else [b for b, _ in zip(sampler.iter_arrays(), range(4))]
        consumed.update(name for batch in batches for name in _names(keys[k], batch))
        states.append(sampler.state_dict(batches_done=len(batches)))
    assert [len(state["served"]) for state in states] == [0, 1, 2]
    last = keys[2].epoch(3, 2, block=block, window=window)
    total = Counter(_names(keys[2], last.groups))
    assert all(consumed[name] <= total[name] for name in total)  # nothing served twice (more than its copies)
    # the scans there from the start: every copy of every group served, in one of the three runs
    assert all(consumed[name] == total[name] for name in total if name[0] in ("aa", "bb"))
    assert {name[0] for name in consumed} == {"aa", "bb", "cc", "ab"}
    # everything in a block after the last window the first two runs stopped in was served
    stopped = max(states[1]["window_keys"][1], states[0]["window_keys"][1])
    later = keys[2].block_keys(3, 2, block, last.groups, last.copies) > np.uint64(stopped)
    assert Counter(_names(keys[2], last.groups[later])) - consumed == Counter()


def test_a_strict_resume_after_a_continue_serves_what_the_continued_run_would():
    block = 8
    before, after = _keys({"aa": 60, "bb": 37}, "f1"), _keys({"aa": 60, "bb": 37, "cc": 50}, "f2")
    first = GroupSampler(97, 5, seed=1, keys=before, block=block, window=2)
    for _ in zip(first.iter_arrays(), range(3)):
        pass
    continued = GroupSampler(147, 5, seed=1, keys=after)
    continued.load_state_dict(first.state_dict(batches_done=3), on_dataset_change="continue")
    batches = [b.tolist() for b in continued.iter_arrays()]
    again = GroupSampler(147, 5, seed=1, keys=after)
    again.load_state_dict(first.state_dict(batches_done=3), on_dataset_change="continue")
    for _ in zip(again.iter_arrays(), range(4)):
        pass
    state = again.state_dict(batches_done=4)
    strict = GroupSampler(147, 5, seed=1, keys=after)
    strict.load_state_dict(state)
    assert [b.tolist() for b in strict.iter_arrays()] == batches[4:]


@pytest.mark.parametrize(("change", "message"), [
    ({"window_keys": [1]}, r"state\['window_keys'\]=\[1\]; expected what state_dict\(\) returned"),
    ({"window_keys": [1, -2]}, r"state\['window_keys'\]"),
    ({"served": [[1, 2]]}, r"state\['served'\]=\[\[1, 2\]\]"),
    ({"served": "x"}, r"state\['served'\]='x'"),
    ({"served": [[1, 2, 2**64]]}, r"state\['served'\]"),
])
def test_a_damaged_block_state_is_named(change, message):
    keys = _keys({"aa": 60, "bb": 37}, "f1")
    sampler = GroupSampler(97, 5, seed=1, keys=keys, block=8)
    for _ in zip(sampler.iter_arrays(), range(3)):
        pass
    state = {**sampler.state_dict(batches_done=3), **change}
    with pytest.raises(ParameterError, match=message):
        GroupSampler(97, 5, keys=keys).load_state_dict(state)


def test_block_order_needs_keys_that_know_each_groups_place():
    bare = GroupKeys(np.arange(5, dtype=np.uint64), "f", ("aa",))
    with pytest.raises(ParameterError, match="block=2 with keys that lack each group's scan and index in it"):
        bare.epoch(0, 0, block=2)
    assert len(bare.epoch(0, 0)) == 5


def test_continue_without_the_window_keys_is_named():
    before, after = _keys({"aa": 60, "bb": 37}, "f1"), _keys({"aa": 60, "bb": 37, "cc": 50}, "f2")
    sampler = GroupSampler(97, 5, seed=1, keys=before, block=8)
    for _ in zip(sampler.iter_arrays(), range(3)):
        pass
    state = sampler.state_dict(batches_done=3)
    del state["window_keys"]
    with pytest.raises(ParameterError, match=r"state\['last_key'\] in block order without state\['window_keys'\]"):
        GroupSampler(147, 5, keys=after).load_state_dict(state, on_dataset_change="continue")


def test_a_dataset_reads_its_scans_ahead_and_releases_them(tmp_path, monkeypatch):
    from ptychodata import Dataset, GroupingConfig, open_dataset, simulate
    from ptychodata.store import Store
    from ptychodata.torch import _loader, make_loader

    files = []
    for name, seed, points in (("a", 1, 36), ("b", 2, 49), ("c", 3, 30)):
        files.append(simulate(points, 16, seed=seed, progress=False).save(tmp_path / f"{name}.npz"))
    Dataset.create("blocks", GroupingConfig(gridsize=1, seed=0), cache_dir=tmp_path / "cache").add(files)
    with open_dataset("blocks", cache_dir=tmp_path / "cache") as data:
        calls = []
        for method in ("read_ahead", "release"):
            original = getattr(Store, method)

            def spy(store, indices, *, original=original, method=method, **options):
                calls.append((method, store, np.asarray(indices).copy(), options.get("reader")))
                return original(store, indices, **options)

            monkeypatch.setattr(Store, method, spy)
        monkeypatch.setattr(_loader, "available_memory", lambda: 1)
        with pytest.warns(UserWarning, match=r"a shuffled epoch of a dataset whose patterns .* block=4096"):
            make_loader(data, 5, background=0)
        with pytest.warns(UserWarning, match="block=4, window=16: two windows"):
            loader = make_loader(data, 5, block=4, seed=2, background=0)
        assert loader.sampler.release == data.release
        served = [(int(e), int(g)) for batch in loader
                  for e, g in zip(batch["experiment_id"].tolist(), batch["group_index"].tolist())]
        assert sorted(g for _, g in served) == list(range(len(data)))
        assert {method for method, *_ in calls} == {"read_ahead", "release"}
        for method, store, local, reader in calls:  # each scan's own positions, on the dataset's one thread
            k = data.stores.index(store)
            assert reader is data._reading_ahead and len(local) and local.max() < len(store)
            assert method == "release" or set((local + data.group_offsets[k]).tolist()) <= {g for _, g in served}
        assert data.read_ahead([]).result(timeout=10) is None
        with pytest.raises(GroupIndexError, match=f"group index {len(data)} out of range"):
            data.read_ahead([len(data)])
        monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)  # rank 0 of 2 on this machine
        monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
        monkeypatch.setattr(torch.distributed, "get_rank", lambda: 0)
        with pytest.warns(UserWarning, match="two windows"):
            release = make_loader(data, 5, block=4, background=0).sampler.release
        assert release.func == data.release and release.keywords == {"page_cache": False}
        calls.clear()
        release(np.arange(len(data))).result(timeout=10)
        assert {(method, options_reader is data._reading_ahead) for method, _, _, options_reader in calls} == \
            {("release", True)}


def test_equal_keys_in_a_window_keep_their_positions_and_huge_block_ids_keep_their_order():
    from ptychodata.dataset._order import _block_copy_ids, _by_key

    np.testing.assert_array_equal(_by_key(np.array([3, 1, 3, 1, 0], np.uint64)), [4, 1, 3, 0, 2])
    np.testing.assert_array_equal(_by_key(np.array([5, 2, 9], np.uint64)), [1, 0, 2])
    scan, copies = np.array([1, 0, 1, 0, 1]), np.array([0, 2, 0, 1, 1], np.uint32)
    for number in (np.array([7, 3, 2, 3, 0]), np.array([2**61, 3, 2, 2**61, 0])):  # the second overflows one id
        ids = _block_copy_ids(scan, copies, number)
        expected = sorted(range(5), key=lambda i: (scan[i], copies[i], number[i]))
        assert sorted(range(5), key=lambda i: ids[i]) == expected
        assert len(set(ids.tolist())) == 5
