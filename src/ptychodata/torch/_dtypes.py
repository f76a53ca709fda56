"""The torch dtype of each NumPy dtype a batch holds (the fields of the store's batch schemas)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ptychodata.errors import ParameterError

__all__ = ["torch_dtype"]

_TORCH_DTYPES = {
    np.dtype(np.float32): torch.float32,
    np.dtype(np.complex64): torch.complex64,
    np.dtype(np.int64): torch.int64,
    np.dtype(np.bool_): torch.bool,
}


def torch_dtype(dtype: Any) -> torch.dtype:
    """The torch dtype of NumPy dtype ``dtype``, or ``ParameterError`` naming it and those there are."""
    found = _TORCH_DTYPES.get(np.dtype(dtype))
    if found is None:
        names = ", ".join(d.name for d in _TORCH_DTYPES)
        raise ParameterError(f"a batch array of dtype {np.dtype(dtype).name}; expected one of {names}")
    return found
