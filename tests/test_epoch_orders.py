"""A store's epoch orders: the permutation of (seed, epoch), the next one computed on a thread
while an epoch is served, and the same orders however they are asked for."""

import pickle
import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from ptychodata.torch import GroupSampler, block_order  # noqa: E402
from ptychodata.torch._epoch_orders import EpochOrders, store_order  # noqa: E402


def test_an_epochs_order_is_the_permutation_of_seed_and_epoch():
    expected = np.random.default_rng([5, 3]).permutation(1000)
    np.testing.assert_array_equal(store_order(1000, 5, 3, None, 16), expected)
    np.testing.assert_array_equal(store_order(1000, 5, 3, 50, 4), block_order(1000, 5, 3, block=50, window=4))
    assert store_order(1000, 5, 3, None, 16).dtype == np.int64


def test_the_next_epoch_is_computed_on_a_thread_and_used_only_for_that_epoch(monkeypatch):
    from ptychodata.torch import _epoch_orders

    threads = []

    def recording(*key):
        threads.append((threading.current_thread().name, key[2]))
        return store_order(*key)

    monkeypatch.setattr(_epoch_orders, "store_order", recording)
    orders = EpochOrders()
    first = orders.get(500, 1, 0, None, 16, ahead=True)
    second = orders.get(500, 1, 1, None, 16, ahead=True)  # computed ahead, on the order thread
    other_seed = orders.get(500, 2, 2, None, 16)  # not what was computed ahead (epoch 2, seed 1)
    for epoch, order in ((0, first), (1, second)):
        np.testing.assert_array_equal(order, np.random.default_rng([1, epoch]).permutation(500))
    np.testing.assert_array_equal(other_seed, np.random.default_rng([2, 2]).permutation(500))
    here = threading.current_thread().name
    assert [epoch for name, epoch in threads if name == here] == [0, 2]
    ahead = [epoch for name, epoch in threads if name.startswith("ptychodata-order")]
    assert ahead[:1] == [1] and set(ahead) <= {1, 2}  # epoch 2 of seed 1 may have been computed, unused


def test_a_sampler_serves_the_same_epochs_with_orders_ahead_and_pickles():
    sampler = GroupSampler(300, 32, seed=4, num_replicas=1, rank=0)
    served = []
    for epoch in (0, 1, 2, 5):
        sampler.set_epoch(epoch)
        served.append(np.concatenate([np.asarray(batch) for batch in sampler]))
        np.testing.assert_array_equal(served[-1], np.random.default_rng([4, epoch]).permutation(300))
    copy = pickle.loads(pickle.dumps(sampler))
    copy.set_epoch(6)
    np.testing.assert_array_equal(np.concatenate([np.asarray(b) for b in copy]),
                                  np.random.default_rng([4, 6]).permutation(300))


def test_no_order_is_computed_ahead_for_very_large_epochs(monkeypatch):
    from ptychodata.torch import _epoch_orders

    monkeypatch.setattr(_epoch_orders, "_MAX_AHEAD", 100)
    orders = EpochOrders()
    orders.get(100, 0, 0, None, 16, ahead=True)
    assert orders._ahead is not None
    orders.get(101, 0, 0, None, 16, ahead=True)
    assert orders._ahead is None
