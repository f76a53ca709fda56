"""The batches of a :class:`~ptychodata.torch.DeviceStore` in a sampler's order: what
``make_loader(..., resident=True)`` iterates."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from ptychodata.torch._resident import DeviceStore
from ptychodata.torch._tensordict import tensordict_class

__all__ = ["ResidentBatches"]


class ResidentBatches:
    """The batches of one :class:`DeviceStore` in a :class:`GroupSampler`'s order; what a
    :class:`~ptychodata.torch.GroupLoader` iterates for ``make_loader(..., resident=True)``.

    At the start of a pass the whole pass's group positions go to the device in one copy
    and the per-group arrays of the pass are gathered at once; each run of batches is then
    one gather and views of it, with no host→device copy and no synchronisation.
    ``shard``: the sorted positions, in the whole store, of the groups ``dataset`` holds (a
    :class:`~ptychodata.torch._shard.ShardSampler` deals positions in the whole store).
    """

    def __init__(
        self,
        dataset: DeviceStore,
        sampler: Any,
        *,
        with_Y: bool = False,
        as_tensordict: bool = False,
        shard: np.ndarray | None = None,
    ):
        self.dataset = dataset
        self.sampler = sampler
        self.shard = shard  # sorted positions in the whole store of the groups ``dataset`` holds
        self.with_Y = with_Y
        self.as_tensordict = as_tensordict
        if with_Y:
            dataset._load_ground_truth()
        if as_tensordict:
            self._TensorDict = tensordict_class()

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        dataset = self.dataset
        batches = self.sampler.begin_pass()
        positions, sizes = batches.positions, batches.sizes
        if self.shard is not None:  # the sampler deals positions in the whole store
            positions = np.searchsorted(self.shard, positions)
        plan = dataset.plan(positions, sizes)
        runs = _runs(sizes, dataset.batches_per_gather)
        ready: Iterator[dict[str, torch.Tensor]] = iter(())
        for number, _ in enumerate(self.sampler.iter_arrays(batches)):
            if number in runs:
                ready = dataset._gather_run(plan, number, runs[number], self.with_Y)
            batch = next(ready)
            if self.as_tensordict:
                batch = self._TensorDict(batch, batch_size=[sizes[number]], device=dataset.device)
            yield batch


def _runs(sizes: np.ndarray, batches_per_gather: Any) -> dict[int, int]:
    """Runs of consecutive batches of equal size (``sizes`` (b,) int64), each gathered at
    once: the number of batches in the run that starts at each run's first batch."""
    runs: dict[int, int] = {}
    if not len(sizes):
        return runs
    edges = (np.flatnonzero(np.diff(sizes)) + 1).tolist()  # where the batch size changes
    for begin, end in zip([0, *edges], [*edges, len(sizes)]):
        k = batches_per_gather(int(sizes[begin]))
        for first in range(begin, end, k):
            runs[first] = min(k, end - first)
    return runs
