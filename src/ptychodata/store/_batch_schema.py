"""The keys, shapes and dtypes of a batch, for each batch key layout.

The one definition of what a batch holds: the host gather (:class:`~ptychodata.store.Store`)
and the device gather (:class:`~ptychodata.torch.DeviceStore`) both fill exactly the fields of
:data:`DEFAULT_SCHEMA` (the contract's §7 batch), and ``layout="ptycho_torch"`` fills those of
:data:`PTYCHO_TORCH_SCHEMA` (ptycho_torch's flat batch).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ptychodata.errors import ParameterError

__all__ = [
    "DEFAULT_SCHEMA",
    "LAYOUTS",
    "PTYCHO_TORCH_SCHEMA",
    "BatchField",
    "BatchSchema",
    "Layout",
    "batch_schema",
]

Layout = dict[str, tuple[tuple[int, ...], np.dtype]]
"""Shape and dtype of each array of one batch, by key."""

_WHEN = ("always", "probe", "mask", "with_Y")


@dataclass(frozen=True)
class BatchField:
    """One array of a batch.

    Attributes
    ----------
    key : str
        The batch's key for it.
    shape : tuple of str or int
        Its axes: ``"B"`` (groups in the batch), ``"C"`` (patterns per group), ``"N"``
        (pattern side) or a fixed length.
    dtype : numpy.dtype
    when : {"always", "probe", "mask", "with_Y"}
        Present always, when the store has a probe for every experiment, when it has a
        bad-pixel mask, or when ground truth is asked for.
    """

    key: str
    shape: tuple[str | int, ...]
    dtype: np.dtype
    when: str = "always"

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", np.dtype(self.dtype))
        if self.when not in _WHEN:
            raise ParameterError(f"batch field {self.key!r}: when={self.when!r}; expected one of {_WHEN}")

    def shape_for(self, batch_size: int, C: int, N: int) -> tuple[int, ...]:
        """The field's shape in a batch of ``batch_size`` groups of C patterns of N×N."""
        sizes = {"B": int(batch_size), "C": int(C), "N": int(N)}
        return tuple(sizes[axis] if isinstance(axis, str) else int(axis) for axis in self.shape)


@dataclass(frozen=True)
class BatchSchema:
    """The fields of one batch key layout, in the order a batch holds them."""

    layout: str
    fields: tuple[BatchField, ...]

    def keys(self, *, with_Y: bool = False, probe: bool = True, mask: bool = False) -> tuple[str, ...]:
        """The keys of a batch of a store with (or without) probes and masks, with or without Y."""
        present = {"always": True, "probe": probe, "mask": mask, "with_Y": with_Y}
        return tuple(f.key for f in self.fields if present[f.when])

    def field(self, key: str) -> BatchField:
        for f in self.fields:
            if f.key == key:
                return f
        raise KeyError(f"{key!r} is not a key of the {self.layout!r} batch layout")

    def arrays(
        self, batch_size: int, C: int, N: int, *, with_Y: bool = False, probe: bool = True, mask: bool = False
    ) -> Layout:
        """Shape and dtype of each array of a batch of ``batch_size`` groups."""
        return {
            key: (self.field(key).shape_for(batch_size, C, N), self.field(key).dtype)
            for key in self.keys(with_Y=with_Y, probe=probe, mask=mask)
        }


DEFAULT_SCHEMA = BatchSchema(
    "default",
    (
        BatchField("X", ("B", "C", "N", "N"), np.float32),  # scaled amplitudes (§5)
        BatchField("coords_relative", ("B", "C", 1, 2), np.float32),  # last axis (x, y)
        BatchField("coords_offsets", ("B", 1, 1, 2), np.float32),
        BatchField("nn_indices", ("B", "C"), np.int64),  # pattern indices in the store
        BatchField("group_index", ("B",), np.int64),  # the group's index in the whole grouping
        BatchField("experiment_id", ("B",), np.int64),
        BatchField("probe", ("B", "N", "N"), np.complex64, "probe"),
        BatchField("mask", ("B", "N", "N"), np.bool_, "mask"),  # True = usable pixel
        BatchField("Y", ("B", "C", "N", "N"), np.complex64, "with_Y"),
    ),
)
"""The contract's §7 batch (channels first)."""

PTYCHO_TORCH_SCHEMA = BatchSchema(
    "ptycho_torch",
    (
        BatchField("images", ("B", "C", "N", "N"), np.float32),  # raw (unscaled) amplitudes
        BatchField("coords_global", ("B", "C", 1, 2), np.float32),
        BatchField("coords_center", ("B", 1, 1, 2), np.float32),
        BatchField("coords_relative", ("B", "C", 1, 2), np.float32),
        BatchField("coords_start_center", ("B", 1, 1, 2), np.float32),
        BatchField("coords_start_relative", ("B", "C", 1, 2), np.float32),
        BatchField("nn_indices", ("B", "C"), np.int64),
        BatchField("experiment_id", ("B",), np.int64),
        BatchField("rms_scaling_constant", ("B", 1, 1, 1), np.float32),
        BatchField("physics_scaling_constant", ("B", 1, 1, 1), np.float32),
        BatchField("probe", ("B", 1, 1, "N", "N"), np.complex64),  # one mode, not yet repeated over C
        BatchField("probe_scaling", ("B", 1, 1, 1), np.float32),
        BatchField("label_amp", ("B", "C", "N", "N"), np.float32, "with_Y"),  # |Y|
        BatchField("label_phase", ("B", "C", "N", "N"), np.float32, "with_Y"),  # angle(Y)
    ),
)
"""ptycho_torch's ``PtychoDataset`` batch, flat."""

_SCHEMAS = {schema.layout: schema for schema in (DEFAULT_SCHEMA, PTYCHO_TORCH_SCHEMA)}
LAYOUTS = tuple(_SCHEMAS)


def batch_schema(layout: str) -> BatchSchema:
    """The schema of batch key layout ``layout`` (``"default"`` or ``"ptycho_torch"``), or
    ``ParameterError`` naming the layouts there are."""
    schema = _SCHEMAS.get(layout) if isinstance(layout, str) else None
    if schema is None:
        raise ParameterError(f"layout={layout!r}; expected one of {', '.join(map(repr, LAYOUTS))}")
    return schema
