"""GPU-resident loading: a store's frames and tables held in device memory, batches gathered there.

A :class:`DeviceStore` copies what a §7 batch is made of to a device once (patterns, probes,
each group's members, experiment, centre and relative coordinates, and the §5 scales), and
makes every batch there with a few ``index_select`` calls: no host gather, no host→device
copy per batch. Its batches are those of :meth:`ptychodata.store.Store.batch`, bit for bit
(the keys, shapes and dtypes of :data:`~ptychodata.store.DEFAULT_SCHEMA`), except ``Y`` cut
from the objects by :class:`~ptychodata.torch.PatchExtractor`, which matches NumPy's patches
to float32 tolerance. :func:`~ptychodata.torch.make_loader` with ``resident=True`` serves
them in the order of the same :class:`~ptychodata.torch.GroupSampler` (sharding, resume):
:mod:`ptychodata.torch._resident_batches`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ptychodata._runtime import rows_per_chunk
from ptychodata.dataset import DatasetStore
from ptychodata.errors import GroupIndexError, ParameterError
from ptychodata.store import DEFAULT_SCHEMA, Store, check_batch_indices, open_store, require_ground_truth
from ptychodata.torch._dtypes import torch_dtype
from ptychodata.torch._patches import PatchExtractor

__all__ = ["DeviceStore"]

_CHUNK_BYTES = 64 << 20  # host memory used at a time while frames are copied to the device
_GATHER_BYTES = 128 << 20  # batches gathered by one index_select (at least one batch)

_SMALL = ("coords_relative", "coords_offsets", "nn_indices", "group_index", "experiment_id")  # per-group fields of a pass


def _dtype(key: str) -> np.dtype:
    """The dtype of batch field ``key`` (:data:`~ptychodata.store.DEFAULT_SCHEMA`)."""
    return DEFAULT_SCHEMA.field(key).dtype


@dataclass
class _Pass:
    """What the batches of a pass (or of one batch) are made from, on the device.

    ``rows`` lists, batch after batch, the table rows of each batch's X (its members, B·C
    rows) followed by those of its probes (2 float32 rows per group): one ``index_select``
    of any run of consecutive batches lays out [X | probe] of each batch contiguously.
    The small per-group arrays are split into per-batch views up front (one call each).
    """

    sizes: list[int]
    starts: list[int]  # first group of each batch
    rows: torch.Tensor  # (n·(C+2),) int64
    small: list[tuple[torch.Tensor, ...]]  # per batch: the _SMALL fields, in that order
    members: tuple[torch.Tensor, ...]  # per batch: (B, C) table rows, for stored patches
    scale: torch.Tensor | None  # (n,) float32 scale of each group, when frames are not pre-scaled


class DeviceStore:
    """A store's groups with their frames, probes and coordinates resident on one device.

    Frames are copied once (in chunks of bounded host memory); every batch is then
    gathered on the device. Only the patterns that this store's groups use are held (a
    split's validation store holds its own frames, not the whole scan's).

    In data-parallel training each rank builds its own ``DeviceStore`` on its own device
    and holds every frame of the store: :class:`~ptychodata.torch.GroupSampler` deals a new
    permutation of all groups to the ranks every epoch, so any rank may need any frame.
    Device memory is about ``M_used · N² · 4`` bytes of frames (twice that again for
    stored ground-truth patches), plus about ``(3C + 4) · 8`` bytes per group.

    Parameters
    ----------
    store : Store or path
        An opened store (or a split/subset of one).
    device : torch.device or str
        Where to hold the data, e.g. ``"cuda"``, ``"cuda:1"`` or ``"cpu"``.
    prescale : bool
        True (default): frames are held as ``amplitude · x_scale`` of their experiment,
        computed once, so X is one ``index_select``. False: frames are held as unscaled
        float32 amplitudes and each batch's X is multiplied by its groups' scales after
        the gather, one more pass over X. Both give the host's X bit for bit; a store of
        compact frames (float16, bfloat16, counts) is converted to float32 amplitudes on
        the host as it is copied; materialized stores hold their scaled X as they are
        either way.
    gather_bytes : int
        Consecutive batches of a pass are gathered together by one ``index_select`` of
        about this many bytes (at least one batch), and handed out as views of it: the
        launch and Python costs are paid once per run of batches. A batch still held keeps
        its run's memory (at most about ``gather_bytes``) in use. Default 128 MiB on a GPU
        (whose caching allocator reuses the buffers); 0, one batch per gather, on the CPU,
        where fresh large buffers cost page faults.
    with_Y : bool
        Prepare ground truth now (stored patches copied to the device, or a
        :class:`~ptychodata.torch.PatchExtractor` of the objects); otherwise it is prepared
        the first time a batch asks for ``Y``.
    chunk_bytes : int
        Host memory used at a time while frames are copied to the device.

    Attributes
    ----------
    frames : torch.Tensor
        (M_used, N, N) float32 on ``device`` (pre-scaled unless ``prescaled`` is False).
    N, C : int
    """

    def __init__(
        self,
        store: Store | str | Any,
        device: torch.device | str = "cuda",
        *,
        prescale: bool = True,
        with_Y: bool = False,
        gather_bytes: int | None = None,
        chunk_bytes: int = _CHUNK_BYTES,
    ):
        if isinstance(store, DatasetStore):
            raise ParameterError(
                f"dataset {store.name!r}: GPU-resident loading serves one store; load a dataset with the host "
                "loader (make_loader(dataset, ...)), or one scan's store (dataset.stores[k]) resident"
            )
        self.store = store if isinstance(store, Store) else open_store(store)
        store = self.store
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ParameterError(f"device={str(device)!r}: CUDA is not available here; use device='cpu'")
        if not store.has_probe:
            raise ParameterError(
                f"{store.path}: a source of this store has no probe; resident loading needs one per experiment "
                "(use the host loader, make_loader(store, ...) without resident=True)"
            )
        self.N, self.C = store.N, store.C
        self.chunk_bytes = int(chunk_bytes)
        if gather_bytes is None:
            gather_bytes = _GATHER_BYTES if self.device.type == "cuda" else 0
        if gather_bytes < 0:
            raise ParameterError(f"gather_bytes={gather_bytes}; expected a number of bytes >= 0")
        self.gather_bytes = int(gather_bytes)
        n_probe_rows = 2 * store.n_experiments  # a complex64 (N, N) probe is two float32 (N, N) rows
        groups = np.asarray(store.groups, np.int64)
        table, members = self._upload_frames(groups, bool(prescale), extra_rows=n_probe_rows)
        # The probes ride along as the table's last rows, so that one index_select gathers
        # a batch's X and probe (bytes copied as they are: the probe stays bit-exact).
        self._probe_row0 = len(table) - n_probe_rows
        self.frames = table[: self._probe_row0]
        self._table = table
        self._put_group_tables(groups, members)
        self.probes = self._put(np.stack([np.asarray(store.probe(e), _dtype("probe")) for e in range(store.n_experiments)]))
        table[self._probe_row0 :].copy_(torch.view_as_real(self.probes).reshape(-1, self.N, self.N))
        has_mask = store.mask(0) is not None
        self.masks = self._put(np.stack([store.mask(e) for e in range(store.n_experiments)])) if has_mask else None
        self._patches: torch.Tensor | None = None
        self._extractor: PatchExtractor | None = None
        if with_Y:
            self._load_ground_truth()

    def _upload_frames(self, groups: np.ndarray, prescale: bool, extra_rows: int) -> tuple[torch.Tensor, np.ndarray]:
        """The frames table on the device (``extra_rows`` more rows left for the probes) and
        each group's members as rows of it; sets ``materialized``, ``prescaled`` and the
        patterns used."""
        store = self.store
        x_scale = np.asarray(store.x_scale, np.float32)
        materialized = store.materialized_X
        self.materialized = materialized is not None
        if materialized is not None:
            # X already scaled, one (C, N, N) block per group: the frames are those blocks.
            self._used = None
            self.prescaled = True
            table = self._upload(lambda a, b: materialized[a:b].reshape(-1, self.N, self.N),
                                 len(groups), self.C, extra_rows=extra_rows)
            return table, np.arange(groups.size, dtype=np.int64).reshape(groups.shape)
        used = np.unique(groups)
        self._used = None if len(used) == store.n_patterns else used
        members = groups if self._used is None else np.searchsorted(used, groups)
        pattern_experiment = np.asarray(store.pattern_experiment)
        group_experiment = np.asarray(store.group_experiment)
        # The host scales a group's members by the group's experiment; a frame can be
        # pre-scaled by its own only where the two agree for every member.
        agree = bool(np.all(pattern_experiment[groups] == group_experiment[:, None])) if groups.size else True
        self.prescaled = prescale and agree
        frame_scale = None
        if self.prescaled:
            rows = np.arange(store.n_patterns) if self._used is None else self._used
            frame_scale = torch.from_numpy(x_scale[pattern_experiment[rows]]).to(self.device)
        n_frames = store.n_patterns if self._used is None else len(self._used)
        # Float32 amplitudes whatever the stored encoding (converted on the host, as the host gather does).
        table = self._upload(self._rows_of(store.amplitudes), n_frames, 1, frame_scale, extra_rows=extra_rows)
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
        self, rows: Any, n_rows: int, per_row: int, scale: torch.Tensor | None = None, extra_rows: int = 0
    ) -> torch.Tensor:
        """Rows ``rows(a, b)`` of a source, (n_rows·per_row, N, N), copied to the device in
        chunks of about ``chunk_bytes``; multiplied by ``scale`` (one per output frame) there.
        ``extra_rows`` more rows are left uninitialised at the end."""
        first = rows(0, min(1, n_rows))
        out = torch.empty(
            (n_rows * per_row + extra_rows, self.N, self.N), dtype=torch_dtype(first.dtype), device=self.device
        )
        step = rows_per_chunk(first[:1].nbytes * per_row, self.chunk_bytes)
        for a in range(0, n_rows, step):
            b = min(a + step, n_rows)
            host = torch.from_numpy(np.array(rows(a, b), copy=True)).reshape(-1, self.N, self.N)
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
        return self._gather_run(self.plan(index, [len(index)]), 0, 1, with_Y)[0]

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

    def plan(self, positions: np.ndarray | torch.Tensor, sizes: list[int]) -> _Pass:
        """The batches of groups ``positions`` ((n,) int64, checked), cut into consecutive
        batches of ``sizes`` groups: per-group arrays gathered and laid out at once."""
        C = self.C
        n = int(sum(sizes))
        starts = np.cumsum([0, *sizes[:-1]]).astype(np.int64) if sizes else np.zeros(0, np.int64)
        counts = np.asarray(sizes, np.int64)
        batch_start, batch_size = np.repeat(starts, counts), np.repeat(counts, counts)
        if isinstance(positions, torch.Tensor):
            positions = positions.to(self.device)
            host = torch.from_numpy(np.stack([batch_start, batch_size])).to(self.device)
        else:
            host = torch.from_numpy(np.stack([np.asarray(positions, np.int64), batch_start, batch_size])).to(self.device)
            positions = host[0]
            host = host[1:]
        nn = self._groups.index_select(0, positions)
        members = nn if self._members is self._groups else self._members.index_select(0, positions)
        experiment = self._experiment.index_select(0, positions)
        # Where each member's and each probe's row goes in the batch-after-batch layout.
        first, size = host[0], host[1]
        within = torch.arange(n, device=self.device) - first
        base = first * (C + 2)
        member_slot = (base + within * C)[:, None] + torch.arange(C, device=self.device)
        probe_slot = (base + size * C + within * 2)[:, None] + torch.arange(2, device=self.device)
        rows = torch.empty(n * (C + 2), dtype=torch.int64, device=self.device)
        rows[member_slot.reshape(-1)] = members.reshape(-1)
        rows[probe_slot.reshape(-1)] = ((experiment * 2 + self._probe_row0)[:, None]
                                        + torch.arange(2, device=self.device)).reshape(-1)
        small = [
            self._relative.index_select(0, positions).split(sizes),
            self._offsets.index_select(0, positions).split(sizes),
            nn.split(sizes),
            self._group_index.index_select(0, positions).split(sizes),
            experiment.split(sizes),
        ]
        return _Pass(
            sizes=list(sizes),
            starts=starts.tolist(),
            rows=rows,
            small=list(zip(*small)),
            members=members.split(sizes),
            scale=None if self.prescaled else self._x_scale.index_select(0, experiment),
        )

    def batches_per_gather(self, batch_size: int) -> int:
        """How many batches of ``batch_size`` one ``index_select`` gathers (``gather_bytes``)."""
        return max(1, self.gather_bytes // max(1, batch_size * (self.C + 2) * self.N * self.N * 4))

    def _gather_run(self, plan: _Pass, first: int, k: int, with_Y: bool) -> list[dict[str, torch.Tensor]]:
        """Batches ``first`` to ``first + k - 1`` of ``plan``, all of one size B.

        One ``index_select`` gathers the X rows and the probe rows of the k batches into one
        buffer laid out batch after batch ([X of batch 1 | probe of batch 1 | X of batch 2
        ...]), so each batch's X and probe are contiguous views of it: launches and Python
        work are paid per run, not per batch. A batch held keeps its run's buffer alive.
        Keys in the order of :meth:`ptychodata.store.Store.batch`.
        """
        C, N = self.C, self.N
        B = plan.sizes[first]
        start = plan.starts[first]
        stop = start + k * B
        rows = plan.rows[start * (C + 2) : stop * (C + 2)]
        buffer = self._table.index_select(0, rows).view(k, B * (C + 2), N, N)
        X = buffer[:, : B * C].view(k, B, C, N, N)
        if plan.scale is not None:
            # The decode step, here a multiplication by each group's scale (after a no-op
            # conversion of float32). A compact frame dtype converts (and takes the square
            # root of counts) at this one place, where a fused kernel can later do gather,
            # convert, sqrt and scale in one pass.
            X = X.to(torch.float32).mul_(plan.scale[start:stop].view(k, B, 1, 1, 1))
        probe = buffer[:, B * C :].view(torch.complex64).view(k, B, N, N)
        keys = DEFAULT_SCHEMA.keys(with_Y=with_Y, probe=True, mask=self.masks is not None)
        batches = []
        for number, (x, small, p) in enumerate(zip(X.unbind(0), plan.small[first : first + k], probe.unbind(0)), first):
            fields = {"X": x, **dict(zip(_SMALL, small)), "probe": p}
            if self.masks is not None:
                fields["mask"] = self.masks.index_select(0, fields["experiment_id"])
            if with_Y:
                fields["Y"] = self._ground_truth(fields["nn_indices"], plan.members[number])
            batches.append({key: fields[key] for key in keys})  # the schema's keys, in its order
        return batches

    def _ground_truth(self, nn: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
        """Y (B, C, N, N) complex64 of a batch: stored patches gathered (held in the frames'
        rows, or by pattern where X is materialized), or cut from the objects."""
        if self._patches is None:
            return self._extractor.for_members(nn)
        rows = nn if self.materialized else members
        return self._patches.index_select(0, rows.reshape(-1)).view(*rows.shape, self.N, self.N)
