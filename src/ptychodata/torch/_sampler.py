"""Deterministic, shardable, resumable batch sampling.

An epoch's *global order* is a permutation of all groups drawn from (seed, epoch). It
is consumed in steps: at each step the W ranks take W consecutive blocks of
``batch_size`` indices, rank r the r-th. Progress is one number, the count of global
positions consumed, so a run can resume mid-epoch with the exact remaining batches —
also with a different number of ranks, who then share exactly what remained.

Equal shards: with ``drop_last=False`` the remaining order is padded, by repeating its
first indices, to a multiple of W (each rank gets the same number of batches; the last
ones may be short); with ``drop_last=True`` it is cut to whole steps of W·batch_size.

Datasets with mixing weights (:meth:`~ptychodata.dataset.Dataset.set_weights`): an epoch is
their items (copies of groups, some groups left out) in key order; with stratified batching
each step of W·batch_size items holds each stratum within one of its quota, the steps dealt
by :func:`~ptychodata.dataset.stratified_steps`. Progress is then also counted per stratum,
so a run resumed with another number of ranks or batch size deals what remained anew.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ptychodata._runtime import check_int
from ptychodata.dataset import EpochItems, GroupKeys, stratified_steps
from ptychodata.errors import DatasetChangedError, ParameterError
from ptychodata.torch._checks import check_bool, check_seed, replicas_and_rank
from ptychodata.torch._epoch_orders import EpochOrders

__all__ = ["GroupSampler", "PassBatches"]

# Windows of a block order read ahead of the one being served.
_WINDOWS_AHEAD = 1


@dataclass(frozen=True)
class PassBatches:
    """One rank's batches of a pass: the group positions in the order they are served,
    ``positions`` (n,) int64, cut into consecutive batches of ``sizes`` (b,) int64 groups.

    Iterating yields each batch's positions, (B,) int64 views of ``positions``; a caller
    that needs the whole pass at once (a GPU-resident loader) takes the two arrays.
    """

    positions: np.ndarray
    sizes: np.ndarray

    @classmethod
    def of(cls, batches: list[np.ndarray]) -> PassBatches:
        """The pass of these batches, in this order."""
        sizes = np.fromiter(map(len, batches), np.int64, len(batches))
        positions = np.concatenate(batches).astype(np.int64, copy=False) if batches else np.zeros(0, np.int64)
        return cls(positions, sizes)

    def __len__(self) -> int:
        return len(self.sizes)

    def __iter__(self) -> Iterator[np.ndarray]:
        positions, start = self.positions, 0
        for stop in np.cumsum(self.sizes).tolist():
            yield positions[start:stop]
            start = stop


class GroupSampler(torch.utils.data.Sampler):
    """Yields this rank's batches of group indices (use as a DataLoader ``batch_sampler``).

    Parameters
    ----------
    n_groups : int
        Size of the dataset.
    batch_size : int
        Groups per batch, per rank.
    shuffle : bool
        Permute with ``numpy.random.default_rng([seed, epoch])``; else index order.
    seed : int
    drop_last : bool
        Drop the tail that does not fill a whole step (no padding, all batches full).
    num_replicas, rank : int, optional
        World size and rank; default from ``torch.distributed`` when initialised, else 1 and 0.
    keys : GroupKeys, optional
        The groups' identities (a dataset's :meth:`~ptychodata.dataset.DatasetStore.group_keys`):
        a shuffled epoch is then ordered by keys mixed from (seed, epoch, identity), so it
        stays put when scans are added or removed, and a saved state can resume on a changed
        dataset (see :meth:`load_state_dict`). With its ``mixing`` (a dataset's weights) an
        epoch holds the weighted copies of groups, ``len(global_order())`` of them, and with
        stratified batching each step holds each stratum within one of its quota.
    block, window : int, optional
        Block order, for a store larger than the page cache: a shuffled epoch takes blocks of
        ``block`` consecutive groups (whose patterns lie together on disk) in a random order and
        shuffles the groups of each run of ``window`` blocks among themselves
        (:func:`~ptychodata.torch.block_order`), so that a window's reads stay in one region of
        the file. Default: one permutation of all groups. With ``keys``, a block is ``block``
        consecutive groups of one scan and the blocks and the items of a window follow their
        keys (:meth:`GroupKeys.epoch <ptychodata.dataset.GroupKeys.epoch>`); not with
        stratified batches.
    """

    def __init__(
        self,
        n_groups: int,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        num_replicas: int | None = None,
        rank: int | None = None,
        keys: GroupKeys | None = None,
        block: int | None = None,
        window: int = 16,
    ):
        check_int("batch_size", batch_size)
        if block is not None:
            check_int("block", block)
            check_int("window", window)
            if keys is not None and keys.mixing is not None:
                keys.mixing.check_block(block)
        self.block, self.window = block, int(window)
        # With block order: called with the groups of each window shortly before it is served
        # (make_loader sets the store's read_ahead), so the disk reads a window in long runs;
        # and, where set (a store larger than memory), with those of the window before once
        # the next one is served, so that its pages make room for the next window's.
        self.read_ahead: Callable[[np.ndarray], Any] | None = None
        self.release: Callable[[np.ndarray], Any] | None = None
        check_int("n_groups", n_groups, minimum=0)
        check_bool("shuffle", shuffle)
        check_bool("drop_last", drop_last)
        check_seed("seed", seed)
        if keys is not None and len(keys.identities) != int(n_groups):
            raise ParameterError(f"keys for {len(keys.identities)} groups, but n_groups={n_groups}")
        self.keys = keys
        self.num_replicas, self.rank = replicas_and_rank(num_replicas, rank)
        self.n_groups = int(n_groups)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.epoch = 0
        self._start = 0  # global positions of this epoch already consumed (resume point)
        self._yielded = 0  # batches this rank has yielded in the current pass
        self._pass_complete = False
        self._resume_pending = False  # a loaded state not yet iterated
        # stratified: items of each stratum consumed before the current plan (None: none); the
        # plan deals the rest, so a resume with another step size starts a plan of its own
        self._base: tuple[int, ...] | None = None
        # block order with keys: (low, high, last) of each earlier run of this epoch that stopped
        # and was continued on a changed dataset: what it served (GroupKeys.unserved)
        self._served: tuple[tuple[int, int, int], ...] = ()
        self._cached: tuple[tuple, _Plan] | None = None
        self._reading: list[Future] = []  # the reads ahead a pass asked for: cancelled by the next pass
        self._tables: dict[tuple, np.ndarray] = {}
        self._orders = EpochOrders()

    # ------------------------------------------------------------------ epochs
    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` from its beginning on the next iteration, or, right after
        :meth:`load_state_dict` for that same epoch, from where the saved run stopped."""
        epoch = check_int("epoch", epoch, minimum=0, maximum=_MAX_EPOCH)
        if not (self._resume_pending and epoch == self.epoch):
            self._start, self._yielded, self._pass_complete, self._resume_pending = 0, 0, False, False
            self._base, self._served = None, ()
        self.epoch = epoch

    def global_order(self, epoch: int | None = None) -> np.ndarray:
        """The epoch's group indices in order, identical on every rank: a permutation of all
        groups, or with a dataset's weights its items (a group once per copy).

        For the current epoch after a stratified resume with another step size: the plan
        that deals what remained.
        """
        return self._plan(epoch).order

    def remaining(self) -> np.ndarray:
        """Global indices not yet consumed in this epoch, in order (before padding)."""
        return self.global_order()[self._start :]

    @property
    def _mixing(self) -> Any:
        return None if self.keys is None else self.keys.mixing

    @property
    def _stratified(self) -> bool:
        return self._mixing is not None and self._mixing.batching == "stratified"

    def _items(self, epoch: int) -> EpochItems:
        return self.keys.epoch(self.seed, epoch, shuffle=self.shuffle, block=self.block, window=self.window)

    def _plan(self, epoch: int | None = None) -> _Plan:
        """The order of epoch ``epoch`` (default the current one, from its plan's base)."""
        current = epoch is None or epoch == self.epoch
        epoch = self.epoch if epoch is None else epoch
        base = self._base if current and self._stratified else None
        served = self._served if current else ()
        step = self.num_replicas * self.batch_size if self._stratified else None
        key = (epoch, self.seed, self.shuffle, step, base, self.block, self.window, served)
        if self._cached is not None and self._cached[0] == key:
            return self._cached[1]
        if self.keys is None:
            if not self.shuffle:
                order = np.arange(self.n_groups, dtype=np.int64)
            else:
                order = self._orders.get(self.n_groups, self.seed, epoch, self.block, self.window, ahead=current)
            windows = None
            if self.block is not None and self.shuffle:
                windows = np.append(np.arange(0, self.n_groups, self.block * self.window), self.n_groups)
            plan = _Plan(order, windows=windows)
        else:
            items = self._items(epoch)
            if served:
                items = self.keys.unserved(self.seed, epoch, self.block, items, list(served))
            positions = self._arrange(items, step, base) if self._stratified else None
            plan = _Plan(items.groups if positions is None else items.groups[positions], items, positions,
                         items.windows)
        self._cached = (key, plan)
        return plan

    def _arrange(self, items: EpochItems, step: int, base: tuple[int, ...] | None) -> np.ndarray:
        """Positions of ``items`` in stratified order: the items of each stratum (less the first
        ``base[s]``) in their order, dealt over steps of ``step`` by :func:`stratified_steps`."""
        n_strata = len(self._mixing.strata_names)
        members = [np.flatnonzero(items.strata == s)[(base[s] if base else 0) :] for s in range(n_strata)]
        counts = tuple(len(m) for m in members)
        if (counts, step) not in self._tables:
            self._tables = {(counts, step): stratified_steps(counts, step)}  # counts are the same each epoch
        table = self._tables[(counts, step)]
        packed = np.empty(sum(counts), np.uint64)  # (step << 32) | position, sorted: by step, then position
        at = 0
        for s, positions in enumerate(members):
            n = len(positions)
            part = packed[at : at + n]
            ends = np.cumsum(table[:-1, s])  # the step of a stratum's item: how many steps end at or before it
            part[:] = np.cumsum(np.bincount(ends, minlength=n + 1)[:n])
            np.left_shift(part, np.uint64(32), out=part)
            np.bitwise_or(part, positions.astype(np.uint64), out=part)
            at += n
        packed.sort()
        return (packed & np.uint64(0xFFFFFFFF)).astype(np.int64)

    # ------------------------------------------------------------------ this rank's batches
    def _schedule(self) -> PassBatches:
        remaining = self.remaining()
        W, bs = self.num_replicas, self.batch_size
        if self.drop_last:
            remaining = remaining[: len(remaining) // (W * bs) * (W * bs)]
        elif len(remaining) % W:
            pad = W - len(remaining) % W
            remaining = np.concatenate([remaining, np.resize(remaining, pad)]) if len(remaining) else remaining
        remaining = remaining.astype(np.int64, copy=False)
        full = len(remaining) // (W * bs)
        # whole steps of W·bs in one reshape (rank r's batch is the r-th block of each), then the last one
        whole = remaining[: full * W * bs]
        last = remaining[full * W * bs :]
        per_rank = len(last) // W
        last = last[self.rank * per_rank : (self.rank + 1) * per_rank]
        if W > 1:
            whole = whole.reshape(full, W, bs)[:, self.rank].reshape(-1)
        sizes = np.full(full + (len(last) > 0), bs, np.int64)
        if len(last):
            sizes[-1] = len(last)
        return PassBatches(np.concatenate([whole, last]) if len(last) else whole, sizes)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.iter_arrays():
            yield batch.tolist()

    def iter_arrays(self, schedule: PassBatches | None = None) -> Iterator[np.ndarray]:
        """This rank's batches of a pass as (B,) int64 arrays (what iterating yields as lists).

        ``schedule`` is what :meth:`begin_pass` returned, for a caller that needs the whole
        pass up front (a GPU-resident loader moves it to the device at once); the pass's
        bookkeeping (resume position, batches yielded) is the same either way.
        """
        if schedule is None:
            schedule = self.begin_pass()
        ahead = self._windows_ahead()
        for step, batch in enumerate(schedule):
            if ahead is not None:
                ahead(step)
            self._yielded += 1
            yield batch
        self._pass_complete = True

    def _windows_ahead(self) -> Callable[[int], None] | None:
        """With block order and :attr:`read_ahead` set: a function of the pass's step that hands
        ``read_ahead`` the groups of the current window and of the next one, each once, as the
        pass reaches them, and waits at a window's first batch until that window is read (the
        disk reads the next window, in long runs, while this one is served from memory; a
        batch served before its window is read would read its rows one by one, at random).
        With :attr:`release` set, the window before is released at a window's first batch, before
        the next one is asked for; and the whole order before the pass's first window is read:
        pages still mapped from an earlier use of the store would otherwise outlive the windows
        read ahead, which the kernel would then reclaim before they are served."""
        plan = self._plan()
        if self.read_ahead is None or plan.windows is None:
            return None
        for reading in self._reading:  # a pass left before its end: what it asked for and no one serves
            reading.cancel()
        self._reading = []
        order, bounds, start = plan.order, plan.windows, self._start
        step_size, issued, reached = self.num_replicas * self.batch_size, {}, set()

        def ahead(step: int) -> None:
            window = int(np.searchsorted(bounds, start + step * step_size, side="right")) - 1
            first = window not in reached
            if first and self.release is not None:  # before the next window is read
                self.release(order[bounds[window - 1] : bounds[window]] if reached else order)
            reached.add(window)
            for w in range(window, min(window + 1 + _WINDOWS_AHEAD, len(bounds) - 1)):
                if w not in issued:
                    issued[w] = self.read_ahead(order[bounds[w] : bounds[w + 1]])
                    if isinstance(issued[w], Future):
                        self._reading.append(issued[w])
            current = issued.get(window)
            if first and isinstance(current, Future):
                with contextlib.suppress(CancelledError):  # the store closed: nothing more is read ahead
                    current.result()

        return ahead

    def begin_pass(self) -> PassBatches:
        """Start a pass, as iterating does, and return all of its batches for this rank."""
        if self._pass_complete:  # iterating again without set_epoch: the whole epoch again
            self._start, self._pass_complete, self._base, self._served = 0, False, None, ()
        self._yielded, self._resume_pending = 0, False
        return self._schedule()

    def __len__(self) -> int:
        return len(self._schedule())

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_reading": []}  # this process's reads ahead stay with it

    # ------------------------------------------------------------------ resume
    def consumed_after(self, batches: int) -> int:
        """Global positions consumed once every rank has taken ``batches`` batches of this pass."""
        W, bs = self.num_replicas, self.batch_size
        return min(len(self.global_order()), self._start + batches * W * bs)

    def state_dict(self, batches_done: int | None = None) -> dict[str, Any]:
        """Where the run stands: epoch, seed and global positions consumed.

        ``batches_done`` is how many batches of the current pass the training loop has
        used (a DataLoader with workers pulls batches ahead, so the sampler's own count
        runs ahead; :class:`~ptychodata.torch.GroupLoader` passes the right number).
        """
        done = self._yielded if batches_done is None else batches_done
        consumed = self.consumed_after(done)
        state = {
            "epoch": self.epoch,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "n_groups": self.n_groups,
            "consumed": consumed,
        }
        if self.block is not None:
            state["block"] = [self.block, self.window]
        if self.keys is None:
            return state
        plan = self._plan()
        state.update(fingerprint=self.keys.fingerprint, uids=list(self.keys.uids), last_key=None)
        if self.keys.names:
            state["names"] = list(self.keys.names)
        if self._mixing is not None:
            state["epoch_length"] = len(plan.order)
        if self._stratified:
            state.update(self._strata_state(plan, consumed))
        elif self.shuffle and consumed:
            state["last_key"] = int(plan.keys_at(self.keys, self.seed, self.epoch, [consumed - 1])[0])
        if plan.windows is not None:
            state["served"] = [list(run) for run in self._served]
            if consumed:  # the window the last item consumed is in: its block copies' lowest and highest key
                window = int(np.searchsorted(plan.windows, consumed - 1, side="right")) - 1
                state["window_keys"] = [int(key) for key in plan.items.window_keys[window]]
        return state

    def _strata_state(self, plan: _Plan, consumed: int) -> dict[str, Any]:
        """Per stratum: items consumed this epoch, and the key of its last one (shuffled)."""
        names = self._mixing.strata_names
        items = plan.items
        done = np.bincount(items.strata[plan.positions[:consumed]], minlength=len(names))
        if self._base is not None:
            done += np.array(self._base)
        last = {}
        for s, name in enumerate(names):
            last[name] = None
            if self.shuffle and done[s]:  # a stratum's items are consumed in its items' order
                position = np.flatnonzero(items.strata == s)[done[s] - 1]
                last[name] = int(self.keys.item_keys(self.seed, self.epoch, items.groups[[position]],
                                                     None if items.copies is None else items.copies[[position]])[0])
        return {
            "step": self.num_replicas * self.batch_size,
            "base": None if self._base is None else list(self._base),
            "strata": {name: int(count) for name, count in zip(names, done)},
            "strata_last": last,
        }

    def load_state_dict(self, state: dict[str, Any], on_dataset_change: str = "strict") -> None:
        """Resume: the next iteration yields this rank's share of what remained.

        The saved state may come from a run with another number of ranks or another
        batch size; the remaining global order is the same either way.

        Parameters
        ----------
        state : dict
            What :meth:`state_dict` returned.
        on_dataset_change : {"strict", "continue", "next_epoch"}
            For a dataset whose composition changed since ``state`` was saved: ``"strict"``
            raises ``DatasetChangedError`` naming the scans added and removed;
            ``"continue"`` serves, in this epoch, every group whose key lies after the last
            one consumed (each once, none consumed before again; in block order, every item
            whose block's key lies after the window the run stopped in, and that window's items
            whose keys lie after the last one consumed); ``"next_epoch"`` starts the next epoch.
        """
        if on_dataset_change not in ("strict", "continue", "next_epoch"):
            raise ParameterError(
                f"on_dataset_change={on_dataset_change!r}; expected one of 'strict', 'continue', 'next_epoch'"
            )
        state = _checked_state(state)
        saved = state.get("fingerprint")
        if saved is not None and self.keys is not None and saved != self.keys.fingerprint:
            self._resume_changed(state, on_dataset_change)
            return
        if state["n_groups"] != self.n_groups:
            raise ParameterError(f"state is for {state['n_groups']} groups, this sampler has {self.n_groups}")
        self.seed, self.shuffle, self.epoch = int(state["seed"]), bool(state["shuffle"]), int(state["epoch"])
        self.block, self.window = state.get("block", (None, self.window))  # the saved run's order
        self._start, self._base = int(state["consumed"]), None
        self._served = tuple(tuple(run) for run in state.get("served", ()))
        if self._stratified and isinstance(state.get("strata"), dict):
            if state.get("step") == self.num_replicas * self.batch_size:  # the same plan: on where it stopped
                self._base = None if state.get("base") is None else tuple(int(c) for c in state["base"])
            else:  # another step size: what remained of each stratum, dealt anew
                self._base = tuple(int(state["strata"].get(name, 0)) for name in self._mixing.strata_names)
                self._start = 0
        self._yielded, self._pass_complete, self._resume_pending = 0, False, True
        if self._start > len(self.global_order()):
            raise ParameterError(f"state['consumed']={self._start} exceeds this epoch's {len(self.global_order())} "
                                 "items; the state is of another sampler")

    def _resume_changed(self, state: dict[str, Any], mode: str) -> None:
        added = sorted(set(self.keys.uids) - set(state.get("uids", ())))
        removed = sorted(set(state.get("uids", ())) - set(self.keys.uids))
        if mode == "strict":
            same = "" if added or removed else " (the same scans: their weights or tags changed)"
            raise DatasetChangedError(
                f"the dataset changed since the state was saved (build {state['fingerprint'][:12]} -> "
                f"{self.keys.fingerprint[:12]}): scans added {self._described(added, state)}, removed "
                f"{self._described(removed, state)}{same}; "
                "pass on_dataset_change='continue' or 'next_epoch' to resume anyway"
            )
        self.seed, self.shuffle = int(state["seed"]), bool(state["shuffle"])
        self.block, self.window = state.get("block", (None, self.window))  # the saved run's order
        self._base, self._served = None, ()
        if mode == "next_epoch":
            self.epoch, self._start = int(state["epoch"]) + 1, 0
        else:
            if not self.shuffle:
                raise ParameterError("on_dataset_change='continue' needs a shuffled (keyed) order")
            self.epoch, self._start = int(state["epoch"]), 0
            self._continue_after(state)
        self._yielded, self._pass_complete, self._resume_pending = 0, False, True

    def _described(self, uids: list[str], state: dict[str, Any]) -> str:
        """The scans ``uids`` as ``uid (file name)``, names from this dataset or the saved state."""
        saved = state.get("names")
        names = dict(zip(state.get("uids", ()), saved)) if isinstance(saved, list) else {}
        return ", ".join(self.keys.described(uids, names)) or "none"

    def _continue_after(self, state: dict[str, Any]) -> None:
        """Skip, in this epoch of the changed dataset, every item whose key is at or before the
        saved run's last one (per stratum where either run is stratified)."""
        last, strata_last = state.get("last_key"), state.get("strata_last")
        if self.block is not None:  # what the run served is not a prefix of this order: left out of it
            if last is not None and state.get("window_keys") is None:
                raise ParameterError("state['last_key'] in block order without state['window_keys']; expected the "
                                     "dict state_dict() returned")
            stopped = [] if last is None else [(*state["window_keys"], last)]
            self._served = tuple(tuple(run) for run in [*state.get("served", ()), *stopped])
            return
        items = self._items(self.epoch)
        if not self._stratified:
            if strata_last is not None:
                raise ParameterError(
                    "the state was saved with stratified batches and the dataset now has random ones; resume with "
                    "on_dataset_change='next_epoch'"
                )
            self._start = 0 if last is None else self.keys.count_upto(self.seed, self.epoch, items, last)
            return
        base = []
        for s, name in enumerate(self._mixing.strata_names):
            bound = strata_last.get(name) if isinstance(strata_last, dict) else last
            where = np.flatnonzero(items.strata == s)
            base.append(0 if bound is None else self.keys.count_upto(self.seed, self.epoch, items, bound, where))
        self._base = tuple(base)


def _checked_state(state: Any) -> dict[str, Any]:
    """``state`` if it is a sampler state whose numbers are of the right kind and range."""
    if not isinstance(state, dict):
        raise ParameterError(f"state of type {type(state).__name__}; expected the dict state_dict() returned")
    missing = [key for key in ("epoch", "seed", "shuffle", "n_groups", "consumed") if key not in state]
    if missing:
        raise ParameterError(f"state lacks {', '.join(missing)}; expected the dict state_dict() returned")
    check_int("state['epoch']", state["epoch"], minimum=0, maximum=_MAX_EPOCH)
    check_int("state['n_groups']", state["n_groups"], minimum=0)
    check_int("state['consumed']", state["consumed"], minimum=0)
    length = state.get("epoch_length", state["n_groups"])
    check_int("state['epoch_length']", length, minimum=0)
    if state["consumed"] > length:
        where = "epoch_length" if "epoch_length" in state else "n_groups"
        raise ParameterError(f"state['consumed']={state['consumed']} exceeds state['{where}']={length}")
    check_seed("state['seed']", state["seed"])
    check_bool("state['shuffle']", state["shuffle"])
    last = state.get("last_key")
    if last is not None:
        check_int("state['last_key']", last, minimum=0, maximum=2**64 - 1)
    block = state.get("block")
    if block is not None:
        if not (isinstance(block, (list, tuple)) and len(block) == 2):
            raise ParameterError(f"state['block']={block!r:.80}; expected [block, window]")
        check_int("state['block'][0]", block[0])
        check_int("state['block'][1]", block[1])
    for name, size in (("window_keys", 2), ("served", 3)):  # block order of a dataset: keys of windows
        value = state.get(name)
        if value is None:
            continue
        runs = [value] if name == "window_keys" else value
        if not isinstance(value, list) or not all(isinstance(run, list) and len(run) == size for run in runs):
            raise ParameterError(f"state[{name!r}]={value!r:.80}; expected what state_dict() returned for a dataset "
                                 "in block order")
        if len(runs) > _MAX_SERVED_RUNS:
            raise ParameterError(f"state[{name!r}] holds {len(runs)} runs; a run continued on a changed dataset "
                                 f"records one each time, at most {_MAX_SERVED_RUNS} in an epoch")
        for run in runs:
            for key in run:
                check_int(f"state[{name!r}]", key, minimum=0, maximum=2**64 - 1)
    for key in ("uids", "names"):
        if key in state and not (isinstance(state[key], list) and all(isinstance(u, str) for u in state[key])):
            raise ParameterError(f"state[{key!r}]={state[key]!r:.80}; expected a list of strings")
    return state


# Epochs are counted in int64 where the order is mixed and where torch holds them.
_MAX_EPOCH = 2**63 - 1
# Runs of one epoch continued on a changed dataset in block order, each a pass over the epoch's items.
_MAX_SERVED_RUNS = 1024


@dataclass(frozen=True, eq=False)
class _Plan:
    """An epoch's order: ``order[i]`` is the group served at position ``i``; with keys, it is
    item ``positions[i]`` (default ``i``) of ``items``. In block order, window ``w`` is
    ``order[windows[w] : windows[w + 1]]``."""

    order: np.ndarray
    items: EpochItems | None = None
    positions: np.ndarray | None = None
    windows: np.ndarray | None = None

    def keys_at(self, keys: GroupKeys, seed: int, epoch: int, at: list[int]) -> np.ndarray:
        """The keys of the items served at positions ``at``."""
        index = np.asarray(at, np.int64) if self.positions is None else self.positions[at]
        copies = None if self.items.copies is None else self.items.copies[index]
        return keys.item_keys(seed, epoch, self.items.groups[index], copies)
