"""Moving a batch (host tensors, a shared buffer, a TensorDict or ptycho_torch's tuple) to a device."""

from __future__ import annotations

from typing import Any

import torch

from ptychodata.torch._shared_batch import SharedBatch

__all__ = ["to_device"]


def to_device(batch: Any, device: torch.device | str, *, non_blocking: bool = True) -> Any:
    """Move a batch (dict of tensors, TensorDict, or ptycho_torch's tuple of them) to
    ``device``; with pinned host memory the copies are asynchronous (``non_blocking``).
    A tensor repeated along an axis by ``expand`` (ptycho_torch's probe over C) moves
    once and is repeated again on the device."""
    if isinstance(batch, tuple):
        return tuple(to_device(part, device, non_blocking=non_blocking) for part in batch)
    if isinstance(batch, torch.Tensor):
        return _move_tensor(batch, device, non_blocking)
    if isinstance(batch, SharedBatch) or (hasattr(batch, "to") and not isinstance(batch, dict)):
        return batch.to(device, non_blocking=non_blocking)
    return {key: value.to(device, non_blocking=non_blocking) for key, value in batch.items()}


def _move_tensor(tensor: torch.Tensor, device: torch.device | str, non_blocking: bool) -> torch.Tensor:
    shape, strides = tensor.shape, tensor.stride()
    repeated = [axis for axis in range(tensor.dim()) if strides[axis] == 0 and shape[axis] > 1]
    if not repeated:
        return tensor.to(device, non_blocking=non_blocking)
    index = tuple(slice(0, 1) if axis in repeated else slice(None) for axis in range(tensor.dim()))
    return tensor[index].to(device, non_blocking=non_blocking).expand(tensor.shape)
