"""Sharded resident loading: each rank holds a share of the frames and serves its batches from it.

``make_loader(store, B, resident=True, shard_by="block" or "scan")`` under ``torch.distributed``
(or with ``num_replicas``/``rank`` given to :class:`ShardSampler`) splits the store's groups
into one shard per rank (:func:`shard_groups`); rank r holds only the frames its shard's groups
use (a :class:`~ptychodata.torch.DeviceStore` of ``store.subset(shard)``) and every batch it
serves is drawn from its shard, so a store larger than one GPU's memory trains on several.

Epoch order: rank r's shard is permuted by ``numpy.random.default_rng([seed, epoch, W, r])``
(W ranks) and cut into batches of ``batch_size``. Every group is served once per epoch across
the ranks. The ranks take equal numbers of batches of equal sizes (data-parallel steps stay in
lockstep): with ``drop_last=False`` a rank whose shard is shorter than the longest pads its
order with its own first groups (at most one group a rank for ``"block"`` shards, the
difference in group counts for ``"scan"`` shards); with ``drop_last=True`` every rank stops at
the whole batches of the shortest shard.

Resume: a state records the epoch, seed and each part of the epoch already served as (ranks,
batch size, batches taken); :meth:`ShardSampler.load_state_dict` replays those parts to find
exactly the groups served, and serves the rest of the epoch, each group once, with any number
of ranks or batch size. It also takes a :class:`~ptychodata.torch.GroupSampler` state (the
host loader's, or an unsharded resident loader's): the groups its global order had consumed
are skipped. A sharded state is for sharded loaders only (a ``GroupSampler`` would read its
``consumed`` as a position in its own order).

Datasets (:class:`~ptychodata.dataset.DatasetStore`, without mixing weights): ``"scan"`` deals
whole scans; the epoch order is the sharded one above, not the dataset's key order, and a
state carries the dataset's fingerprint: a state of another build of the dataset is refused
(``"strict"``) or resumed at the next epoch (``"next_epoch"``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ptychodata._runtime import check_int, sorted_unique
from ptychodata.dataset import DatasetStore, GroupKeys
from ptychodata.errors import DatasetChangedError, ParameterError
from ptychodata.torch._checks import check_bool, check_seed, replicas_and_rank
from ptychodata.torch._joined import JoinedScans
from ptychodata.torch._resident import DeviceStore
from ptychodata.torch._sampler import GroupSampler, PassBatches

__all__ = ["SHARD_BY", "ShardSampler", "Sharding", "shard_groups", "sharded_resident"]

SHARD_BY = ("block", "scan")


@dataclass(frozen=True)
class Sharding:
    """How a store's groups are dealt to ranks: ``"block"`` (contiguous blocks of groups, equal
    in number; neighbouring groups share frames, so a block holds few frames twice) or
    ``"scan"`` (whole experiments, balanced by their patterns: largest first to the rank
    holding the fewest). ``group_experiment`` and ``experiment_patterns`` are needed for
    ``"scan"``."""

    by: str
    n_groups: int
    group_experiment: np.ndarray | None = None
    experiment_patterns: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.by not in SHARD_BY:
            raise ParameterError(f"shard_by={self.by!r}; expected one of {SHARD_BY}")

    @classmethod
    def of_store(cls, store: Any, by: str) -> Sharding:
        """The sharding of ``store``'s groups (a Store or a DatasetStore, or a subset of one;
        a dataset's experiments are its scans)."""
        if by not in SHARD_BY:
            raise ParameterError(f"shard_by={by!r}; expected one of {SHARD_BY}")
        if by == "block":
            return cls(by, len(store))
        if isinstance(store, DatasetStore):
            store = JoinedScans(store)
        return cls(by, len(store), np.asarray(store.group_experiment, np.int64), _patterns_used(store))

    def shards(self, num_replicas: int) -> list[np.ndarray]:
        """The sorted group positions each of ``num_replicas`` ranks holds (a partition)."""
        W = check_int("num_replicas", num_replicas)
        if W > self.n_groups:
            raise ParameterError(f"{W} ranks for {self.n_groups} groups; each rank needs at least one group")
        if self.by == "block":
            return [part.astype(np.int64) for part in np.array_split(np.arange(self.n_groups, dtype=np.int64), W)]
        present = np.flatnonzero(np.bincount(self.group_experiment, minlength=len(self.experiment_patterns)))
        if len(present) < W:
            raise ParameterError(
                f"shard_by='scan' over {W} ranks, but the groups come from {len(present)} scan(s) (experiments); "
                "each rank needs one: use shard_by='block'"
            )
        load = np.zeros(W, np.int64)
        owner = np.full(len(self.experiment_patterns), -1, np.int64)
        for experiment in sorted(present, key=lambda e: (-int(self.experiment_patterns[e]), int(e))):
            rank = int(np.argmin(load))
            owner[experiment] = rank
            load[rank] += self.experiment_patterns[experiment]
        ranks = owner[self.group_experiment]
        return [np.flatnonzero(ranks == r).astype(np.int64) for r in range(W)]


def _patterns_used(store: Any) -> np.ndarray:
    """The number of distinct patterns each experiment's groups use (what a rank holds)."""
    used = sorted_unique(np.asarray(store.groups))
    return np.bincount(np.asarray(store.pattern_experiment)[used], minlength=int(store.n_experiments)).astype(np.int64)


def shard_groups(store: Any, num_replicas: int, by: str = "block") -> list[np.ndarray]:
    """The group positions of ``store`` each of ``num_replicas`` ranks holds (see :class:`Sharding`)."""
    return Sharding.of_store(store, by).shards(num_replicas)


class ShardSampler(torch.utils.data.Sampler):
    """This rank's batches, drawn from its own shard of the groups (module docstring: order,
    padding, resume). Used as :class:`~ptychodata.torch.GroupSampler` is, by a
    :class:`~ptychodata.torch.GroupLoader`.

    Parameters
    ----------
    sharding : Sharding
    batch_size : int
        Groups per batch, per rank.
    shuffle : bool
        Permute each shard every epoch; else each shard in index order.
    seed : int
    drop_last : bool
    num_replicas, rank : int, optional
        World size and rank; default from ``torch.distributed`` when initialised, else 1 and 0.
    keys : GroupKeys, optional
        A dataset's group keys (:meth:`~ptychodata.dataset.DatasetStore.group_keys`, without
        mixing weights): states then carry the dataset's fingerprint, and a state of another
        build of it is refused or resumed at the next epoch (:meth:`load_state_dict`).
    """

    def __init__(
        self,
        sharding: Sharding,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        num_replicas: int | None = None,
        rank: int | None = None,
        keys: GroupKeys | None = None,
    ):
        check_int("batch_size", batch_size)
        if keys is not None and keys.mixing is not None:
            raise ParameterError("keys with mixing weights; a sharded sampler serves every group once an epoch")
        if keys is not None and len(keys.identities) != sharding.n_groups:
            raise ParameterError(f"keys for {len(keys.identities)} groups, but the sharding has {sharding.n_groups}")
        check_bool("shuffle", shuffle)
        check_bool("drop_last", drop_last)
        check_seed("seed", seed)
        self.keys = keys
        self.num_replicas, self.rank = replicas_and_rank(num_replicas, rank)
        self.sharding = sharding
        self.n_groups = sharding.n_groups
        self.shards = sharding.shards(self.num_replicas)
        self.shard = self.shards[self.rank]
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.epoch = 0
        self._served_before: list[dict[str, Any]] = []  # parts of this epoch served before this pass
        self._start_steps = 0  # batches of the current part taken before a resume (same ranks and size)
        self._yielded = 0
        self._pass_complete = False
        self._resume_pending = False

    # ------------------------------------------------------------------ epochs
    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` from its beginning, or, right after :meth:`load_state_dict`
        for that same epoch, from where the saved run stopped."""
        epoch = check_int("epoch", epoch, minimum=0)
        if not (self._resume_pending and epoch == self.epoch):
            self._served_before, self._start_steps = [], 0
            self._yielded, self._pass_complete, self._resume_pending = 0, False, False
        self.epoch = epoch

    def _order(self, shards: list[np.ndarray], rank: int, W: int) -> np.ndarray:
        """Rank ``rank``'s epoch order of its shard (of ``W`` ranks)."""
        shard = shards[rank]
        if not self.shuffle:
            return shard
        return shard[np.random.default_rng([self.seed, self.epoch, W, rank]).permutation(len(shard))]

    def _orders(self, W: int, served: np.ndarray | None) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Each of ``W`` ranks' remaining order (groups in ``served`` left out) and its whole order."""
        shards = self.shards if W == self.num_replicas else self.sharding.shards(W)
        whole = [self._order(shards, r, W) for r in range(W)]
        if served is None:
            return whole, whole
        return [order[~served[order]] for order in whole], whole

    def _own_batches(self) -> list[np.ndarray]:
        """This rank's batches of the current part: only its own shard is permuted when
        nothing of the epoch was served before (the others' lengths are their shards')."""
        served = self._served()
        if served is not None:
            remaining, whole = self._orders(self.num_replicas, served)
            return self._batches(remaining, whole, self.batch_size, self.drop_last)[self.rank]
        W, B = self.num_replicas, self.batch_size
        order = self._order(self.shards, self.rank, W)
        lengths = [len(shard) for shard in self.shards]
        length = min(lengths) // B * B if self.drop_last else max(lengths)
        if length <= len(order):
            order = order[:length]
        else:
            order = np.concatenate([order, np.resize(order, length - len(order))])
        return [order[start : start + B] for start in range(0, length, B)]

    def _batches(self, remaining: list[np.ndarray], whole: list[np.ndarray], B: int, drop_last: bool) -> list[list[np.ndarray]]:
        """Every rank's batches of a part: equal counts and sizes across the ranks."""
        lengths = [len(order) for order in remaining]
        if drop_last:
            length = min(lengths) // B * B
            padded = [order[:length] for order in remaining]
        else:
            length = max(lengths)
            padded = []
            for order, full in zip(remaining, whole):
                fill = order if len(order) else full  # pad with its own first groups (already served, if none remain)
                padded.append(np.concatenate([order, np.resize(fill, length - len(order))]) if length > len(order)
                              else order)
        return [[order[start : start + B] for start in range(0, length, B)] for order in padded]

    def _served(self) -> np.ndarray | None:
        """The groups served in this epoch before the current part (None: none)."""
        if not self._served_before:
            return None
        served = np.zeros(self.n_groups, bool)
        for part in self._served_before:
            if "plain" in part:
                order = GroupSampler(self.n_groups, 1, shuffle=self.shuffle, seed=self.seed, num_replicas=1,
                                     rank=0, keys=self.keys).global_order(self.epoch)
                served[order[: part["plain"]]] = True
                continue
            remaining, whole = self._orders(part["num_replicas"], served)
            for rank_batches in self._batches(remaining, whole, part["batch_size"], part["drop_last"]):
                for batch in rank_batches[: part["steps"]]:
                    served[batch] = True
        return served

    # ------------------------------------------------------------------ this rank's batches
    def _schedule(self) -> PassBatches:
        return PassBatches.of(self._own_batches()[self._start_steps :])

    def begin_pass(self) -> PassBatches:
        """Start a pass and return all of its batches for this rank (group positions in the
        store)."""
        if self._pass_complete:  # iterating again without set_epoch: the whole epoch again
            self._served_before, self._start_steps, self._pass_complete = [], 0, False
        self._yielded, self._resume_pending = 0, False
        return self._schedule()

    def iter_arrays(self, schedule: PassBatches | None = None) -> Iterator[np.ndarray]:
        """This rank's batches of a pass (``schedule`` from :meth:`begin_pass`, or a new pass)."""
        if schedule is None:
            schedule = self.begin_pass()
        for batch in schedule:
            self._yielded += 1
            yield batch
        self._pass_complete = True

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.iter_arrays():
            yield batch.tolist()

    def __len__(self) -> int:
        return len(self._schedule())

    # ------------------------------------------------------------------ resume
    def state_dict(self, batches_done: int | None = None) -> dict[str, Any]:
        """Where the run stands: the epoch, seed and the parts of it served so far.

        ``batches_done``: batches of the current pass the training loop has used (the
        :class:`~ptychodata.torch.GroupLoader` passes it); default, those yielded.
        """
        done = self._yielded if batches_done is None else int(batches_done)
        parts = [dict(part) for part in self._served_before]
        steps = self._start_steps + done
        if steps:
            parts.append({"num_replicas": self.num_replicas, "batch_size": self.batch_size,
                          "drop_last": self.drop_last, "steps": steps})
        served = self._count_served(parts)
        state = {"epoch": self.epoch, "seed": self.seed, "shuffle": self.shuffle, "n_groups": self.n_groups,
                 "consumed": served, "shard": {"by": self.sharding.by, "parts": parts}}
        if self.keys is not None:
            state.update(fingerprint=self.keys.fingerprint, uids=list(self.keys.uids))
            if self.keys.names:
                state["names"] = list(self.keys.names)
        return state

    def _count_served(self, parts: list[dict[str, Any]]) -> int:
        saved = self._served_before
        self._served_before = parts
        try:
            served = self._served()
        finally:
            self._served_before = saved
        return 0 if served is None else int(served.sum())

    def load_state_dict(self, state: dict[str, Any], on_dataset_change: str = "strict") -> None:
        """Resume from ``state`` (this sampler's, with any number of ranks or batch size, or a
        :class:`~ptychodata.torch.GroupSampler`'s): the next pass serves what remained.

        ``on_dataset_change`` for a dataset's loader whose state was saved on another build
        of the dataset: ``"strict"`` raises :class:`~ptychodata.errors.DatasetChangedError`
        naming the scans added and removed; ``"next_epoch"`` starts the epoch after the saved
        one. ``"continue"`` is refused: a sharded order is dealt per rank, not by the
        dataset's group keys, so it cannot go on where a changed dataset's order stood.
        """
        if on_dataset_change not in ("strict", "continue", "next_epoch"):
            raise ParameterError(
                f"on_dataset_change={on_dataset_change!r}; expected one of 'strict', 'continue', 'next_epoch'"
            )
        if not isinstance(state, dict) or any(key not in state for key in ("epoch", "seed", "shuffle", "n_groups",
                                                                           "consumed")):
            raise ParameterError("state: expected the dict a loader's state_dict() returned")
        if self._dataset_changed(state, on_dataset_change):
            return
        if "epoch_length" in state:
            raise ParameterError("state is of a loader that follows mixing weights; a sharded loader serves every "
                                 "group once an epoch, so it cannot resume it")
        if int(state["n_groups"]) != self.n_groups:
            raise ParameterError(f"state is for {state['n_groups']} groups, this sampler has {self.n_groups}")
        self.epoch = check_int("state['epoch']", state["epoch"], minimum=0)
        self.seed, self.shuffle = int(state["seed"]), bool(state["shuffle"])
        shard = state.get("shard")
        if shard is None:
            consumed = check_int("state['consumed']", state["consumed"], minimum=0)
            parts = [{"plain": consumed}] if consumed else []
        else:
            if shard.get("by") != self.sharding.by:
                raise ParameterError(f"state was saved with shard_by={shard.get('by')!r}; this loader shards by "
                                     f"{self.sharding.by!r}")
            parts = [dict(part) for part in shard.get("parts", [])]
        # The last part continues as it was when the ranks and batch size are the same.
        if parts and "plain" not in parts[-1] and parts[-1]["num_replicas"] == self.num_replicas \
                and parts[-1]["batch_size"] == self.batch_size and parts[-1]["drop_last"] == self.drop_last:
            self._served_before, self._start_steps = parts[:-1], int(parts[-1]["steps"])
        else:
            self._served_before, self._start_steps = parts, 0
        self._yielded, self._pass_complete, self._resume_pending = 0, False, True


    def _dataset_changed(self, state: dict[str, Any], mode: str) -> bool:
        """Whether ``state`` is of another build of this loader's dataset and was handled (the
        next epoch started); refuses a store's state for a dataset and the reverse."""
        saved = state.get("fingerprint")
        own = None if self.keys is None else self.keys.fingerprint
        if saved is None and own is None or saved == own:
            return False
        if own is None:
            raise ParameterError("state is a dataset's (it has a fingerprint); this sharded loader serves one store")
        if saved is None:
            raise ParameterError(f"state is a store's (it has no fingerprint); this loader serves dataset build "
                                 f"{own[:12]}")
        if mode == "strict":
            uids = state.get("uids", ())
            names = state.get("names")
            names = dict(zip(uids, names)) if isinstance(names, list) else {}
            added = ", ".join(self.keys.described(sorted(set(self.keys.uids) - set(uids)), names)) or "none"
            removed = ", ".join(self.keys.described(sorted(set(uids) - set(self.keys.uids)), names)) or "none"
            raise DatasetChangedError(
                f"the dataset changed since the state was saved (build {str(saved)[:12]} -> {own[:12]}): scans "
                f"added {added}, removed {removed}; pass on_dataset_change='next_epoch' to resume at the next epoch"
            )
        if mode == "continue":
            raise ParameterError(
                "on_dataset_change='continue' with shard_by: a sharded order is dealt per rank, not by the dataset's "
                "group keys, so it cannot continue on a changed dataset; pass on_dataset_change='next_epoch'"
            )
        self.seed, self.shuffle = int(state["seed"]), bool(state["shuffle"])
        self.epoch = check_int("state['epoch']", state["epoch"], minimum=0) + 1
        self._served_before, self._start_steps = [], 0
        self._yielded, self._pass_complete, self._resume_pending = 0, False, True
        return True


def sharded_resident(
    store: Any,
    batch_size: int,
    *,
    shard_by: str,
    device: torch.device | str,
    frames: str | None = None,
    shuffle: bool = True,
    seed: int = 0,
    drop_last: bool = False,
    distributed: bool | None = None,
) -> tuple[DeviceStore, ShardSampler]:
    """This rank's :class:`ShardSampler` and a :class:`~ptychodata.torch.DeviceStore` of its
    shard (``store.subset(shard)``: only the frames its groups use), on ``device``.

    ``store`` may be a :class:`~ptychodata.dataset.DatasetStore` without mixing weights:
    ``"scan"`` then deals whole scans, balanced by their patterns, and the sampler's states
    carry the dataset's fingerprint. Its epochs are the sharded order (module docstring),
    not the dataset's key order of the unsharded loaders. A dataset with weights is refused:
    a sharded epoch serves every group once.

    ``distributed=None`` shards over the initialised ``torch.distributed`` group, if any;
    False holds one shard of everything.
    """
    if distributed is None:
        distributed = dist.is_available() and dist.is_initialized()
    replicas = {} if distributed else {"num_replicas": 1, "rank": 0}
    keys = None
    if isinstance(store, DatasetStore):
        if store.weights is not None:
            raise ParameterError(
                f"dataset {store.name!r} has mixing weights, and shard_by={shard_by!r} serves every group once an "
                "epoch in a sharded order; use make_loader(dataset, ..., resident=True) without shard_by (each rank "
                "holds every scan), or dataset.without_weights()"
            )
        keys = store.group_keys()
    sampler = ShardSampler(Sharding.of_store(store, shard_by), batch_size, shuffle=shuffle, seed=seed,
                           drop_last=drop_last, keys=keys, **replicas)
    return DeviceStore(store.subset(sampler.shard), device, frames=frames), sampler
