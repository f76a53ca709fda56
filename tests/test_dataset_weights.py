"""Mixing weights: exact per-epoch counts per mode, fractional parts resampled per epoch or
fixed and kept when scans are added, stratified batches within one of their quota, resumes."""

from collections import Counter

import numpy as np
import pytest

from _group_keys import keys_of
from ptychodata.dataset import WeightRule, Weights, stratified_steps
from ptychodata.dataset._order import _Keys, _salt, key_order
from ptychodata.errors import ParameterError

SIZES = {"aa": 40, "bb": 25, "cc": 10}
TAGS = {"aa": {"kind": "sim"}, "bb": {"kind": "real"}, "cc": {"kind": "sim"}, "ab": {"kind": "new"}, "ac": {"kind": "sim"}}


def _keys(sizes, weights=None, fingerprint="f"):
    keys = keys_of(sizes, fingerprint, weights, TAGS)
    return keys, list(keys.uids), keys.scan, keys.local


def _names(uids, scan, local, groups):
    return [(uids[scan[g]], int(local[g])) for g in groups]


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        # repeat: round(w n) (halves up); scan rule beats tag rule; unnamed scans once
        (Weights("repeat", (WeightRule(1.5, tag=("kind", "sim")), WeightRule(0.3, uid="bb"))),
         {"aa": 60, "bb": 8, "cc": 15}),
        # choose: a tag's count shared among its scans by their sizes (7 x 40/50 = 5.6 -> 6, 1.4 -> 1)
        (Weights("choose", (WeightRule(7, tag=("kind", "sim")),)), {"aa": 6, "bb": 25, "cc": 1}),
        (Weights("choose", (WeightRule(90, uid="cc"),)), {"aa": 40, "bb": 25, "cc": 90}),
        # proportion: real 0.5 of 101 = 50.5 -> 51; the rest (0.5 -> 50) shared 40:10
        (Weights("proportion", (WeightRule(0.5, tag=("kind", "real")),), epoch_size=101),
         {"aa": 40, "bb": 51, "cc": 10}),
        # default epoch size: the groups served (75); 0.2 -> 15 to bb, 60 to the others 48:12
        (Weights("proportion", (WeightRule(0.2, uid="bb"),)), {"aa": 48, "bb": 15, "cc": 12}),
    ],
)
def test_each_epoch_holds_exactly_the_counts_of_each_mode(weights, expected):
    keys, uids, scan, local = _keys(SIZES, weights)
    for epoch in range(3):
        items = keys.epoch(4, epoch)
        counts = dict(zip(uids, np.bincount(scan[items.groups], minlength=len(uids)).tolist()))
        assert counts == expected
        per_group = np.bincount(items.groups, minlength=len(scan))
        for k, uid in enumerate(uids):  # whole parts everywhere, the remainder one copy more
            whole = expected[uid] // SIZES[uid]
            assert set(per_group[scan == k].tolist()) <= {whole, whole + 1}
        pairs = list(zip(items.groups.tolist(), items.copies.tolist()))
        assert len(set(pairs)) == len(pairs)  # copy c of a group once
        keys_in_order = keys.item_keys(4, epoch, items.groups, items.copies)
        assert np.all(np.diff(keys_in_order.astype(np.float64)) >= 0) and np.all(keys_in_order[1:] != keys_in_order[:-1])


def test_fractional_parts_are_drawn_anew_each_epoch_or_kept_fixed():
    chosen = {}
    for resample in ("epoch", "fixed"):
        keys, _, scan, _ = _keys(SIZES, Weights("repeat", (WeightRule(0.5, uid="aa"),), resample=resample))
        chosen[resample] = [frozenset(np.flatnonzero(keys.copies_per_group(9, e)[scan == 0]).tolist()) for e in range(4)]
        assert all(len(c) == 20 for c in chosen[resample])
    assert len(set(chosen["epoch"])) == 4
    assert len(set(chosen["fixed"])) == 1


@pytest.mark.parametrize("resample", ["epoch", "fixed"])
@pytest.mark.parametrize("mode", ["repeat", "choose"])
def test_adding_a_scan_changes_neither_the_choices_nor_the_order_of_the_others(mode, resample):
    value = 1.7 if mode == "repeat" else 33
    weights = Weights(mode, (WeightRule(value, tag=("kind", "sim")), WeightRule(value, uid="bb")), resample=resample)
    before = _keys(SIZES, weights, "f1")
    after = _keys({**SIZES, "ab": 30}, weights, "f2")
    for epoch in (0, 5):
        served = []
        for keys, uids, scan, local in (before, after):
            items = keys.epoch(2, epoch)
            names = _names(uids, scan, local, items.groups)
            served.append([(n, int(c)) for n, c in zip(names, items.copies) if n[0] != "ab"])
        assert served[0] == served[1]


def test_a_count_shared_anew_keeps_the_groups_chosen_before():
    """A scan joining a tag whose count is shared: the others' counts change, and the groups
    each keeps are those it had (its smallest choice keys), or more of the same order."""
    weights = Weights("choose", (WeightRule(30, tag=("kind", "sim")),))
    before, uids, scan, local = _keys(SIZES, weights)
    after, uids2, scan2, local2 = _keys({**SIZES, "ac": 50}, weights)
    assert after.mixing.counts.tolist() != before.mixing.counts.tolist()
    for epoch in (0, 1):
        old = before.copies_per_group(6, epoch)
        new = after.copies_per_group(6, epoch)
        for uid in ("aa", "cc"):
            kept_before = {int(local[g]) for g in np.flatnonzero((scan == uids.index(uid)) & (old > 0))}
            kept_after = {int(local2[g]) for g in np.flatnonzero((scan2 == uids2.index(uid)) & (new > 0))}
            assert kept_after <= kept_before or kept_before <= kept_after


def test_copy_zero_keys_are_the_unweighted_keys_and_unweighted_order_is_argsort():
    weighted, _, _, _ = _keys(SIZES, Weights("repeat", (WeightRule(2, uid="aa"),)))
    plain, _, _, _ = _keys(SIZES)
    groups = np.arange(75)
    np.testing.assert_array_equal(weighted.item_keys(3, 1, groups), plain.keys(3, 1))
    np.testing.assert_array_equal(plain.order(3, 1), np.argsort(plain.keys(3, 1), kind="stable"))


@pytest.mark.parametrize("n", [1, 2, 1000, 600_000, 1_300_000])
def test_key_order_is_a_stable_argsort_even_with_equal_keys(n):
    rng = np.random.default_rng(n)
    identities = rng.integers(0, 2**64, n, dtype=np.uint64)
    identities[rng.integers(0, n, n // 7)] = identities[0]  # equal identities: equal keys, ties by position
    source = _Keys(identities, _salt(1, 2))
    np.testing.assert_array_equal(key_order(source)[0], np.argsort(source.at(0, n), kind="stable"))


class _Clustered(_Keys):
    """Keys whose top bits collide a lot, so the truncated keys tie and are sorted again."""

    def __init__(self, keys):
        super().__init__(np.zeros(len(keys), np.uint64), np.uint64(0))
        self.keys_ = keys

    def at(self, start, stop, select=None):
        return (self.keys_[start:stop] if select is None else self.keys_[select + start]).copy()

    def of_labels(self, labels):
        return self.keys_[labels.astype(np.int64)]


def test_key_order_sorts_truncated_ties_by_their_whole_keys():
    rng = np.random.default_rng(0)
    n = 1_100_000
    keys = (rng.integers(0, 40, n, dtype=np.uint64) << np.uint64(38)) | rng.integers(0, 2**38, n, dtype=np.uint64)
    np.testing.assert_array_equal(key_order(_Clustered(keys))[0], np.argsort(keys, kind="stable"))


def test_stratified_steps_keep_every_batch_within_one_of_its_quota():
    rng = np.random.default_rng(3)
    for _ in range(300):
        counts = rng.integers(0, 200, int(rng.integers(1, 9)))
        if rng.random() < 0.3:
            counts[0] = rng.integers(500, 3000)
        if not counts.sum():
            continue
        step = int(rng.integers(1, 80))
        table = stratified_steps(counts, step)
        sizes = table.sum(axis=1)
        np.testing.assert_array_equal(table.sum(axis=0), counts)
        assert np.all(sizes[:-1] == step) and 0 < sizes[-1] <= step
        quota = sizes[:, None] * counts[None, :] / counts.sum()
        assert np.all(np.abs(table - quota) <= 1)


def test_weights_are_checked_by_name():
    with pytest.raises(ParameterError, match="mode='often'; expected one of 'repeat', 'choose', 'proportion'"):
        Weights("often", (WeightRule(1, uid="aa"),))
    with pytest.raises(ParameterError, match=r"weight of kind=sim: -1; expected a finite number >= 0"):
        Weights("repeat", (WeightRule(-1, tag=("kind", "sim")),))
    with pytest.raises(ParameterError, match="mode 'choose' counts groups: expected an integer"):
        Weights("choose", (WeightRule(2.5, uid="aa"),))
    with pytest.raises(ParameterError, match="proportion weights sum to 1.2; expected at most 1"):
        Weights("proportion", (WeightRule(0.6, uid="aa"), WeightRule(0.6, uid="bb")))
    with pytest.raises(ParameterError, match="epoch_size=10 with mode='repeat'"):
        Weights("repeat", (WeightRule(1, uid="aa"),), epoch_size=10)
    with pytest.raises(ParameterError, match="scan aa weighted twice"):
        Weights("repeat", (WeightRule(1, uid="aa"), WeightRule(2, uid="aa")))
    zero = Weights("repeat", (WeightRule(0, tag=("kind", "sim")), WeightRule(0, uid="bb")))
    with pytest.raises(ParameterError, match="leave no group in an epoch of these 3 scan"):
        _keys(SIZES, zero)


def test_a_scan_weight_leaves_with_its_scan():
    weights = Weights("repeat", (WeightRule(2, uid="aa"), WeightRule(3, tag=("kind", "sim"))))
    kept = weights.keeping({"bb", "cc"})
    assert [rule.label for rule in kept.rules] == ["kind=sim"]
    assert weights.keeping({"aa"}) is weights
    assert Weights("repeat", (WeightRule(2, uid="aa"),)).keeping({"bb"}) is None


# ---------------------------------------------------------------- on a dataset
@pytest.fixture(scope="module")
def tagged(tmp_path_factory):
    """Three small simulated scans: two tagged kind=sim, one kind=real."""
    from ptychodata import Dataset, GroupingConfig, simulate

    root = tmp_path_factory.mktemp("weighted")
    paths = [simulate(points, 16, seed=seed, progress=False).save(root / f"w{seed}.npz")
             for seed, points in ((1, 30), (2, 36), (3, 25))]
    dataset = Dataset.create("mix", GroupingConfig(gridsize=2, neighbor_count=5, seed=3), cache_dir=root / "cache")
    dataset.add(paths[:2], tags={"kind": "sim"})
    dataset.add(paths[2], tags={"kind": "real"})
    return dataset, paths


def test_weights_are_part_of_the_fingerprint_and_published_like_a_change(tagged):
    from ptychodata import open_dataset

    dataset, paths = tagged
    plain = dataset.build_id
    change = dataset.set_weights({"kind=sim": 2, paths[2].name: 0.5}, batching="stratified")
    try:
        assert change.build_id == dataset.build_id != plain
        assert dataset.manifest(plain).weights is None  # the earlier build is unchanged
        info = dataset.info()
        assert info["weights"]["mode"] == "repeat" and info["weights"]["batching"] == "stratified"
        groups = {scan["name"]: (scan["n_groups"], scan["epoch_groups"], scan["stratum"]) for scan in info["scans"]}
        assert groups["w1.npz"][1] == 2 * groups["w1.npz"][0] and groups["w1.npz"][2] == "kind=sim"
        assert groups["w3.npz"][1] == (groups["w3.npz"][0] + 1) // 2
        assert groups["w3.npz"][2].startswith("scan ")
        again = dataset.set_weights({"kind=sim": 2, paths[2].name: 0.5}, batching="stratified")
        assert again.build_id == change.build_id  # the same weights: the same build
        changes = dataset.diff(plain)
        assert changes["added"] == changes["removed"] == [] and changes["weights"]["before"] is None
        assert changes["weights"]["after"]["batching"] == "stratified"
        with open_dataset("mix", cache_dir=dataset.cache_dir) as data:
            assert data.weights == dataset.weights
            assert data.without_weights().group_keys().mixing is None
            keys = data.group_keys()
            assert int(keys.mixing.counts.sum()) == sum(g[1] for g in groups.values())
    finally:
        dataset.set_weights(None)
    assert dataset.build_id == plain  # the same composition without weights: the same fingerprint


def test_removing_a_scan_drops_its_weight_and_unknown_names_are_refused(tagged, tmp_path):
    from ptychodata import Dataset

    dataset, paths = tagged
    copy = Dataset.create("mix2", dataset.spec.config, cache_dir=dataset.cache_dir)
    copy.add(paths, tags={"kind": "sim"})
    copy.set_weights({paths[0].name: 3, "kind=sim": 2})
    copy.remove(paths[0].name)
    assert [rule.label for rule in copy.weights.rules] == ["kind=sim"]
    with pytest.raises(ParameterError, match=r"weight of 'nosuch.npz': no scan of dataset 'mix2' .* \(its scans: "):
        copy.set_weights({"nosuch.npz": 2})
    with pytest.raises(ParameterError, match="leave no group in an epoch"):
        copy.set_weights({"kind=sim": 0})
    with pytest.raises(ParameterError, match="weights of type list"):
        copy.set_weights([("kind=sim", 2)])


def test_loader_batches_name_their_scans_and_follow_the_weights(tagged):
    pytest.importorskip("torch")
    from ptychodata import open_dataset
    from ptychodata.torch import make_loader

    dataset, paths = tagged
    dataset.set_weights({"kind=real": 3}, mode="repeat")
    try:
        with open_dataset("mix", cache_dir=dataset.cache_dir) as data:
            sizes = {b.uid: b.n_groups for b in dataset.scans()}
            tags = {e.uid: e.tags["kind"] for e in dataset.manifest().scans}
            loader = make_loader(data, batch_size=16, num_workers=0, background=0, seed=1)
            seen = Counter()
            for batch in loader:
                uids = [data.uids[k] for k in batch["experiment_id"].tolist()]
                for uid, group in zip(uids, batch["group_index"].tolist()):
                    offset = sum(sizes[u] for u in data.uids[: data.uids.index(uid)])
                    assert 0 <= group - offset < sizes[uid]  # the row's group is a group of that scan
                seen.update(uids)
            assert seen == {uid: sizes[uid] * (3 if tags[uid] == "real" else 1) for uid in sizes}
    finally:
        dataset.set_weights(None)


@pytest.mark.parametrize("seed", range(6))
def test_the_smallest_keys_are_chosen_as_a_full_sort_would_ties_by_position(seed):
    from ptychodata.dataset._order import smallest

    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    members = np.sort(rng.choice(10 * n, n, replace=False)).astype(np.int32)
    keys = rng.integers(0, 4 if seed % 2 else 2**63, n).astype(np.uint64)  # odd seeds: many ties
    for r in {0, 1, n // 3, n // 2, n - 1, n}:
        expected = np.sort(members[np.lexsort((members, keys))[:r]])
        np.testing.assert_array_equal(smallest(members, keys, r), expected)
