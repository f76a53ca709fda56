"""The optional ``tensordict`` package, imported where a batch is made a TensorDict."""

from __future__ import annotations

from typing import Any

from ptychodata._runtime import optional_import

__all__ = ["tensordict_class"]


def tensordict_class() -> Any:
    """``tensordict.TensorDict``, or an ImportError naming the extra that installs it."""
    return optional_import("tensordict", purpose="as_tensordict=True or layout='ptycho_torch'").TensorDict
