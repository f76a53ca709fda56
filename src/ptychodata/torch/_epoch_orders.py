"""A store's shuffled epoch orders, each next one computed while the epoch before is served."""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from ptychodata.torch._block_order import block_order

__all__ = ["EpochOrders", "store_order"]

# Orders of more groups are not computed ahead: each holds 8 bytes a group.
_MAX_AHEAD = 1 << 25


def store_order(n_groups: int, seed: int, epoch: int, block: int | None, window: int) -> np.ndarray:
    """The shuffled order of epoch ``epoch`` of ``n_groups`` groups ((n_groups,) int64): the
    permutation of ``numpy.random.default_rng([seed, epoch])``, or with ``block`` the
    :func:`~ptychodata.torch.block_order`."""
    if block is not None:
        return block_order(n_groups, seed, epoch, block=block, window=window)
    return np.random.default_rng([seed, epoch]).permutation(n_groups).astype(np.int64, copy=False)


class EpochOrders:
    """:func:`store_order` of an epoch; asked for the epoch being started, it also starts
    computing the next epoch's on a thread of its own (NumPy shuffles without the GIL), so
    that a loader whose epochs take milliseconds does not wait for its next order.

    Holds at most one order ahead, and none of more than 2**25 groups (256 MiB an order, beside
    the one being served). Pickles without it; made again in a forked child."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._pid = 0
        self._ahead: tuple[tuple, Future] | None = None

    def get(self, n_groups: int, seed: int, epoch: int, block: int | None, window: int, *,
            ahead: bool = False) -> np.ndarray:
        """The order of ``epoch``; with ``ahead``, start computing epoch ``epoch + 1``'s."""
        key = (n_groups, seed, epoch, block, window)
        with self._lock:
            pending, self._ahead = self._ahead, None
        order = pending[1].result() if pending is not None and pending[0] == key else store_order(*key)
        if ahead and n_groups <= _MAX_AHEAD:
            following = (n_groups, seed, epoch + 1, block, window)
            with self._lock:
                self._ahead = (following, self._pool().submit(store_order, *following))
        return order

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None or self._pid != os.getpid():
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ptychodata-order")
            self._pid = os.getpid()
        return self._executor

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()
