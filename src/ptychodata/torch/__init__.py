"""PyTorch layer: Dataset, batch sampler, DataLoader and on-device patch extraction.

Importing this module imports torch; ``import ptychodata`` does not.
"""

from ptychodata._runtime import optional_import

optional_import("torch", purpose="ptychodata.torch")  # before the submodules, which import torch

from ptychodata.torch._dataset import GroupedDataset, collate_batch, ptycho_torch_batch  # noqa: E402
from ptychodata.torch._loader import GroupLoader, make_loader, to_device  # noqa: E402
from ptychodata.torch._patches import PatchExtractor  # noqa: E402
from ptychodata.torch._resident import DeviceStore  # noqa: E402
from ptychodata.torch._sampler import GroupSampler  # noqa: E402

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
