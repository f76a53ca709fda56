"""Hostile loader states: a saved state edited by hand or from another run, crafted epochs,
batch sizes and modes. Each is refused by name (ParameterError, or DatasetChangedError for a
state of another dataset), never served as a wrong epoch."""

from __future__ import annotations

import pytest

from ptychodata.errors import DatasetChangedError, ParameterError

from ._harness import expect_error, expect_ok, run_case

pytest.importorskip("torch")

TIMEOUT = 30.0


def resume(change: dict, mode: str = "strict", drop: tuple[str, ...] = (), n_groups: int = 20,
           batch_size: int = 4) -> list[int]:
    """Save a sampler's state after two batches, apply ``change`` and remove the keys ``drop``, load
    it into a fresh sampler; the groups the resumed sampler serves."""
    from ptychodata.torch import GroupSampler

    sampler = GroupSampler(n_groups, batch_size, seed=3, num_replicas=1, rank=0)
    for _ in zip(range(2), sampler):
        pass
    state = {**sampler.state_dict(batches_done=2), **change}
    for key in drop:
        del state[key]
    resumed = GroupSampler(n_groups, batch_size, seed=3, num_replicas=1, rank=0)
    resumed.load_state_dict(state, on_dataset_change=mode)
    return [index for batch in resumed for index in batch]


def resume_keyed(change: dict, mode: str, block: int | None = None) -> int:
    """A keyed (dataset) sampler's state (in block order with ``block``) loaded into a sampler of
    other scans."""
    import numpy as np

    from ptychodata.dataset import GroupKeys
    from ptychodata.torch import GroupSampler

    def keys(sizes: dict[str, int], fingerprint: str) -> GroupKeys:
        scan = np.repeat(np.arange(len(sizes)), list(sizes.values()))
        local = np.concatenate([np.arange(n) for n in sizes.values()])
        return GroupKeys.of(list(sizes), scan, local, fingerprint)

    sampler = GroupSampler(30, 5, seed=1, keys=keys({"aa": 20, "bb": 10}, "f1"), num_replicas=1, rank=0,
                           block=block)
    for _ in zip(range(2), sampler):
        pass
    state = {**sampler.state_dict(batches_done=2), **change}
    resumed = GroupSampler(35, 5, seed=1, keys=keys({"aa": 20, "cc": 15}, "f2"), num_replicas=1, rank=0)
    resumed.load_state_dict(state, on_dataset_change=mode)
    return sum(len(batch) for batch in resumed)


def set_epoch(epoch) -> None:
    from ptychodata.torch import GroupSampler

    GroupSampler(20, 4).set_epoch(epoch)


def make_sampler(n_groups, batch_size) -> int:
    from ptychodata.torch import GroupSampler

    return len(GroupSampler(n_groups, batch_size))


STATES = {
    "consumed negative": ({"consumed": -5}, r"consumed'\]=-5"),
    "consumed past the epoch": ({"consumed": 21}, "exceeds"),
    "consumed a float": ({"consumed": 2.5}, r"consumed'\]=2.5"),
    "consumed text": ({"consumed": "8"}, r"consumed'\]='8'"),
    "consumed a bool": ({"consumed": True}, r"consumed'\]=True"),
    "epoch negative": ({"epoch": -1}, r"epoch'\]=-1"),
    "epoch a float": ({"epoch": 1.5}, r"epoch'\]=1.5"),
    "epoch huge": ({"epoch": 2**80}, r"epoch"),
    "seed text": ({"seed": "x"}, r"seed'\]='x'"),
    "seed None": ({"seed": None}, r"seed'\]=None"),
    "n_groups of another store": ({"n_groups": 21}, r"state is for 21 groups, this sampler has 20"),
    "n_groups negative": ({"n_groups": -20}, r"n_groups"),
    "shuffle text": ({"shuffle": "yes"}, r"shuffle'\]='yes'"),
    "last_key text": ({"last_key": "0xdead"}, r"last_key'\]='0xdead'"),
    "last_key negative": ({"last_key": -1}, r"last_key'\]=-1"),
    "uids not strings": ({"uids": [1, 2]}, r"uids"),
}
MISSING = ["epoch", "seed", "consumed", "n_groups"]


@pytest.mark.parametrize("case", list(STATES))
def test_an_edited_state_is_refused_by_name(case):
    change, match = STATES[case]
    expect_error(run_case(resume, change, timeout=TIMEOUT), ParameterError, match=match)


@pytest.mark.parametrize("key", MISSING)
def test_a_state_without_a_key_is_refused_by_name(key):
    expect_error(run_case(resume, {}, "strict", (key,), timeout=TIMEOUT), ParameterError, match=key)


def test_a_state_that_is_no_dict_is_refused_by_name():
    from ptychodata.torch import GroupSampler

    for state in ([1, 2], "state", None, 3):
        with pytest.raises(ParameterError, match="state"):
            GroupSampler(20, 4).load_state_dict(state)


def test_an_unknown_mode_is_refused_by_name():
    expect_error(run_case(resume, {}, "maybe", timeout=TIMEOUT), ParameterError, match="on_dataset_change='maybe'")


def test_an_untouched_state_resumes_with_the_rest_of_the_epoch():
    served = expect_ok(run_case(resume, {}, timeout=TIMEOUT))
    assert len(served) == 20 - 8 and len(set(served)) == 12


@pytest.mark.parametrize("mode", ["strict", "continue", "next_epoch"])
def test_a_state_of_another_dataset(mode):
    outcome = run_case(resume_keyed, {}, mode, timeout=TIMEOUT)
    if mode == "strict":
        expect_error(outcome, DatasetChangedError, match="added cc.*removed bb")
    else:
        assert 0 < expect_ok(outcome) <= 35


def test_a_keyed_state_with_a_forged_last_key_is_refused_by_name():
    expect_error(run_case(resume_keyed, {"last_key": "0xdead"}, "continue", timeout=TIMEOUT), ParameterError,
                 match="last_key")


BLOCK_STATES = {
    "window keys of one number": ({"window_keys": [1]}, r"state\['window_keys'\]=\[1\]"),
    "window keys negative": ({"window_keys": [-1, 2]}, r"window_keys"),
    "served runs of two numbers": ({"served": [[1, 2]]}, r"state\['served'\]=\[\[1, 2\]\]"),
    "served as text": ({"served": "all"}, r"state\['served'\]='all'"),
    "served past 64 bits": ({"served": [[0, 1, 2**64]]}, r"served"),
    "served runs without end": ({"served": [[0, 0, 0]] * 1025}, r"holds 1025 runs"),
    "no window keys": ({"window_keys": None}, r"without state\['window_keys'\]"),
}


@pytest.mark.parametrize("case", list(BLOCK_STATES))
def test_an_edited_block_order_state_is_refused_by_name(case):
    change, match = BLOCK_STATES[case]
    expect_error(run_case(resume_keyed, change, "continue", 4, timeout=TIMEOUT), ParameterError, match=match)


def test_a_block_order_state_of_another_dataset_continues():
    assert 0 < expect_ok(run_case(resume_keyed, {}, "continue", 4, timeout=TIMEOUT)) <= 35


@pytest.mark.parametrize("epoch", [-1, 1.5, "2", None, True])
def test_a_bad_epoch_is_refused_by_name(epoch):
    expect_error(run_case(set_epoch, epoch, timeout=TIMEOUT), ParameterError, match="epoch=")


@pytest.mark.parametrize(("n_groups", "batch_size"), [(20, 0), (20, -4), (20, 2.5), (20, "4"), (-1, 4), (2.5, 4)])
def test_a_bad_sampler_size_is_refused_by_name(n_groups, batch_size):
    expect_error(run_case(make_sampler, n_groups, batch_size, timeout=TIMEOUT), ParameterError)
