"""A map-style torch Dataset over a prepared store, fetched a whole batch at a time."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch

from ptychodata.dataset import DatasetStore
from ptychodata.errors import ParameterError
from ptychodata.store import Store, batch_schema, open_store, require_ground_truth
from ptychodata.torch._checks import check_with_Y
from ptychodata.torch._ptycho_torch import ptycho_torch_batch
from ptychodata.torch._shared_batch import Placement, SharedBatch, place
from ptychodata.torch._tensordict import tensordict_class

__all__ = ["GroupedDataset", "SharedBatch", "collate_batch"]


class GroupedDataset(torch.utils.data.Dataset):
    """Groups of a store as §7 batches of tensors.

    ``__getitems__`` lets a DataLoader fetch a whole batch with one vectorised
    ``store.batch`` gather instead of B ``__getitem__`` calls (use
    :func:`~ptychodata.torch.make_loader`, or pass ``collate_fn=collate_batch``). Tensors
    share memory with the gathered NumPy arrays (``torch.from_numpy``, no copy), whose
    buffers the store recycles once no tensor or view of a batch is left. The
    dataset pickles as the store's path, so DataLoader workers re-open the memmaps.

    Parameters
    ----------
    store : Store or path
    with_Y : bool or "device"
        Add ground-truth patches ``Y`` (B, C, N, N) complex64 gathered or cut on the CPU;
        ``"device"`` leaves Y to a :class:`~ptychodata.torch.PatchExtractor` on the GPU.
    as_tensordict : bool
        Return a ``tensordict.TensorDict`` with batch size (B,) (needs the ``tensordict`` extra).
    shared_ring : int
        In DataLoader workers each batch is gathered into one shared-memory buffer (a
        :class:`SharedBatch`: one file descriptor to pass, not one per tensor). With
        ``shared_ring`` > 0 a worker reuses a ring of this many such buffers instead of
        fresh shared memory for every batch (fresh pages are slow to fault in).
        A batch then stays valid only until its worker has produced ``shared_ring`` more
        batches: safe when the loader pins memory (the pin thread copies each batch at
        once), or when the loop is done with a batch before it takes
        ``shared_ring - prefetch_factor - 1`` more. 0 (default) allocates fresh memory.
    pin_memory : bool
        In the main process (no workers), gather each batch straight into page-locked
        memory, one buffer per batch (a :class:`SharedBatch`): the DataLoader's pin step
        then has nothing to copy and :func:`~ptychodata.torch.to_device` moves the batch
        in one copy. Needs CUDA.
    layout : {"default", "ptycho_torch"}
        ``"ptycho_torch"``: batches for ptycho_torch's ``PtychoPINN_Lightning``. The
        DataLoader carries them flat (one buffer, as above); :meth:`finish` (which
        :class:`~ptychodata.torch.GroupLoader` applies) makes ptycho_torch's tuple
        ``(fields, probe, probe_scaling)``: ``fields`` a ``tensordict.TensorDict`` with
        batch size (B,) of ``images`` (B, C, N, N) float32 raw amplitudes,
        ``coords_global``, ``coords_relative`` and ``coords_start_relative`` (B, C, 1, 2),
        ``coords_center`` and ``coords_start_center`` (B, 1, 1, 2) float32 (last axis
        (x, y); relative = −(position − centre)), ``nn_indices`` (B, C) int64,
        ``experiment_id`` (B,) int64, ``rms_scaling_constant`` and
        ``physics_scaling_constant`` (B, 1, 1, 1) float32, and with ``with_Y``
        ``label_amp``/``label_phase`` (B, C, N, N) float32; ``probe`` (B, C, 1, N, N)
        complex64 (the normalised probe repeated over C as a stride-0 view);
        ``probe_scaling`` (B, 1, 1, 1) float32. The per-experiment constants are computed
        once, here (:meth:`Store.ptycho_torch_constants`). Needs ``tensordict``.
    probe_scale : float
        ptycho_torch's ``probe_scale`` for the probe normalisation (``layout="ptycho_torch"``).
    """

    def __init__(
        self,
        store: Store | DatasetStore | str | os.PathLike,
        *,
        with_Y: bool | Literal["device"] = False,
        as_tensordict: bool = False,
        shared_ring: int = 0,
        pin_memory: bool = False,
        layout: Literal["default", "ptycho_torch"] = "default",
        probe_scale: float = 4.0,
    ):
        self.store = store if isinstance(store, (Store, DatasetStore)) else open_store(store)
        check_with_Y(with_Y)
        if with_Y is True:
            require_ground_truth(self.store)
        self.layout = batch_schema(layout).layout
        self.constants = None
        if layout == "ptycho_torch":
            _check_ptycho_torch_options(with_Y, as_tensordict)
            self.constants = self.store.ptycho_torch_constants(probe_scale)
        if as_tensordict:
            tensordict_class()
        self.with_Y = with_Y
        self.as_tensordict = as_tensordict
        self.shared_ring = int(shared_ring)
        self._ring: dict[int, list[SharedBatch]] = {}
        self._ring_taken: dict[int, int] = {}
        self._placements: dict[tuple[int, bool], tuple[Placement, int]] = {}
        self.pin_memory = pin_memory
        if pin_memory and not torch.cuda.is_available():
            raise ParameterError("pin_memory=True needs CUDA (page-locked memory is for copies to a GPU)")

    def __len__(self) -> int:
        return len(self.store)

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor] | Any:
        index = np.asarray(indices, np.int64)
        with_Y = self.with_Y is True
        in_worker = torch.utils.data.get_worker_info() is not None
        if in_worker or self.pin_memory:
            if in_worker:
                # Straight into shared memory: the batch crosses to the main process as a
                # handle, not as a copy.
                batch = self._shared_batch(len(index), with_Y)
            else:
                # Straight into page-locked memory from torch's caching host allocator,
                # which reuses a block only once its tensors are gone and copies are done.
                placed, nbytes = self._placement(len(index), with_Y)
                batch = SharedBatch(torch.empty(nbytes, dtype=torch.uint8, pin_memory=True), placed)
            out = {key: value.numpy() for key, value in batch.items()}
            self.store.batch(
                index, with_Y=with_Y, out=out, threads=1 if in_worker else None,  # workers: 1 core each
                layout=self.layout, constants=self.constants,
            )
        else:
            # Pooled arrays: recycled only once every tensor (and view) of a batch is gone.
            arrays = self.store.batch(index, with_Y=with_Y, layout=self.layout, constants=self.constants)
            batch = {key: torch.from_numpy(value) for key, value in arrays.items()}
        if self.as_tensordict:
            return tensordict_class()(dict(batch), batch_size=[len(indices)])
        return batch

    def _placement(self, batch_size: int, with_Y: bool) -> tuple[Placement, int]:
        key = (batch_size, with_Y)
        if key not in self._placements:
            layout = self.store.batch_layout(batch_size, with_Y=with_Y, layout=self.layout)
            self._placements[key] = place(layout)
        return self._placements[key]

    def _shared_batch(self, batch_size: int, with_Y: bool) -> SharedBatch:
        """A batch in shared memory: fresh, or the next slot of the ring."""
        placed, nbytes = self._placement(batch_size, with_Y)
        if self.shared_ring < 1:
            return SharedBatch.shared(placed, nbytes)
        ring = self._ring.setdefault(batch_size, [])
        slot = self._ring_taken.get(batch_size, 0) % self.shared_ring
        self._ring_taken[batch_size] = slot + 1
        if slot == len(ring):
            ring.append(SharedBatch.shared(placed, nbytes))
        return ring[slot]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor] | Any:
        """One group, without the batch axis (for code that indexes the dataset directly);
        with ``layout="ptycho_torch"`` the finished tuple ``(fields, probe, probe_scaling)``."""
        batch = self.__getitems__([index])
        if self.layout == "ptycho_torch":
            return tuple(part[0] for part in self.finish(batch))
        return batch[0] if self.as_tensordict else {key: value[0] for key, value in batch.items()}

    def finish(self, batch: Any) -> Any:
        """A batch as the training loop gets it: for ``layout="ptycho_torch"`` ptycho_torch's
        tuple ``(fields, probe, probe_scaling)`` made from the flat batch (views, no copy);
        otherwise the batch itself. Run in the main process, after pinning."""
        if self.layout != "ptycho_torch" or isinstance(batch, tuple):
            return batch
        return ptycho_torch_batch(batch, self.store.C)


def _check_ptycho_torch_options(with_Y: Any, as_tensordict: bool) -> None:
    """What ``layout="ptycho_torch"`` cannot be combined with, and the package it needs."""
    if with_Y == "device":
        raise ParameterError(
            "with_Y='device' with layout='ptycho_torch'; expected True or False "
            "(its label_amp/label_phase are gathered on the CPU)"
        )
    if as_tensordict:
        raise ParameterError("as_tensordict=True with layout='ptycho_torch'; expected False (its fields are a TensorDict)")
    tensordict_class()


def collate_batch(batch: Any) -> Any:
    """The DataLoader ``collate_fn`` for :class:`GroupedDataset`: its batches are already whole."""
    return batch
