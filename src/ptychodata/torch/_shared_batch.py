"""A batch whose tensors are views of one buffer: one file descriptor to pass between
processes, one copy to pin or to move to a device."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ptychodata.torch._dtypes import torch_dtype

__all__ = ["Placement", "SharedBatch", "place"]

Placement = list[tuple[str, tuple[int, ...], torch.dtype, int]]
"""Each array of a batch in one buffer: key, shape, torch dtype, byte offset."""

_ALIGN = 64


def place(layout: dict[str, tuple[tuple[int, ...], Any]]) -> tuple[Placement, int]:
    """Byte offset of each array of ``layout`` (``{key: (shape, numpy dtype)}``) in one
    buffer (64-byte aligned), and the buffer's size."""
    placed, offset = [], 0
    for key, (shape, dtype) in layout.items():
        placed.append((key, tuple(shape), torch_dtype(dtype), offset))
        offset += -(-math.prod(shape) * np.dtype(dtype).itemsize // _ALIGN) * _ALIGN
    return placed, max(offset, 1)


def _views(buffer: torch.Tensor, placement: Placement) -> dict[str, torch.Tensor]:
    views = {}
    for key, shape, dtype, offset in placement:
        nbytes = math.prod(shape) * dtype.itemsize
        views[key] = buffer[offset : offset + nbytes].view(dtype).view(shape)
    return views


class SharedBatch(dict):
    """A batch whose tensors are views of one shared-memory buffer.

    It is a dict of tensors, and it pickles as that one buffer plus the placement: crossing
    from a DataLoader worker to the main process then passes one file descriptor, not
    one per tensor. Pinning it (the DataLoader's pin thread) and moving it to a device
    (:func:`~ptychodata.torch.to_device`) are one copy each, too.

    Parameters
    ----------
    buffer : torch.Tensor
        (nbytes,) uint8.
    layout : list of (key, shape, torch dtype, byte offset)
        Where each tensor lies in ``buffer`` (:func:`place`).
    """

    _ALIGN = _ALIGN

    def __init__(self, buffer: torch.Tensor, layout: Placement):
        super().__init__(_views(buffer, layout))
        self.buffer = buffer
        self.layout = layout

    @classmethod
    def empty(cls, layout: dict[str, tuple[tuple[int, ...], Any]]) -> SharedBatch:
        """Uninitialised shared memory for ``layout`` (``{key: (shape, numpy dtype)}``)."""
        return cls.shared(*place(layout))

    @classmethod
    def shared(cls, placed: Placement, nbytes: int) -> SharedBatch:
        return cls(torch.empty(nbytes, dtype=torch.uint8).share_memory_(), placed)

    def __reduce__(self):
        return (SharedBatch, (self.buffer, self.layout))

    def __copy__(self) -> dict[str, torch.Tensor]:
        return dict(self)  # a copy whose values may be replaced no longer matches the buffer

    def pin_memory(self) -> SharedBatch:
        """The batch in page-locked memory: one allocation and one copy (the DataLoader's pin
        thread calls this), instead of one per tensor; itself if already pinned."""
        if self.buffer.is_pinned():
            return self
        return SharedBatch(self.buffer.pin_memory(), self.layout)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> SharedBatch:
        """The batch on ``device`` in one copy of the buffer."""
        return SharedBatch(self.buffer.to(device, non_blocking=non_blocking), self.layout)
