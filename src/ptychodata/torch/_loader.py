"""DataLoader with good defaults, which knows how far the training loop got (for resume)."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterator
from typing import Any

import torch

from ptychodata._runtime import available_memory, describe_bytes, usable_cores
from ptychodata.dataset import DatasetStore, GroupKeys
from ptychodata.errors import ParameterError
from ptychodata.torch._background import in_background
from ptychodata.torch._checks import check_with_Y
from ptychodata.torch._dataset import GroupedDataset, collate_batch
from ptychodata.torch._joined import JoinedScans
from ptychodata.torch._resident import DeviceStore
from ptychodata.torch._resident_batches import ResidentBatches
from ptychodata.torch._sampler import GroupSampler
from ptychodata.torch._shard import sharded_resident

__all__ = ["GroupLoader", "make_loader"]


class GroupLoader:
    """A ``torch.utils.data.DataLoader`` (or, with ``resident=True``, the device-resident
    batches of a :class:`~ptychodata.torch.DeviceStore`) plus the count of batches the loop
    has received.

    Iterating yields the DataLoader's batches. ``state_dict()`` records how many were
    delivered in the current pass, so a resumed run continues with exactly the batches
    that were not used, even though workers (or the background thread) prefetch ahead.
    With ``background`` > 0 the DataLoader is iterated in a thread that keeps that many
    batches ready: with no workers, the gather (NumPy, without the GIL) then overlaps the
    training step instead of running between steps.
    """

    def __init__(self, loader: Any, sampler: GroupSampler, background: int = 0):
        self.loader = loader
        self.sampler = sampler
        self.background = background
        self.delivered = 0

    def __iter__(self) -> Iterator[Any]:
        self.delivered = 0
        batches = in_background(self.loader, self.background) if self.background else self.loader
        finish = getattr(self.loader.dataset, "finish", None)
        for batch in batches:
            self.delivered += 1
            yield batch if finish is None else finish(batch)

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` (see :meth:`GroupSampler.set_epoch`); a ``state_dict()``
        taken right after it resumes at the start of that epoch (or at a loaded state's
        position in it)."""
        self.sampler.set_epoch(epoch)
        self.delivered = 0

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict(batches_done=self.delivered)

    def load_state_dict(self, state: dict[str, Any], on_dataset_change: str = "strict") -> None:
        """Resume from ``state`` (see :meth:`GroupSampler.load_state_dict`)."""
        self.sampler.load_state_dict(state, on_dataset_change=on_dataset_change)
        self.delivered = 0

    @property
    def dataset(self) -> Any:
        """The :class:`GroupedDataset` (or, resident, the :class:`DeviceStore`) batches come from."""
        return self.loader.dataset


def make_loader(
    store: Any,
    batch_size: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
    num_workers: int | None = None,
    pin_memory: bool | None = None,
    drop_last: bool = False,
    distributed: bool | None = None,
    with_Y: bool | str = False,
    as_tensordict: bool = False,
    prefetch_factor: int | None = None,
    shared_ring: int | None = None,
    background: int | None = None,
    layout: str = "default",
    probe_scale: float = 4.0,
    resident: bool = False,
    device: torch.device | str | None = None,
    frames: str | None = None,
    shard_by: str | None = None,
    block: int | None = None,
    window: int | None = None,
) -> GroupLoader:
    """A loader of §7 batches from a store (or a :class:`GroupedDataset`).

    ``block``: for a store larger than the page cache, a shuffled epoch in block order
    (:func:`~ptychodata.torch.block_order`: blocks of ``block`` neighbouring groups in a
    random order, the groups of each run of ``window`` blocks, default 16, shuffled together),
    so that a window's reads stay in one region of the file; host loader only. Each window is
    read ahead while the one before is served; where the store's patterns are larger than the
    memory this process may use now (free memory and page cache, a cgroup's ``memory.max``,
    ``ulimit -v``), a window served is dropped from memory (:meth:`Store.release
    <ptychodata.store.Store.release>`) to make room for the next (without worker processes,
    which map the pages they read; with several ranks, each drops only its own mapping and
    leaves the page cache they share to the kernel). A warning says where such a store is
    shuffled without ``block``, or where two windows take more than a quarter of that memory
    (a window read ahead is then partly reclaimed before it is served). A dataset's blocks are neighbouring groups of one
    scan, ordered by keys (:meth:`GroupKeys.epoch <ptychodata.dataset.GroupKeys.epoch>`), read
    ahead scan by scan; not with stratified batches.

    ``layout="ptycho_torch"`` yields ptycho_torch's batch tuple ``(fields, probe,
    probe_scaling)`` instead, which its ``PtychoPINN_Lightning`` trains on as it is (keys
    and shapes in :class:`GroupedDataset`; ``probe_scale`` is its probe normalisation's).
    Sampling, resume, sharding and workers are the same for both layouts.

    Defaults, from measurements (``benchmarks/bench_loader.py``, ``bench_gpu.py``):
    ``num_workers=0``: a batch is one vectorised gather, shared among the store's threads
    (one per core, at most 4), and gathering in the main process beats DataLoader
    workers, whose batches must cross processes in shared memory (the README's loader
    tables give the figures). ``background``: without workers, this many batches are gathered
    ahead in a thread (NumPy copies without the GIL), so the gather overlaps the
    training step; 2 when memory is pinned or there are more than 2 cores, else 0.
    ``pin_memory`` when CUDA is available: without workers each batch is then gathered
    straight into page-locked memory, one buffer per batch, so there is no separate pin
    copy and :func:`to_device` is one copy.

    With workers (``num_workers`` > 0): persistent workers, each re-opening the memmaps;
    a worker's batch is one shared-memory buffer (one file descriptor to pass);
    ``shared_ring`` (see :class:`GroupedDataset`) defaults to ``prefetch_factor + 2``
    reused buffers per worker when memory is pinned (the pin thread copies every batch
    out of the ring at once), else 0.

    ``distributed=None`` shards by the initialised ``torch.distributed`` group, if any
    (:class:`GroupSampler` says how).

    ``resident=True`` holds the store's frames, probes and per-group tables in the memory
    of ``device`` (default ``"cuda"`` when available, else ``"cpu"``) as a
    :class:`~ptychodata.torch.DeviceStore`, and gathers every batch there: the batches
    are on the device already, with the keys, shapes, dtypes and values of the host
    loader's (``Y`` from a :class:`~ptychodata.torch.PatchExtractor` where it is cut from
    the objects), in the same sampler's order, with the same sharding and resume. Under
    ``torch.distributed`` each rank holds every frame of the store on its own device
    (pass ``device=f"cuda:{local_rank}"`` or set the current device first): the sampler
    deals all groups anew every epoch. Workers, pinning, the shared ring and the
    background thread have no part in it and are refused. ``frames`` is how the device
    holds the frames (:class:`~ptychodata.torch.DeviceStore`: None keeps a compact store
    compact; ``"float32"``, ``"float16"``, ``"bfloat16"``, ``"uint16"``). ``shard_by="block"``
    or ``"scan"`` gives each rank only a share of the frames and serves its batches from it
    (every group once per epoch across the ranks; :mod:`ptychodata.torch._shard`).

    A dataset (:func:`~ptychodata.open_dataset`, or a split of one) is loaded as a store
    is, on the host or resident (every scan's frames in one device table; batches those of
    :meth:`DatasetStore.batch <ptychodata.dataset.DatasetStore.batch>`). Both loaders
    build one sampler the same way: its epochs follow the dataset's group keys and mixing
    weights, so the host and the resident loader serve the same groups in the same order
    epoch after epoch, and their states (with the dataset's fingerprint) resume alike
    (``load_state_dict(state, on_dataset_change=...)``). ``shard_by`` over a dataset needs
    one without weights (``"scan"`` deals whole scans); its order is the sharded one, and
    a state saved on another build of the dataset resumes only at the next epoch.
    """
    if window is not None and block is None:
        raise ParameterError(f"window={window} without block=; a window is a run of blocks of block order")
    window = 16 if window is None else window
    if resident:
        if block is not None:
            raise ParameterError(f"block={block} with resident=True; block order is for the host loader reading "
                                 "a store from disk (the resident frames are in device memory)")
        if layout != "default":
            raise ParameterError(f"layout={layout!r} with resident=True; the resident loader serves the default layout")
        return _resident_loader(
            store, batch_size, device=device, shuffle=shuffle, seed=seed, drop_last=drop_last,
            distributed=distributed, with_Y=with_Y, as_tensordict=as_tensordict, frames=frames, shard_by=shard_by,
            host_only={"num_workers": (num_workers, (None, 0)), "pin_memory": (pin_memory, (None, False)),
                       "prefetch_factor": (prefetch_factor, (None,)), "shared_ring": (shared_ring, (None, 0)),
                       "background": (background, (None, 0))},
        )
    if device is not None:
        raise ParameterError(
            f"device={str(device)!r} without resident=True; host batches are moved with to_device(batch, device), "
            "or pass resident=True to gather them on the device"
        )
    for name, value in (("frames", frames), ("shard_by", shard_by)):
        if value is not None:
            raise ParameterError(f"{name}={value!r} without resident=True; it says how a device holds the frames")
    return _host_loader(
        store, batch_size, shuffle=shuffle, seed=seed, num_workers=num_workers, pin_memory=pin_memory,
        drop_last=drop_last, distributed=distributed, with_Y=with_Y, as_tensordict=as_tensordict,
        prefetch_factor=prefetch_factor, shared_ring=shared_ring, background=background, layout=layout,
        probe_scale=probe_scale, block=block, window=window,
    )


def _host_loader(
    store: Any,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    num_workers: int | None,
    pin_memory: bool | None,
    drop_last: bool,
    distributed: bool | None,
    with_Y: bool | str,
    as_tensordict: bool,
    prefetch_factor: int | None,
    shared_ring: int | None,
    background: int | None,
    layout: str,
    probe_scale: float,
    block: int | None = None,
    window: int = 16,
) -> GroupLoader:
    """:func:`make_loader` gathering on the host: a DataLoader over a :class:`GroupedDataset`."""
    if num_workers is None:
        num_workers = 0
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    if shared_ring is None:
        shared_ring = (prefetch_factor or 2) + 2 if pin_memory and num_workers > 0 else 0
    dataset = store if isinstance(store, GroupedDataset) else GroupedDataset(
        store,
        with_Y=with_Y,
        as_tensordict=as_tensordict,
        shared_ring=shared_ring,
        pin_memory=pin_memory and num_workers == 0 and torch.cuda.is_available(),
        layout=layout,
        probe_scale=probe_scale,
    )
    sampler = _sampler(dataset, batch_size, shuffle, seed, drop_last, distributed, block=block, window=window)
    if hasattr(dataset.store, "read_ahead"):  # a store read from its files
        _plan_disk_reads(dataset.store, sampler, num_workers)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate_batch,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
    )
    if background is None:
        background = 2 if pin_memory or usable_cores() > 2 else 0
    return GroupLoader(loader, sampler, background=background if num_workers == 0 else 0)


def _plan_disk_reads(store: Any, sampler: GroupSampler, num_workers: int) -> None:
    """How ``sampler``'s batches read ``store``'s patterns file. In block order each window is
    read ahead; where the patterns are more bytes than this process may use now
    (:func:`~ptychodata._runtime.available_memory`: free memory and page cache, a cgroup's
    limit, ``ulimit -v``), the page cache cannot keep them over an epoch, and each window
    served is dropped from memory (without workers, which map the pages they read; with
    several ranks, from this rank's mapping only: the ranks on a machine read the same
    windows, each at its own pace, and share the page cache). Warns where such a store would
    be read at random."""
    available = available_memory()
    larger = available is not None and _pattern_bytes(store) > available
    if larger:
        _warn_of_random_reads(store, sampler, available)
    if sampler.block is None:
        return
    sampler.read_ahead = store.read_ahead
    if num_workers == 0 and larger:
        shared = sampler.num_replicas > 1
        sampler.release = functools.partial(store.release, page_cache=False) if shared else store.release


# Two windows of block order are to take at most this share of the memory a process may use: on
# an H200 host in a 3 GiB cgroup, two windows of 2 GiB had 9 % of a 16 GiB epoch read again,
# 1 GiB 3.6 %, 512 MiB 0.2 % (benchmarks/results/block_order).
_WINDOWS_SHARE = 4


def _pattern_bytes(store: Any) -> int:
    """Bytes of the patterns files a store (or each scan's store of a dataset) reads."""
    return sum(part.patterns.nbytes for part in getattr(store, "stores", [store]))


def _warn_of_random_reads(store: Any, sampler: GroupSampler, available: int) -> None:
    """Warn (at the caller of :func:`make_loader`) where ``sampler``'s order reads ``store``'s
    patterns, larger than the ``available`` bytes of memory, from the disk at a small part of its
    rate: a shuffled epoch without block order (pattern by pattern, at random), or two windows of
    block order larger than a quarter of that memory (pages read ahead reclaimed before they are served)."""
    if not sampler.shuffle:
        return
    nbytes, limit = _pattern_bytes(store), describe_bytes(available)
    if sampler.block is None:
        what = "a dataset" if hasattr(store, "stores") else "a store"
        warnings.warn(f"a shuffled epoch of {what} whose patterns ({describe_bytes(nbytes)}) are more than the "
                      f"memory this process may use ({limit}) reads them from the disk one at a time, at random; "
                      "make_loader(..., block=4096) reads them in long runs (the training page's data-size guide)",
                      UserWarning, stacklevel=5)
        return
    block_bytes = nbytes * sampler.block // max(1, len(store))
    windows = min(nbytes, 2 * sampler.window * block_bytes)
    if windows > available // _WINDOWS_SHARE:
        fits = available // (_WINDOWS_SHARE * 2 * max(1, block_bytes))
        advice = (f"window={fits} keeps them within it" if fits >= 1
                  else "a smaller block (and window) keeps them within it")
        warnings.warn(f"block={sampler.block}, window={sampler.window}: two windows hold about "
                      f"{describe_bytes(windows)} of patterns, more than 1/{_WINDOWS_SHARE} of the memory this process "
                      f"may use ({limit}); the kernel then reclaims pages of a window read ahead before it is served, "
                      f"which are read again; {advice}", UserWarning, stacklevel=5)


def _sampler(
    source: Any,
    batch_size: int,
    shuffle: bool,
    seed: int,
    drop_last: bool,
    distributed: bool | None,
    *,
    block: int | None = None,
    window: int = 16,
) -> GroupSampler:
    """The loader's sampler over the groups of ``source`` (a :class:`GroupedDataset` or a
    :class:`DeviceStore`), the same for the host and the resident loader: ordered by the
    dataset's group keys and weights where the groups are a dataset's; sharded by the
    initialised ``torch.distributed`` group when
    ``distributed`` is True, or None and one is initialised; else one replica."""
    if distributed is None:
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    replicas = {} if distributed else {"num_replicas": 1, "rank": 0}
    return GroupSampler(
        len(source), batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last, keys=_dataset_keys(source),
        block=block, window=window, **replicas,
    )


def _dataset_keys(source: Any) -> GroupKeys | None:
    """The group keys (:meth:`DatasetStore.group_keys`: identities and mixing weights) of
    the dataset whose groups ``source`` serves (a :class:`DatasetStore`, a
    :class:`GroupedDataset` or a :class:`DeviceStore` of one); None for a store's groups."""
    if isinstance(source, GroupedDataset):
        source = source.store
    if isinstance(source, DeviceStore) and isinstance(source.store, JoinedScans):
        source = source.store.dataset
    return source.group_keys() if isinstance(source, DatasetStore) else None


def _resident_loader(
    store: Any,
    batch_size: int,
    *,
    device: torch.device | str | None,
    shuffle: bool,
    seed: int,
    drop_last: bool,
    distributed: bool | None,
    with_Y: bool | str,
    as_tensordict: bool,
    host_only: dict[str, tuple[Any, tuple[Any, ...]]],
    frames: str | None = None,
    shard_by: str | None = None,
) -> GroupLoader:
    """:func:`make_loader` gathering on the device: the batches of a :class:`DeviceStore`."""
    for name, (value, allowed) in host_only.items():
        if value not in allowed:
            expected = " or ".join(repr(a) for a in allowed)
            raise ParameterError(f"{name}={value!r} with resident=True; expected {expected} (batches are gathered "
                                 "on the device, with no host workers, pinning or prefetch thread)")
    check_with_Y(with_Y)
    if isinstance(store, GroupedDataset):
        store = store.store
    shard = None
    if isinstance(store, DeviceStore):
        if device is not None and torch.device(device) != store.device:
            raise ParameterError(f"device={str(device)!r}, but the DeviceStore given is on {store.device}")
        if frames is not None or shard_by is not None:
            raise ParameterError("frames= and shard_by= say how to build a DeviceStore; pass the store instead")
        dataset = store
    else:
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if shard_by is not None:
            dataset, sampler = sharded_resident(store, batch_size, shard_by=shard_by, device=device, frames=frames,
                                                shuffle=shuffle, seed=seed, drop_last=drop_last,
                                                distributed=distributed)
            shard = sampler.shard
        else:
            dataset = DeviceStore(store, device, frames=frames)
    if shard is None:
        sampler = _sampler(dataset, batch_size, shuffle, seed, drop_last, distributed)
    batches = ResidentBatches(dataset, sampler, with_Y=with_Y is True, as_tensordict=as_tensordict, shard=shard)
    return GroupLoader(batches, sampler, background=0)
