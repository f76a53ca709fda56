"""PyTorch layer: Dataset, batch sampler, DataLoader and on-device patch extraction.

Importing this module imports torch; ``import ptychodata`` does not.

Modules, by job: ``_dataset`` (:class:`GroupedDataset`), ``_shared_batch`` (a batch in one
buffer), ``_sampler`` (:class:`GroupSampler`), ``_block_order`` (:func:`block_order`, an epoch order
for stores larger than the page cache), ``_epoch_orders`` (a store's epoch orders, the next one
computed while an epoch is served), ``_loader`` (:func:`make_loader`,
:class:`GroupLoader`), ``_background`` (a loader iterated ahead in a thread), ``_to_device``
(:func:`to_device`), ``_resident`` (:class:`DeviceStore`), ``_held_frames`` (how it holds
frames: float32 or compact, decoded in the gather), ``_joined`` (a dataset's scans read as one
store, for it), ``_resident_batches`` (its batches in a sampler's order), ``_shard`` (:class:`ShardSampler`: a share of the frames per rank),
``_patches`` (:class:`PatchExtractor`), ``_ptycho_torch`` (ptycho_torch's batch tuple);
``_checks``, ``_dtypes`` and ``_tensordict`` are what these share.
"""

from ptychodata._runtime import optional_import

optional_import("torch", purpose="ptychodata.torch")  # before the submodules, which import torch

from ptychodata.torch._block_order import block_order  # noqa: E402
from ptychodata.torch._dataset import GroupedDataset, collate_batch  # noqa: E402
from ptychodata.torch._loader import GroupLoader, make_loader  # noqa: E402
from ptychodata.torch._patches import PatchExtractor  # noqa: E402
from ptychodata.torch._ptycho_torch import ptycho_torch_batch  # noqa: E402
from ptychodata.torch._resident import DeviceStore  # noqa: E402
from ptychodata.torch._sampler import GroupSampler  # noqa: E402
from ptychodata.torch._shard import ShardSampler  # noqa: E402
from ptychodata.torch._shared_batch import SharedBatch  # noqa: E402
from ptychodata.torch._to_device import to_device  # noqa: E402

__all__ = [
    "DeviceStore",
    "GroupLoader",
    "GroupSampler",
    "GroupedDataset",
    "PatchExtractor",
    "ShardSampler",
    "SharedBatch",
    "block_order",
    "collate_batch",
    "make_loader",
    "ptycho_torch_batch",
    "to_device",
]
