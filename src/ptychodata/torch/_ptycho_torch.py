"""ptycho_torch's batch tuple, made from a flat batch of the store's ``"ptycho_torch"`` layout."""

from __future__ import annotations

from typing import Any

import torch

from ptychodata.torch._tensordict import tensordict_class

__all__ = ["ptycho_torch_batch"]


def ptycho_torch_batch(flat: dict[str, torch.Tensor], C: int) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """ptycho_torch's batch tuple from a flat batch of
    :data:`~ptychodata.store.PTYCHO_TORCH_SCHEMA` arrays.

    Parameters
    ----------
    flat : dict of tensors
        ``probe`` (B, 1, 1, N, N), ``probe_scaling`` (B, 1, 1, 1) and the fields.
    C : int
        Channels: the probe is repeated over them (an ``expand`` view, as ptycho_torch does).

    Returns
    -------
    fields : tensordict.TensorDict
        Batch size (B,); every key of ``flat`` but the probe and its scaling.
    probe : tensor of shape (B, C, 1, N, N), complex64
    probe_scaling : tensor of shape (B, 1, 1, 1), float32
    """
    TensorDict = tensordict_class()
    probe = flat["probe"]
    fields = {key: value for key, value in flat.items() if key not in ("probe", "probe_scaling")}
    B = probe.shape[0]
    return TensorDict(fields, batch_size=[B]), probe.expand(B, C, *probe.shape[2:]), flat["probe_scaling"]
