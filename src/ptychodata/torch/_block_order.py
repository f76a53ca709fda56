"""An epoch order for stores larger than the page cache: blocks of neighbouring groups."""

from __future__ import annotations

import numpy as np

from ptychodata._runtime import check_int

__all__ = ["block_order"]

# What the generator of a block order is about, so that it never repeats another order's stream.
_BLOCK_STREAM = 0x626C6F636B


def block_order(n_groups: int, seed: int, epoch: int, *, block: int, window: int) -> np.ndarray:
    """A permutation of ``range(n_groups)`` that reads a store in large runs.

    The groups are cut into blocks of ``block`` consecutive indices (neighbouring groups, whose
    patterns lie together in the store's file); the blocks are taken in a random order, and the
    groups of each run of ``window`` blocks are shuffled among themselves. Every group comes once.
    A batch then draws from at most ``window`` places of the file, and a window's reads stay in a
    region of ``window · block`` groups that the page cache can hold while batches still mix
    them; a loader reads each window ahead (:meth:`Store.read_ahead
    <ptychodata.store.Store.read_ahead>`) while the one before is served.

    Parameters
    ----------
    n_groups : int
    seed, epoch : int
        The order is a function of these alone (``numpy.random.default_rng([seed, epoch, ...])``).
    block : int
        Groups per block.
    window : int
        Blocks whose groups are shuffled together.

    Returns
    -------
    ndarray of shape (n_groups,), int64
    """
    n_groups = check_int("n_groups", n_groups, minimum=0)
    block = check_int("block", block)
    window = check_int("window", window)
    rng = np.random.default_rng([int(seed), int(epoch), _BLOCK_STREAM])
    n_blocks = -(-n_groups // block)
    starts = rng.permutation(n_blocks).astype(np.int64) * block
    lengths = np.minimum(block, n_groups - starts)
    first = np.cumsum(lengths) - lengths  # where each block begins in the order
    order = np.arange(n_groups, dtype=np.int64) + np.repeat(starts - first, lengths)
    run = block * window
    for begin in range(0, n_groups, run):
        rng.shuffle(order[begin : begin + run])
    return order
