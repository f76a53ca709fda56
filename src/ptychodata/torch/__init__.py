"""PyTorch layer: Dataset, batch sampler, DataLoader and on-device patch extraction.

Importing this module imports torch; ``import ptychodata`` does not.
"""

try:
    import torch as _torch  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without torch
    raise ImportError("ptychodata.torch needs PyTorch: pip install 'ptychodata[torch]'") from exc

from ptychodata.torch._dataset import GroupedDataset, collate_batch, ptycho_torch_batch
from ptychodata.torch._loader import GroupLoader, make_loader, to_device
from ptychodata.torch._patches import PatchExtractor
from ptychodata.torch._resident import DeviceStore
from ptychodata.torch._sampler import GroupSampler

__all__ = [
    "DeviceStore",
    "GroupLoader",
    "GroupSampler",
    "GroupedDataset",
    "PatchExtractor",
    "collate_batch",
    "make_loader",
    "ptycho_torch_batch",
    "to_device",
]
