"""GPU-resident loading: a store's (or a dataset's) frames and tables held in device memory,
batches gathered there.

A :class:`DeviceStore` copies what a §7 batch is made of to a device once (patterns, probes,
each group's members, experiment, centre and relative coordinates, and the §5 scales), and
makes every batch there with one gather per run of batches: no host gather, no host→device
copy per batch. Frames are held as float32 amplitudes or compact (float16, bfloat16, uint16
counts; :mod:`ptychodata.torch._held_frames`), decoded inside the gather. Its batches are
those of :meth:`ptychodata.store.Store.batch`, bit for bit
(the keys, shapes and dtypes of :data:`~ptychodata.store.DEFAULT_SCHEMA`), except ``Y`` cut
from the objects by :class:`~ptychodata.torch.PatchExtractor`, which matches NumPy's patches
to float32 tolerance. :func:`~ptychodata.torch.make_loader` with ``resident=True`` serves
them in the order of the same :class:`~ptychodata.torch.GroupSampler` (sharding, resume):
:mod:`ptychodata.torch._resident_batches`. A :class:`~ptychodata.dataset.DatasetStore` is
held as one store whose experiment ``k`` is scan ``k`` (:mod:`ptychodata.torch._joined`):
its batches are :meth:`~ptychodata.dataset.DatasetStore.batch`'s, bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ptychodata._runtime import rows_per_chunk, sorted_unique
from ptychodata.dataset import DatasetStore
from ptychodata.errors import GroupIndexError, ParameterError
from ptychodata.store import (
    DEFAULT_SCHEMA,
    FramesEncoding,
    Store,
    check_batch_indices,
    open_store,
    require_ground_truth,
)
from ptychodata.torch._dtypes import torch_dtype
from ptychodata.torch._held_frames import choose_kernel, convert_rows, gather_decode, held_encoding, to_torch
from ptychodata.torch._joined import JoinedScans
from ptychodata.torch._patches import PatchExtractor

__all__ = ["DeviceStore"]

_CHUNK_BYTES = 64 << 20  # host memory used at a time while frames are copied to the device
_MIN_GATHER_BYTES = 128 << 20  # bytes of batches gathered by one launch on a GPU, at least
_GATHER_SHARE = 64  # and at most this fraction of the GPU's memory
_VIEW_CHUNK = 32  # batches of a run whose views are made at once


def _dtype(key: str) -> np.dtype:
    """The dtype of batch field ``key`` (:data:`~ptychodata.store.DEFAULT_SCHEMA`)."""
    return DEFAULT_SCHEMA.field(key).dtype


def _no_probe(store: Store | JoinedScans) -> str:
    """What a store or dataset without a probe for every experiment (scan) is refused with."""
    if isinstance(store, JoinedScans):
        return (f"dataset {store.name!r}: scan(s) {', '.join(store.scans_without_probe)} have no probe; resident "
                "loading needs one per scan (use the host loader, make_loader(dataset, ...) without resident=True, "
                "or remove those scans)")
    return (f"{store.path}: a source of this store has no probe; resident loading needs one per experiment "
            "(use the host loader, make_loader(store, ...) without resident=True)")


@dataclass
class _Pass:
    """What the batches of a pass (or of one batch) are made from, on the device.

    Pre-scaled float32 frames (``rows`` set): ``rows`` lists, batch after batch, the table
    rows of each batch's X (its members, B·C rows) followed by those of its probes (2
    float32 rows per group), so that one ``index_select`` of any run of consecutive batches
    lays out [X | probe] of each batch contiguously. Other frames (``rows`` None): X is
    decoded from the members' rows (``members``, group after group) with each group's
    ``scale``, and the probes are taken by ``experiment``. The small per-group arrays of
    the pass are gathered at once (``small``); each run of batches takes its per-batch
    views of them when it is gathered, so that few short-lived tensors exist at a time (a
    pass's worth of views up front costs the garbage collector more than it saves).
    """

    sizes: list[int]
    starts: list[int]  # first group of each batch
    rows: torch.Tensor | None  # (n·(C+2),) int64: pre-scaled float32 frames only
    members: torch.Tensor  # (n, C) table rows of each group's members
    experiment: torch.Tensor  # (n,)
    scale: torch.Tensor | None  # (n,) float32 scale of each group, when frames are not pre-scaled
    small: tuple[torch.Tensor, ...]  # (n, ...) each: relative, offsets, nn_indices, group_index, experiment


def _default_gather_bytes(device: torch.device) -> int:
    """The default ``gather_bytes``: on a GPU 1/64 of its memory, at least 128 MiB; 0 elsewhere."""
    if device.type != "cuda":
        return 0
    total = torch.cuda.get_device_properties(device).total_memory
    return max(_MIN_GATHER_BYTES, total // _GATHER_SHARE)


class DeviceStore:
    """A store's (or a dataset's) groups with their frames, probes and coordinates resident
    on one device.

    Frames are copied once (in chunks of bounded host memory); every batch is then
    gathered on the device. Only the patterns that this store's groups use are held (a
    split's validation store holds its own frames, not the whole scan's).

    A :class:`~ptychodata.dataset.DatasetStore` (a build, split or subset) is held as one
    table of every scan's frames: a batch's ``nn_indices`` count patterns across the
    dataset, ``experiment_id`` is the scan's position, each scan's probe, mask and
    ``x_scale`` apply to its rows, and ``group_index`` counts the dataset's groups, as in
    :meth:`DatasetStore.batch <ptychodata.dataset.DatasetStore.batch>`, whose batches these
    are bit for bit (``Y`` as for a store). Every scan needs a probe (a dataset with scans
    that lack one is refused, naming them); compact frames are held compact as for a store
    (a dataset's scans share one encoding). Frames are read from each scan's memory map a
    chunk at a time: no host copy of the whole dataset is made.

    In data-parallel training each rank builds its own ``DeviceStore`` on its own device
    and holds every frame of the store: :class:`~ptychodata.torch.GroupSampler` deals a new
    permutation of all groups to the ranks every epoch, so any rank may need any frame.
    To hold only a share of the frames on each rank, use ``make_loader(...,
    resident=True, shard_by="block" or "scan")`` (:mod:`ptychodata.torch._shard`).
    Device memory is about ``M_used · N² · b`` bytes of frames (``b`` = 4 for float32, 2 for
    float16, bfloat16 and uint16; twice ``M_used · N² · 4`` more for stored ground-truth
    patches), plus about ``(3C + 4) · 8`` bytes per group.

    Parameters
    ----------
    store : Store, DatasetStore or path
        An opened store or dataset (or a split/subset of one).
    device : torch.device or str
        Where to hold the data, e.g. ``"cuda"``, ``"cuda:1"`` or ``"cpu"``.
    frames : {None, "float32", "float16", "bfloat16", "uint16"}
        How the frames are held (:mod:`ptychodata.torch._held_frames`). None (default): a
        compact store (float16, bfloat16, uint16 counts) as it is stored, at 2 bytes a
        pixel, decoded in the gather; float32 amplitudes otherwise. ``"uint16"`` holds a
        store of uint32 or float32 counts as uint16 counts, ``"float16"``/``"bfloat16"``
        rounds any store's amplitudes as ``prepare(frames_dtype=...)`` would; each frame is
        checked and :class:`~ptychodata.errors.FramesRangeError` names one that does not fit
        (nothing is clipped). X is the host's bit for bit for a store of the held encoding;
        rounded on the device, it is the float32 store's to within the encoding's rounding
        (a relative 2⁻⁹ for bfloat16, 2⁻¹² for float16's normal numbers) and the ratio of the
        two stores' x_scale (computed from the rounded amplitudes in a store of that encoding).
    prescale : bool
        For float32 frames only. True (default): frames are held as ``amplitude · x_scale``
        of their experiment, computed once, so X is one ``index_select``. False: frames are
        held as unscaled float32 amplitudes and each batch's X is multiplied by its groups'
        scales in the gather. Both give the host's X bit for bit; materialized stores hold
        their scaled X as they are either way. Compact frames are always scaled in the gather.
    with_Y : bool
        Prepare ground truth now (stored patches copied to the device, or a
        :class:`~ptychodata.torch.PatchExtractor` of the objects); otherwise it is prepared
        the first time a batch asks for ``Y``. A dataset's scans all have stored patches or
        none has (then Y is cut from every scan's object); a mix is refused, naming the scans.
    gather_bytes : int
        Consecutive batches of a pass are gathered together by one launch writing about
        this many bytes (at least one batch), and handed out as views of it: the launch and
        Python costs are paid once per run of batches. A batch still held keeps its run's
        memory (at most about ``gather_bytes``) in use; a loop holding one batch while
        the next run is gathered has two runs' memory in use. Default on a GPU (whose caching
        allocator reuses the buffers): 1/64 of its memory, at least 128 MiB. On an H200
        that is 2.2 GiB; compact batches of 256 and 1024 groups then came at 0.84 to 0.99
        of a bare ``index_select``, against 0.76 to 0.88 with 1/256 of it in the same run
        (the Python work and launch of a run are paid for fewer batches). 0, one batch per
        gather, on the CPU, where fresh large buffers cost page faults.
    chunk_bytes : int
        Host memory used at a time while frames are copied to the device.
    kernel : {"auto", "triton", "torch", "numpy"}
        The gather of frames that are compact or not pre-scaled. ``"triton"``: one fused
        kernel per run (gather, decode, scale and the probes), CUDA only; ``"torch"``: an
        ``index_select`` of the held rows, then the decoding in torch; ``"numpy"``: the
        same with the host's decoding (:func:`~ptychodata.store.decode_into`) on CPU
        tensors. ``"auto"``: ``"triton"`` on CUDA when Triton is installed, else
        ``"torch"``; ``"numpy"`` on the CPU. All give the same bits.

    Attributes
    ----------
    frames : torch.Tensor
        (M_used, N, N) on ``device``: float32 (pre-scaled unless ``prescaled`` is False),
        float16, bfloat16, or int16 holding the bits of uint16 counts.
    encoding : FramesEncoding
        How ``frames`` holds them (dtype, and amplitude or counts).
    N, C : int
    """

    def __init__(
        self,
        store: Store | str | Any,
        device: torch.device | str = "cuda",
        *,
        frames: str | None = None,
        prescale: bool = True,
        with_Y: bool = False,
        gather_bytes: int | None = None,
        chunk_bytes: int = _CHUNK_BYTES,
        kernel: str = "auto",
    ):
        if isinstance(store, DatasetStore):
            store = JoinedScans(store)
        self.store = store if isinstance(store, (Store, JoinedScans)) else open_store(store)
        store = self.store
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ParameterError(f"device={str(device)!r}: CUDA is not available here; use device='cpu'")
        if not store.has_probe:
            raise ParameterError(_no_probe(store))
        self.N, self.C = store.N, store.C
        self.chunk_bytes = int(chunk_bytes)
        if gather_bytes is None:
            gather_bytes = _default_gather_bytes(self.device)
        if gather_bytes < 0:
            raise ParameterError(f"gather_bytes={gather_bytes}; expected a number of bytes >= 0")
        self.gather_bytes = int(gather_bytes)
        self.kernel = choose_kernel(kernel, self.device)
        self.encoding = held_encoding(store.frames_encoding, frames, materialized=store.materialized_X is not None,
                                      where=str(store.path))
        groups = np.asarray(store.groups, np.int64)
        self.probes = self._put(np.stack([np.asarray(store.probe(e), _dtype("probe")) for e in range(store.n_experiments)]))
        table, members = self._upload_frames(groups, bool(prescale))
        self._table = table
        if self.prescaled:
            # The probes ride along as the table's last rows, so that one index_select gathers
            # a batch's X and probe (bytes copied as they are: the probe stays bit-exact).
            self._probe_row0 = len(table) - 2 * store.n_experiments
            table[self._probe_row0 :].copy_(torch.view_as_real(self.probes).reshape(-1, self.N, self.N))
            self.frames = table[: self._probe_row0]
        else:
            self.frames = table
        self._put_group_tables(groups, members)
        has_mask = store.mask(0) is not None
        self.masks = self._put(np.stack([store.mask(e) for e in range(store.n_experiments)])) if has_mask else None
        self._patches: torch.Tensor | None = None
        self._extractor: PatchExtractor | None = None
        if with_Y:
            self._load_ground_truth()

    def _upload_frames(self, groups: np.ndarray, prescale: bool) -> tuple[torch.Tensor, np.ndarray]:
        """The frames table on the device (with 2 rows a probe left at its end when the
        frames are pre-scaled float32) and each group's members as rows of it; sets
        ``materialized``, ``prescaled`` and the patterns used."""
        store = self.store
        x_scale = np.asarray(store.x_scale, np.float32)
        materialized = store.materialized_X
        self.materialized = materialized is not None
        probe_rows = 2 * store.n_experiments
        if materialized is not None:
            # X already scaled, one (C, N, N) block per group: the frames are those blocks.
            self._used = None
            self.prescaled = True
            table = self._upload(lambda a, b: materialized[a:b].reshape(-1, self.N, self.N),
                                 len(groups), self.C, extra_rows=probe_rows)
            return table, np.arange(groups.size, dtype=np.int64).reshape(groups.shape)
        used = sorted_unique(groups)
        self._used = None if len(used) == store.n_patterns else used
        members = groups if self._used is None else np.searchsorted(used, groups)
        pattern_experiment = np.asarray(store.pattern_experiment)
        group_experiment = np.asarray(store.group_experiment)
        n_frames = store.n_patterns if self._used is None else len(self._used)
        rows = np.arange(store.n_patterns) if self._used is None else self._used
        if not self.encoding.is_identity:
            # Compact: held as stored (or converted and checked), decoded and scaled in the gather.
            self.prescaled = False
            stored, held, where = store.frames_encoding, self.encoding, str(store.path)
            source = store.patterns
            table = self._upload(
                lambda a, b: convert_rows(stored, held, np.asarray(source[rows[a:b]]), rows[a:b], where),
                n_frames, 1, held=held,
            )
            return table, members
        # The host scales a group's members by the group's experiment; a frame can be
        # pre-scaled by its own only where the two agree for every member.
        agree = bool(np.all(pattern_experiment[groups] == group_experiment[:, None])) if groups.size else True
        self.prescaled = prescale and agree
        frame_scale = None
        if self.prescaled:
            frame_scale = torch.from_numpy(x_scale[pattern_experiment[rows]]).to(self.device)
        # Float32 amplitudes whatever the stored encoding (converted on the host, as the host gather does).
        table = self._upload(self._rows_of(store.amplitudes), n_frames, 1, frame_scale,
                             extra_rows=probe_rows if self.prescaled else 0)
        return table, members

    def _put_group_tables(self, groups: np.ndarray, members: np.ndarray) -> None:
        """Each group's members, index, experiment, coordinates, and the §5 scales, on the device."""
        store = self.store
        self._groups = self._put(np.asarray(groups, _dtype("nn_indices")))
        self._members = self._groups if members is groups else self._put(members)
        self._group_index = self._put(np.asarray(store.group_indices, _dtype("group_index")))
        self._experiment = self._put(np.asarray(store.group_experiment, _dtype("experiment_id")))
        self._relative = self._put(np.asarray(store.group_relative, _dtype("coords_relative")).reshape(-1, self.C, 1, 2))
        self._offsets = self._put(np.asarray(store.group_centres, _dtype("coords_offsets")).reshape(-1, 1, 1, 2))
        self._x_scale = self._put(np.asarray(store.x_scale, np.float32))

    # ------------------------------------------------------------------ copying to the device
    def _put(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.array(array, copy=True)).to(self.device)

    def _rows_of(self, source: np.ndarray):
        used = self._used
        if used is None:
            return lambda a, b: source[a:b]
        return lambda a, b: source[used[a:b]]

    def _upload(
        self,
        rows: Any,
        n_rows: int,
        per_row: int,
        scale: torch.Tensor | None = None,
        extra_rows: int = 0,
        held: FramesEncoding | None = None,
    ) -> torch.Tensor:
        """Rows ``rows(a, b)`` of a source, (n_rows·per_row, N, N), copied to the device in
        chunks of about ``chunk_bytes``; multiplied by ``scale`` (one per output frame) there.
        ``extra_rows`` more rows are left uninitialised at the end. ``held``: the rows are in
        that encoding's storage dtype (held as :func:`to_torch` says); else float32 or complex64."""
        convert = (lambda array: torch.from_numpy(array)) if held is None else (lambda array: to_torch(held, array))
        first = convert(np.array(rows(0, min(1, n_rows)), copy=True))
        dtype = first.dtype if held is not None else torch_dtype(np.dtype(str(first.dtype).removeprefix("torch.")))
        out = torch.empty((n_rows * per_row + extra_rows, self.N, self.N), dtype=dtype, device=self.device)
        step = rows_per_chunk(max(1, first[:1].numel() * first.element_size()) * per_row, self.chunk_bytes)
        for a in range(0, n_rows, step):
            b = min(a + step, n_rows)
            host = convert(np.array(rows(a, b), copy=True)).reshape(-1, self.N, self.N)
            part = out[a * per_row : b * per_row]
            part.copy_(host)
            if scale is not None:
                part.mul_(scale[a * per_row : b * per_row, None, None])
        return out

    def _load_ground_truth(self) -> None:
        """Stored patches copied to the device, or a PatchExtractor of the objects; once."""
        if self._patches is not None or self._extractor is not None:
            return
        store = self.store
        stored = store.stored_patches
        if stored is not None:
            # Rows of the frames (pattern indices where X is materialized, as then).
            self._patches = self._upload(self._rows_of(stored), len(stored) if self._used is None else len(self._used), 1)
            return
        require_ground_truth(store)
        self._extractor = PatchExtractor.from_store(store, self.device)

    # ------------------------------------------------------------------ sizes
    def __len__(self) -> int:
        return len(self._group_index)

    @property
    def nbytes(self) -> int:
        """Device memory held: frames, stored patches, probes and per-group tables."""
        tensors = [self._table, self._groups, self._group_index, self._experiment, self._relative,
                   self._offsets, self._x_scale, self.probes]
        if self._members is not self._groups:
            tensors.append(self._members)
        if self._patches is not None:
            tensors.append(self._patches)
        if self.masks is not None:
            tensors.append(self.masks)
        return sum(t.numel() * t.element_size() for t in tensors)

    def batch_layout(self, batch_size: int, *, with_Y: bool = False) -> dict[str, tuple[tuple[int, ...], Any]]:
        """Shape and dtype of each array of a batch (§7), as :meth:`Store.batch_layout`."""
        return self.store.batch_layout(batch_size, with_Y=with_Y)

    # ------------------------------------------------------------------ batches
    def batch(self, indices: Any, *, with_Y: bool = False) -> dict[str, torch.Tensor]:
        """Gather groups ``indices`` into a §7 batch of tensors on the device.

        Parameters
        ----------
        indices : sequence of int or tensor, shape (B,)
            Positions in this store's groups (``0 <= i < len(store)``; negative counts from
            the end), in the order the batch should have. A tensor on the device is
            checked there (its minimum and maximum are read back, a synchronisation).
        with_Y : bool
            Add ground-truth patches ``Y`` (B, C, N, N) complex64.

        Returns
        -------
        dict of torch.Tensor
            The keys, shapes and dtypes of :meth:`ptychodata.store.Store.batch`, on the
            device: ``X`` (B, C, N, N) float32, ``coords_relative`` (B, C, 1, 2),
            ``coords_offsets`` (B, 1, 1, 2), ``nn_indices`` (B, C), ``group_index`` (B,),
            ``experiment_id`` (B,), ``probe`` (B, N, N) complex64, and ``Y`` if asked.
        """
        index = self._check_indices(indices)
        if with_Y:
            self._load_ground_truth()
        return next(self._gather_run(self.plan(index, [len(index)]), 0, 1, with_Y))

    def _check_indices(self, indices: Any) -> np.ndarray | torch.Tensor:
        n = len(self)
        if isinstance(indices, torch.Tensor):
            index = indices.to(self.device)
            if index.ndim != 1 or index.dtype.is_floating_point or index.dtype.is_complex or index.dtype == torch.bool:
                raise GroupIndexError(f"batch indices must be a 1-D tensor of ints; got shape {tuple(index.shape)} "
                                      f"{index.dtype}")
            index = index.long()
            if index.numel():
                low, high = int(index.min()), int(index.max())
                if low < -n or high >= n:
                    raise GroupIndexError(f"group index {low if low < -n else high} out of range for a store of "
                                          f"{n} groups")
            return torch.where(index < 0, index + n, index)
        return check_batch_indices(indices, n)

    def _to_device(self, host: np.ndarray) -> torch.Tensor:
        """A small int64 host array (a pass's positions) on the device. A plain copy: staging
        it in page-locked memory first measured slower on an H200 (batch 64: 2.6 against 3.3
        M groups/s), the page-locked allocation costing more than the wait it saves."""
        return torch.from_numpy(np.ascontiguousarray(host)).to(self.device)

    def plan(self, positions: np.ndarray | torch.Tensor, sizes: np.ndarray | list[int]) -> _Pass:
        """The batches of groups ``positions`` ((n,) int64, checked), cut into consecutive
        batches of ``sizes`` groups: per-group arrays gathered and laid out at once."""
        C = self.C
        counts = np.asarray(sizes, np.int64).reshape(-1)
        n = int(counts.sum())
        starts = np.cumsum(counts) - counts
        interleave = self.prescaled
        if isinstance(positions, torch.Tensor):
            positions = positions.to(self.device)
            batches = self._to_device(np.concatenate([starts, counts])) if interleave else None
        else:  # one copy to the device: the positions, then each batch's first group and size
            host = self._to_device(np.concatenate([np.asarray(positions, np.int64).reshape(-1), starts, counts]))
            positions, batches = host[:n], host[n:]
        nn = self._groups.index_select(0, positions)
        members = nn if self._members is self._groups else self._members.index_select(0, positions)
        experiment = self._experiment.index_select(0, positions)
        rows = None
        if interleave:
            # Each group's batch's first group and size (repeated on the device, no host work per group).
            first, size = (torch.repeat_interleave(part, batches[len(counts):], output_size=n)
                           for part in batches.view(2, -1))
            # Where each member's and each probe's row goes in the batch-after-batch layout.
            within = torch.arange(n, device=self.device) - first
            base = first * (C + 2)
            member_slot = (base + within * C)[:, None] + torch.arange(C, device=self.device)
            probe_slot = (base + size * C + within * 2)[:, None] + torch.arange(2, device=self.device)
            rows = torch.empty(n * (C + 2), dtype=torch.int64, device=self.device)
            rows[member_slot.reshape(-1)] = members.reshape(-1)
            rows[probe_slot.reshape(-1)] = ((experiment * 2 + self._probe_row0)[:, None]
                                            + torch.arange(2, device=self.device)).reshape(-1)
        small = (
            self._relative.index_select(0, positions),
            self._offsets.index_select(0, positions),
            nn,
            self._group_index.index_select(0, positions),
            experiment,
        )
        return _Pass(
            sizes=counts.tolist(),
            starts=starts.tolist(),
            rows=rows,
            members=members,
            experiment=experiment,
            scale=None if self.prescaled else self._x_scale.index_select(0, experiment),
            small=small,
        )

    def batches_per_gather(self, batch_size: int) -> int:
        """How many batches of ``batch_size`` one gather writes (``gather_bytes``)."""
        return max(1, self.gather_bytes // max(1, batch_size * (self.C + 2) * self.N * self.N * 4))

    def _gather_run(self, plan: _Pass, first: int, k: int, with_Y: bool) -> Iterator[dict[str, torch.Tensor]]:
        """Batches ``first`` to ``first + k - 1`` of ``plan``, all of one size B: the run is
        gathered when the first batch is asked for, then each batch is views of it.

        Pre-scaled float32 frames: one ``index_select`` gathers the X rows and the probe
        rows of the k batches into one buffer laid out batch after batch ([X of batch 1 |
        probe of batch 1 | X of batch 2 ...]), so each batch's X and probe are contiguous
        views of it. Other frames: one fused gather (:func:`gather_decode`) writes the k
        batches' X, decoded and scaled, and their probes. Launches and Python work are paid
        per run, not per batch; a batch held keeps its run's buffers alive. The views are
        made ``_VIEW_CHUNK`` batches at a time, so that those not yet handed out stay few
        (the garbage collector then finds them young, not in its older generations). Keys
        in the order of :meth:`ptychodata.store.Store.batch`.
        """
        C, N = self.C, self.N
        B = plan.sizes[first]
        start = plan.starts[first]
        stop = start + k * B
        if plan.rows is not None:
            buffer = self._table.index_select(0, plan.rows[start * (C + 2) : stop * (C + 2)]).view(k, B * (C + 2), N, N)
            X = buffer[:, : B * C].view(k, B, C, N, N)
            probe = buffer[:, B * C :].view(torch.complex64).view(k, B, N, N)
        else:
            X = torch.empty((k, B, C, N, N), dtype=torch.float32, device=self.device)
            probe = torch.empty((k, B, N, N), dtype=torch.complex64, device=self.device)
            gather_decode(
                self.kernel, self.encoding, self._table, plan.members[start:stop].reshape(-1),
                None if plan.scale is None else plan.scale[start:stop], C, X.view(-1, N, N),
                self.probes, plan.experiment[start:stop], probe.view(-1, N, N),
            )
        fields = [X, probe, *(field[start:stop].view(k, B, *field.shape[1:]) for field in plan.small)]
        if with_Y:
            fields.append(plan.members[start:stop].view(k, B, C))
        masks = self.masks
        for chunk in range(0, k, _VIEW_CHUNK):
            views = [field[chunk : chunk + _VIEW_CHUNK].unbind(0) for field in fields]
            for x, p, relative, offsets, nn, group_index, experiment, *members in zip(*views):
                # The schema's keys, in its order (DEFAULT_SCHEMA.keys(probe=True, mask=..., with_Y=...)).
                batch = {"X": x, "coords_relative": relative, "coords_offsets": offsets, "nn_indices": nn,
                         "group_index": group_index, "experiment_id": experiment, "probe": p}
                if masks is not None:
                    batch["mask"] = masks.index_select(0, experiment)
                if with_Y:
                    batch["Y"] = self._ground_truth(nn, members[0])
                yield batch

    def _ground_truth(self, nn: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
        """Y (B, C, N, N) complex64 of a batch: stored patches gathered (held in the frames'
        rows, or by pattern where X is materialized), or cut from the objects."""
        if self._patches is None:
            return self._extractor.for_members(nn)
        rows = nn if self.materialized else members
        return self._patches.index_select(0, rows.reshape(-1)).view(*rows.shape, self.N, self.N)
