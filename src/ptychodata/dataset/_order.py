"""Epoch orders that stay put when a dataset changes.

Each group of a dataset has an identity made of its scan's uid and its index in that scan;
an epoch's order sorts the groups by a 64-bit key mixed from (seed, epoch, identity). Adding
a scan inserts its groups among the others without moving them relative to each other, and a
run resumed after a change can tell, by key, which groups it has served.

With mixing weights (:class:`Mixing`) an epoch holds ``counts[k]`` groups of scan ``k``: each
of its groups ``q`` times and, for the remainder ``r``, one more copy of the ``r`` groups with
the smallest *choice keys* (mixed from the seed, the epoch or not, and the identity). Copy
``c`` of a group has its own key, mixed from (seed, epoch, identity, c); copy 0's is the
unweighted key. :func:`stratified_steps` deals the strata over global batches.

Block order, for a dataset larger than memory, keeps the same keys one level up: block ``j``
of a scan (its groups ``j·block`` to ``(j+1)·block - 1``, whose patterns lie together in the
scan's file) has a key mixed from (seed, epoch, scan uid, ``j``, copy); the blocks are taken
in the order of their keys, and the items of each run of ``window`` blocks in the order of
their own keys. Adding a scan inserts its blocks among the others without moving them
relative to each other.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ptychodata._runtime import sorted_unique
from ptychodata.errors import ParameterError

__all__ = ["EpochItems", "GroupKeys", "Mixing", "key_order", "mix64", "stratified_steps"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_COPY = np.uint64(0xD6E8FEB86659FD93)  # copy c's salt differs from copy 0's by c times this
_CHOICE = np.uint64(0xA0761D6478BD642F)  # choice keys are salted apart from order keys
_BLOCK = np.uint64(0xE7037ED1A0B428DB)  # block keys are salted apart from both
_FIXED = 2**64 - 1  # the "epoch" of choice keys that stay the same every epoch
_CHUNK = 1 << 16  # keys are computed this many at a time: small temporaries


def mix64(values: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
    """splitmix64's finaliser over a uint64 array: a bijection that scatters nearby values.

    With ``out`` (a uint64 array of the same shape, ``values`` itself allowed) the work is done
    there, with one temporary of the array's size.
    """
    z = np.add(np.asarray(values, np.uint64), _GOLDEN, out=out)
    shifted = np.empty_like(z)
    for shift, factor in ((30, _M1), (27, _M2)):
        np.right_shift(z, np.uint64(shift), out=shifted)
        np.bitwise_xor(z, shifted, out=z)
        np.multiply(z, factor, out=z)
    np.right_shift(z, np.uint64(31), out=shifted)
    return np.bitwise_xor(z, shifted, out=z)


def _scalar(value: int) -> np.uint64:
    return mix64(np.array([int(value) & (2**64 - 1)], np.uint64))[0]


def _salt(seed: int, epoch: int) -> np.uint64:
    """The salt of copy 0 in epoch ``epoch`` of a run seeded ``seed``."""
    return _scalar(int(np.uint64(int(seed) & (2**64 - 1)) ^ _scalar(epoch)))


def _uid64(uid: str) -> np.uint64:
    return np.uint64(int.from_bytes(hashlib.blake2b(uid.encode(), digest_size=8).digest(), "little"))


class _Keys:
    """The key of each item of an epoch, computed a chunk at a time: item ``i`` is copy
    ``copies[i]`` of group ``groups[i]`` (or copy 0 of group ``i`` when ``groups`` is None).

    Each item also has a *label* that names it in a few bits: its group, shifted left by
    :attr:`copy_bits`, with its copy in those bits (just the group without copies).
    """

    def __init__(self, identities: np.ndarray, salt: np.uint64, groups=None, copies=None):
        self.identities, self.salt, self.groups, self.copies = identities, salt, groups, copies
        self.size = len(identities) if groups is None else len(groups)
        self.copy_bits = 0 if copies is None or not len(copies) else int(copies.max()).bit_length()
        self.label_bits = max(1, (len(identities) - 1).bit_length()) + self.copy_bits

    def at(self, start: int, stop: int, select: np.ndarray | None = None) -> np.ndarray:
        """(n,) uint64: keys of items ``start:stop`` (of ``start + select`` where given); a new array."""
        where = slice(start, stop) if select is None else select + start
        groups = where if self.groups is None else self.groups[where]
        return self._keys(groups, None if self.copies is None else self.copies[where])

    def labels(self, start: int, stop: int, select: np.ndarray | None = None) -> np.ndarray:
        """(n,) uint64: labels of the same items as :meth:`at`."""
        where = slice(start, stop) if select is None else select + start
        if self.groups is None:
            return np.arange(start, stop, dtype=np.uint64) if select is None else where.astype(np.uint64)
        labels = self.groups[where].astype(np.uint64)
        if self.copy_bits:
            np.left_shift(labels, np.uint64(self.copy_bits), out=labels)
            np.bitwise_or(labels, self.copies[where].astype(np.uint64), out=labels)
        return labels

    def of_labels(self, labels: np.ndarray) -> np.ndarray:
        """Keys of the items labelled ``labels``."""
        if self.groups is None:
            return self._keys(labels.astype(np.int64), None)
        groups = (labels >> np.uint64(self.copy_bits)).astype(np.int64)
        return self._keys(groups, (labels & np.uint64((1 << self.copy_bits) - 1)).astype(np.uint32))

    def of(self, items: np.ndarray) -> np.ndarray:
        """Keys of the items at positions ``items`` (any order)."""
        return self.at(0, self.size, np.asarray(items, np.int64))

    def _keys(self, groups: Any, copies: np.ndarray | None) -> np.ndarray:
        keys = self.identities[groups]
        if keys.base is self.identities:  # a slice: a view
            keys = keys.copy()
        if copies is None:
            np.bitwise_xor(keys, self.salt, out=keys)
        else:
            salts = np.multiply(copies.astype(np.uint64), _COPY)
            np.bitwise_xor(salts, self.salt, out=salts)
            np.bitwise_xor(keys, mix64(salts, out=salts), out=keys)
        return mix64(keys, out=keys)

    def outputs(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Empty arrays for the items in key order: groups, and copies where there are."""
        groups = np.empty(self.size, np.int32 if len(self.identities) <= 2**31 else np.int64)
        copies = None if self.copies is None else np.empty(self.size, self.copies.dtype)
        return groups, copies

    def emit(self, outputs: tuple[np.ndarray, np.ndarray | None], at: int, labels: np.ndarray) -> None:
        """Write items labelled ``labels`` to ``outputs`` from position ``at`` (``labels`` is spent)."""
        groups, copies = outputs
        if copies is not None:
            copies[at : at + len(labels)] = labels & np.uint64((1 << self.copy_bits) - 1)
            np.right_shift(labels, np.uint64(self.copy_bits), out=labels)
        groups[at : at + len(labels)] = labels


def key_order(keys: _Keys) -> tuple[np.ndarray, np.ndarray | None]:
    """The items sorted by key, ties by label: as ``np.argsort(keys, kind="stable")`` without
    copies, and without holding every key at once.

    The keys are split in up to 4 buckets by their top bits; each bucket's keys, truncated,
    are packed with their items' labels into one uint64 each and sorted in place; rare equal
    truncated keys are sorted again by their whole keys. The groups come out int32 below
    2**31 (copies in the smallest unsigned type that holds them); the work takes a byte an
    item (bucket labels) and a bucket's packed keys (about 2 bytes an item), so about 7 bytes
    an item in all without copies, against the 16 of ``np.argsort`` over the keys, and a sort
    in place instead of an indirect one.

    Returns
    -------
    groups : ndarray of shape (E,)
    copies : ndarray of shape (E,) or None
    """
    n = keys.size
    outputs = keys.outputs()
    if n == 0:
        return outputs
    label_bits = keys.label_bits
    bucket_bits = min(2, max(0, (n >> 20).bit_length()), 60 - label_bits) if n > 1 else 0
    kept = 64 - bucket_bits - label_bits  # key bits packed above the label
    buckets = None
    counts = np.array([n], np.int64)
    if bucket_bits:
        buckets = np.empty(n, np.uint8)
        counts = np.zeros(1 << bucket_bits, np.int64)
        for start in range(0, n, _CHUNK):
            top = np.right_shift(keys.at(start, min(n, start + _CHUNK)), np.uint64(64 - bucket_bits))
            buckets[start : start + len(top)] = top
            counts += np.bincount(buckets[start : start + len(top)], minlength=len(counts))
    mask = np.uint64((1 << label_bits) - 1)
    filled = 0
    for bucket, count in enumerate(counts.tolist()):
        if not count:
            continue
        packed = np.empty(count, np.uint64)
        at = 0
        for start in range(0, n, _CHUNK):
            stop = min(n, start + _CHUNK)
            select = None
            if buckets is not None:
                select = np.flatnonzero(buckets[start:stop] == bucket)
                if not len(select):
                    continue
            chunk = keys.at(start, stop, select)
            np.left_shift(chunk, np.uint64(bucket_bits), out=chunk)
            np.right_shift(chunk, np.uint64(64 - kept), out=chunk)
            np.left_shift(chunk, np.uint64(label_bits), out=chunk)
            np.bitwise_or(chunk, keys.labels(start, stop, select), out=chunk)
            packed[at : at + len(chunk)] = chunk
            at += len(chunk)
        packed.sort()
        _sort_ties(packed, keys, label_bits, mask)
        np.bitwise_and(packed, mask, out=packed)
        keys.emit(outputs, filled, packed)
        filled += count
        del packed
    return outputs


def _sort_ties(packed: np.ndarray, keys: _Keys, label_bits: int, mask: np.uint64) -> None:
    """Put runs of equal truncated keys of sorted ``packed`` in the order of their whole keys."""
    shift = np.uint64(label_bits)
    ties = []
    for start in range(0, len(packed) - 1, _CHUNK):
        high = np.right_shift(packed[start : start + _CHUNK + 1], shift)
        ties.append(np.flatnonzero(high[1:] == high[:-1]) + start)
    ties = np.concatenate(ties) if ties else np.zeros(0, np.int64)
    if not len(ties):
        return
    # every tied pair (i, i + 1): the runs they make, each sorted by (whole key, label) in place
    tied = sorted_unique(np.concatenate([ties, ties + 1]))
    run = np.cumsum(np.concatenate([[0], np.diff(tied) != 1]))
    labels = packed[tied] & mask
    order = np.lexsort((labels, keys.of_labels(labels), run))
    packed[tied] = packed[tied][order]


@dataclass(frozen=True, eq=False)
class Mixing:
    """How many groups of each scan an epoch holds, and how batches deal them.

    Attributes
    ----------
    counts : ndarray of shape (S,), int64
        Groups of scan ``k`` per epoch (copies counted).
    strata : ndarray of shape (S,), int64
        The stratum of each scan (an index into ``strata_names``).
    strata_names : tuple of str
    resample : {"epoch", "fixed"}
        Whether the groups that make up fractional parts are drawn anew each epoch.
    batching : {"random", "stratified"}
    description : str
        The weights, in words, for messages.
    """

    counts: np.ndarray
    strata: np.ndarray
    strata_names: tuple[str, ...]
    resample: str = "epoch"
    batching: str = "random"
    description: str = ""

    def check(self) -> Mixing:
        """``self`` if an epoch holds some group; else a ``ParameterError`` naming the weights."""
        if not int(self.counts.sum()):
            raise ParameterError(
                f"the weights ({self.description}) leave no group in an epoch of these {len(self.counts)} scan(s); "
                "give a scan that has groups here a weight above 0"
            )
        return self

    def check_block(self, block: int) -> None:
        """Refuse block order (``block`` groups a block) with stratified batches: a step deals
        every stratum at once, so its items cannot come from one window of blocks."""
        if self.batching == "stratified":
            raise ParameterError(f"block={block} with stratified batches ({self.description}); block order needs "
                                 "random batching (set_weights(..., batching='random'))")


@dataclass(frozen=True, eq=False)
class EpochItems:
    """The items of one epoch in their order: copy ``copies[i]`` of group ``groups[i]``.

    Attributes
    ----------
    groups : ndarray of shape (E,), int32 (int64 from 2**31 items)
        Positions of the groups (in the view that made the keys).
    copies : ndarray of shape (E,), uint32, or None
        Which copy of its group each item is; None when every item is copy 0.
    strata : ndarray of shape (E,), int16, or None
        The stratum of each item, for stratified batches; None otherwise.
    windows : ndarray of shape (V + 1,), int64, or None
        In block order, where each window of blocks begins in the items (and, last, their
        number); None otherwise.
    window_keys : ndarray of shape (V, 2), uint64, or None
        In block order, the lowest and highest key of the block copies of each window.
    """

    groups: np.ndarray
    copies: np.ndarray | None = None
    strata: np.ndarray | None = None
    windows: np.ndarray | None = None
    window_keys: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.groups)


@dataclass(frozen=True, eq=False)
class GroupKeys:
    """The identities of a dataset's groups (in its order), what it is and how it is mixed.

    Attributes
    ----------
    identities : ndarray of shape (B,), uint64
        One per group: mixed from its scan's uid and its index in the scan.
    fingerprint : str
        The dataset build's id.
    uids : tuple of str
        The dataset's scans.
    mixing : Mixing or None
        Weights: groups per scan and epoch, strata, resampling and batching.
    scan : ndarray of shape (B,), int32, or None
        Each group's scan (an index into ``uids``).
    names : tuple of str
        The scans' file names, as ``uids`` (empty where not known): for messages.
    local : ndarray of shape (B,), int32 (int64 from 2**31 groups a scan), or None
        Each group's index in its scan: with ``scan``, what block order needs.
    """

    identities: np.ndarray = field(repr=False)
    fingerprint: str
    uids: tuple[str, ...]
    mixing: Mixing | None = None
    scan: np.ndarray | None = field(default=None, repr=False)
    names: tuple[str, ...] = ()
    local: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def of(
        cls, uids: list[str], scan: np.ndarray, local: np.ndarray, fingerprint: str, *, mixing: Mixing | None = None,
        names: list[str] | tuple[str, ...] = (),
    ) -> GroupKeys:
        """Keys of the groups ``local[i]`` of scans ``uids[scan[i]]`` (whose file names are ``names``)."""
        uid64 = np.array([_uid64(uid) for uid in uids], np.uint64)
        scan = np.asarray(scan, np.int64)
        identities = np.asarray(local, np.int64).astype(np.uint64)
        np.bitwise_xor(identities, uid64[scan], out=identities)
        identities = mix64(identities, out=identities)
        local = np.asarray(local, np.int64)
        small = not len(local) or int(local.max()) < 2**31
        return cls(identities, fingerprint, tuple(uids), mixing, scan.astype(np.int32), tuple(names),
                   local.astype(np.int32) if small else local)

    def described(self, uids: list[str] | tuple[str, ...], names: dict[str, str] | None = None) -> list[str]:
        """``uid (file name)`` of each of ``uids``, the names from this dataset or ``names``."""
        known = {**(names or {}), **dict(zip(self.uids, self.names))}
        return [f"{uid} ({known[uid]})" if uid in known else uid for uid in uids]

    def keys(self, seed: int, epoch: int) -> np.ndarray:
        """(B,) uint64: each group's key (its copy 0's) in epoch ``epoch`` of a run seeded ``seed``."""
        keys = np.bitwise_xor(self.identities, _salt(seed, epoch))
        return mix64(keys, out=keys)

    def item_keys(self, seed: int, epoch: int, groups: np.ndarray, copies: np.ndarray | None = None) -> np.ndarray:
        """(n,) uint64: the keys of copies ``copies`` (default 0) of groups ``groups``."""
        groups = np.asarray(groups, np.int64)
        copies = None if copies is None else np.asarray(copies, np.uint32)
        return _Keys(self.identities, _salt(seed, epoch), groups, copies).at(0, len(groups))

    def order(self, seed: int, epoch: int) -> np.ndarray:
        """The epoch's groups in key order (ties, which need equal 64-bit keys, by position):
        a permutation of the positions without weights, copies included with them.

        int32 below 2**31 groups, else int64 (see :func:`key_order` for its cost).
        """
        return self.epoch(seed, epoch).groups

    def epoch(self, seed: int, epoch: int, *, shuffle: bool = True, block: int | None = None,
              window: int = 16) -> EpochItems:
        """The items of epoch ``epoch`` in key order (``shuffle``) or in position order; with
        ``block``, shuffled in block order: blocks of ``block`` consecutive groups of a scan
        in the order of their keys, the items of each run of ``window`` blocks in theirs."""
        if block is not None and shuffle:
            if self.scan is None or self.local is None:
                raise ParameterError(f"block={block} with keys that lack each group's scan and index in it; "
                                     "make them with GroupKeys.of")
            if self.mixing is not None:
                self.mixing.check_block(block)
            groups, copies = self._weighted_items(seed, epoch) if self.mixing is not None else (None, None)
            return self._block_items(seed, epoch, groups, copies, block, window)
        if self.mixing is None:
            if not shuffle:
                return EpochItems(np.arange(len(self.identities), dtype=np.int64))
            return EpochItems(key_order(_Keys(self.identities, _salt(seed, epoch)))[0])
        groups, copies = self._weighted_items(seed, epoch)
        if shuffle:
            groups, copies = key_order(_Keys(self.identities, _salt(seed, epoch), groups, copies))
        strata = None
        if self.mixing.batching == "stratified":
            strata = self.mixing.strata.astype(np.int16)[self.scan[groups]]
        return EpochItems(groups, copies, strata)

    def _block_items(self, seed: int, epoch: int, groups: np.ndarray | None, copies: np.ndarray | None,
                     block: int, window: int) -> EpochItems:
        """Items ``(groups, copies)`` (default every group once, in position order) in block order.

        Copy ``c`` of block ``j`` of a scan holds the items that are copy ``c`` of a group of
        that block; these block copies are taken in the order of their keys, and the items of
        each run of ``window`` of them in the order of their item keys (ties by position)."""
        if groups is None:
            groups = np.arange(len(self.identities), dtype=np.int64)
        number = self.local[groups]
        number //= block
        ids = _block_copy_ids(self.scan[groups], copies, number)
        del number
        if len(ids) > 1 and not bool(np.all(ids[1:] >= ids[:-1])):  # the items of each block copy made adjacent
            adjacent = np.argsort(ids, kind="stable")
            groups, ids = groups[adjacent], ids[adjacent]
            copies = None if copies is None else copies[adjacent]
        n = len(groups)
        if not n:
            return EpochItems(groups, copies, windows=np.zeros(1, np.int64), window_keys=np.zeros((0, 2), np.uint64))
        starts = np.concatenate([[0], np.flatnonzero(np.diff(ids)) + 1]).astype(np.int64)
        del ids
        lengths = np.diff(np.append(starts, n))
        block_keys = self.block_keys(seed, epoch, block, groups[starts], None if copies is None else copies[starts])
        rank = np.argsort(block_keys, kind="stable")
        # the items of the block copies in the order of their keys, then each window's by item key
        taken = lengths[rank]
        first = np.cumsum(taken) - taken
        order = np.repeat(starts[rank] - first, taken)
        order += np.arange(n, dtype=np.int64)
        windows = np.append(first[::window], n).astype(np.int64)
        ranked = block_keys[rank]
        last_of_window = np.minimum(np.arange(window, len(rank) + window, window), len(rank)) - 1
        bounds = np.stack([ranked[::window], ranked[last_of_window]], axis=1)
        groups = groups[order]
        copies = None if copies is None else copies[order]
        del order
        keys = _Keys(self.identities, _salt(seed, epoch), groups, None if copies is None else copies.astype(np.uint32))
        for begin, end in zip(windows[:-1].tolist(), windows[1:].tolist()):
            by_key = _by_key(keys.at(begin, end))  # reads the window's items before they move
            groups[begin:end] = groups[begin:end][by_key]
            if copies is not None:
                copies[begin:end] = copies[begin:end][by_key]
        return EpochItems(groups, copies, windows=windows, window_keys=bounds)

    def block_keys(self, seed: int, epoch: int, block: int, groups: np.ndarray,
                   copies: np.ndarray | None = None) -> np.ndarray:
        """(n,) uint64: the keys, in block order of ``block`` groups a block, of the block copies
        that copies ``copies`` (default 0) of groups ``groups`` are in."""
        groups = np.asarray(groups, np.int64)
        uid64 = np.array([_uid64(uid) for uid in self.uids], np.uint64)
        number = (self.local[groups] // block).astype(np.uint64)
        identities = mix64(np.bitwise_xor(uid64[self.scan[groups]], mix64(number, out=number)))
        salt = np.uint64(int(_salt(seed, epoch)) ^ int(_BLOCK))
        copies = None if copies is None else np.asarray(copies, np.uint32)
        return _Keys(identities, salt, copies=copies).at(0, len(groups))

    def unserved(self, seed: int, epoch: int, block: int, items: EpochItems,
                 served: list[tuple[int, int, int]]) -> EpochItems:
        """``items`` (an epoch in block order) less those a run had served, in their order.

        Each of ``served`` is ``(low, high, last)``: the run served every block copy whose key is
        below ``low`` and, of those whose key lies in ``[low, high]`` (the window it stopped in),
        the items whose key is at most ``last``."""
        if not served or not len(items):
            return items
        block_keys = self.block_keys(seed, epoch, block, items.groups, items.copies)
        item_keys = self.item_keys(seed, epoch, items.groups, items.copies)
        done = np.zeros(len(items), bool)
        for low, high, last in served:
            low, high, last = np.uint64(low), np.uint64(high), np.uint64(last)
            done |= (block_keys < low) | ((block_keys <= high) & (block_keys >= low) & (item_keys <= last))
        kept = np.concatenate([[0], np.cumsum(~done)])
        windows = kept[items.windows]
        nonempty = np.flatnonzero(np.diff(windows))
        return EpochItems(items.groups[~done], None if items.copies is None else items.copies[~done],
                          windows=np.append(windows[nonempty], windows[-1]), window_keys=items.window_keys[nonempty])

    def copies_per_group(self, seed: int, epoch: int) -> np.ndarray:
        """(B,) int64: how many copies of each group epoch ``epoch`` holds (all 1 without weights)."""
        if self.mixing is None:
            return np.ones(len(self.identities), np.int64)
        groups, _ = self._weighted_items(seed, epoch)
        return np.bincount(groups, minlength=len(self.identities))

    def _weighted_items(self, seed: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(groups, copies) of every item of a weighted epoch, scan by scan: a scan of ``n``
        groups and count ``q n + r`` gives copies ``0 .. q-1`` of each group in position order,
        then copy ``q`` of the ``r`` groups with the smallest choice keys (ties by position)."""
        mixing, scan = self.mixing, self.scan
        sizes = np.bincount(scan, minlength=len(self.uids))
        whole, extra = np.divmod(mixing.counts, np.maximum(sizes, 1))
        total = int(mixing.counts.sum())
        index = np.int32 if len(scan) <= 2**31 else np.int64
        most = int(whole.max(initial=0)) + 1
        copies_type = np.uint8 if most < 2**8 else np.uint16 if most < 2**16 else np.uint32
        groups, copies = np.empty(total, index), np.empty(total, copies_type)
        ordered = len(scan) < 2 or bool(np.all(scan[1:] >= scan[:-1]))  # a view's groups, scan by scan
        by_scan = None if ordered else np.argsort(scan, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        choice_epoch = _FIXED if mixing.resample == "fixed" else epoch
        choice_salt = np.uint64(int(_salt(seed, choice_epoch)) ^ int(_CHOICE))
        at = 0
        for k in np.flatnonzero(mixing.counts).tolist():
            first, last = int(bounds[k]), int(bounds[k + 1])
            members = np.arange(first, last, dtype=index) if by_scan is None else by_scan[first:last].astype(index)
            n, q, r = last - first, int(whole[k]), int(extra[k])
            if q:
                groups[at : at + q * n].reshape(q, n)[:] = members
                copies[at : at + q * n].reshape(q, n)[:] = np.arange(q, dtype=copies_type)[:, None]
                at += q * n
            if r:
                groups[at : at + r] = smallest(members, _Keys(self.identities, choice_salt).of(members), r)
                copies[at : at + r] = q
                at += r
        return groups, copies

    def count_upto(self, seed: int, epoch: int, items: EpochItems, last: int, where: np.ndarray | None = None) -> int:
        """How many of ``items`` (those at positions ``where``, if given) have keys at or below ``last``."""
        source = _Keys(self.identities, _salt(seed, epoch), items.groups, items.copies)
        positions = np.arange(len(items), dtype=np.int64) if where is None else np.asarray(where, np.int64)
        bound, total = np.uint64(last), 0
        for start in range(0, len(positions), _CHUNK):
            total += int(np.count_nonzero(source.of(positions[start : start + _CHUNK]) <= bound))
        return total


def smallest(members: np.ndarray, keys: np.ndarray, r: int) -> np.ndarray:
    """The ``r`` of ``members`` (ascending) with the smallest ``keys``, ties by position, in
    ascending order: ``np.sort(members[np.lexsort((members, keys))[:r]])`` at the cost of a
    partition instead of a sort."""
    if r <= 0 or r >= len(members):
        return members[: max(r, 0)].copy()
    kth = np.partition(keys, r - 1)[r - 1]
    chosen = keys < kth
    tied = np.flatnonzero(keys == kth)
    chosen[tied[: r - int(np.count_nonzero(chosen))]] = True  # the first of the tied, by position
    return members[chosen]


def _by_key(keys: np.ndarray) -> np.ndarray:
    """``np.argsort(keys, kind="stable")``; at the speed of the unstable sort where no two keys
    are equal (64-bit keys of distinct items almost never are)."""
    order = np.argsort(keys)
    ranked = keys[order]
    if len(keys) > 1 and bool(np.any(ranked[1:] == ranked[:-1])):
        return np.argsort(keys, kind="stable")
    return order


def _block_copy_ids(scan: np.ndarray, copies: np.ndarray | None, number: np.ndarray) -> np.ndarray:
    """(n,) int64: an id of each item's block copy (its scan, copy, default 0, and block
    ``number``), in the order of (scan, copy, number)."""
    n_copies = 1 if copies is None else int(copies.max(initial=0)) + 1
    n_blocks = int(number.max(initial=0)) + 1
    if (int(scan.max(initial=0)) + 1) * n_copies * n_blocks < 2**62:
        ids = scan.astype(np.int64)
        if copies is not None:
            ids *= n_copies
            ids += copies
        ids *= n_blocks
        ids += number
        return ids
    copy = np.zeros(len(scan), np.int64) if copies is None else copies
    order = np.lexsort((number, copy, scan))  # one number would overflow: ranks instead
    changed = (np.diff(scan[order]) != 0) | (np.diff(copy[order]) != 0) | (np.diff(number[order]) != 0)
    ids = np.empty(len(order), np.int64)
    ids[order] = np.cumsum(np.concatenate([[0], changed]))
    return ids


def stratified_steps(counts: list[int] | np.ndarray, step: int) -> np.ndarray:
    """How many items of each stratum each global batch of ``step`` items holds.

    Parameters
    ----------
    counts : sequence of int, length S
        Items of each stratum in the epoch (``n`` in all).
    step : int
        Items per global batch; the last batch holds what is left.

    Returns
    -------
    ndarray of shape (T, S), int64
        Batch ``t`` holds ``result[t, s]`` items of stratum ``s``: within one of its quota
        ``size_t * counts[s] / n`` (``size_t`` the batch's size), and each stratum's column
        sums to its count. Each batch takes the quotas' whole parts, and the rest one item
        each from the strata furthest behind their share of everything dealt so far.
    """
    counts = [int(c) for c in counts]
    n, S = sum(counts), len(counts)
    steps = -(-n // step) if n else 0
    table = np.zeros((steps, S), np.int64)
    dealt = [0] * S
    for t in range(steps):
        size = min(step, n - t * step)
        reach = t * step + size  # items dealt once this batch is
        take = [min(size * c // n, c - d) for c, d in zip(counts, dealt)]
        extra = size - sum(take)
        if extra:
            # n x (target share after this batch - what it would hold): integers, no rounding
            behind = sorted(
                (-(reach * counts[s] - n * (dealt[s] + take[s])), s) for s in range(S) if dealt[s] + take[s] < counts[s]
            )
            for _, s in behind[:extra]:
                take[s] += 1
        for s in range(S):
            dealt[s] += take[s]
        table[t] = take
    return table
