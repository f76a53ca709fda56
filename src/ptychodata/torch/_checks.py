"""The checks of parameters that the loader's parts share: ``with_Y``, flags, seeds, and a
sampler's place among the ranks."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch.distributed as dist

from ptychodata._runtime import check_int
from ptychodata.errors import ParameterError

__all__ = ["check_bool", "check_seed", "check_with_Y", "replicas_and_rank"]


def check_with_Y(with_Y: Any) -> None:
    """``with_Y`` is True, False or ``"device"``, else ``ParameterError``."""
    if with_Y not in (True, False, "device"):
        raise ParameterError(f"with_Y={with_Y!r}; expected True, False or 'device'")


def check_seed(name: str, seed: Any) -> None:
    """``seed`` is an integer (a ``bool`` is not), else ``ParameterError`` naming ``name``."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ParameterError(f"{name}={seed!r}; expected an integer")


def check_bool(name: str, value: Any) -> None:
    """``value`` is True or False, else ``ParameterError`` naming ``name``."""
    if not isinstance(value, (bool, np.bool_)):
        raise ParameterError(f"{name}={value!r}; expected True or False")


def replicas_and_rank(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    """``(num_replicas, rank)``, each given or taken from ``torch.distributed`` when it is
    initialised (else 1 and 0); ``ParameterError`` unless ``0 <= rank < num_replicas``."""
    distributed = dist.is_available() and dist.is_initialized()
    replicas = num_replicas if num_replicas is not None else (dist.get_world_size() if distributed else 1)
    replicas = check_int("num_replicas", replicas)
    rank = check_int("rank", rank if rank is not None else (dist.get_rank() if distributed else 0), minimum=0)
    if rank >= replicas:
        raise ParameterError(f"rank={rank}; expected 0 <= rank < num_replicas={replicas}")
    return replicas, rank
