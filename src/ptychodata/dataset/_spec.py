"""What every scan of a dataset is prepared with: fixed when the dataset is created."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ptychodata._runtime import canonical_json
from ptychodata.errors import ParameterError
from ptychodata.grouping import GroupingConfig
from ptychodata.io import LoadOptions
from ptychodata.store import canonical_frames_dtype

__all__ = ["DatasetSpec", "scan_seed"]

SPEC_VERSION = 1


@dataclass(frozen=True)
class DatasetSpec:
    """The grouping, reading and storing options shared by every scan of a dataset.

    Parameters
    ----------
    config : GroupingConfig
        Its ``seed`` is the dataset's seed: each scan is grouped with :func:`scan_seed` of it
        and the scan's uid, so a scan's groups do not depend on the other scans.
    load_options : LoadOptions or mapping, optional
        Options of :meth:`ScanData.load <ptychodata.scan.ScanData.load>` for every file.
    intensity : bool, optional
        As :func:`~ptychodata.store.prepare`'s.
    frames_dtype : {None, "float32", "float16", "bfloat16", "uint16", "uint32"}
        As :func:`~ptychodata.store.prepare`'s.
    copy, materialize : bool
        As :func:`~ptychodata.store.prepare`'s.
    """

    config: GroupingConfig
    load_options: LoadOptions = field(default_factory=LoadOptions)
    intensity: bool | None = None
    frames_dtype: str | None = None
    copy: bool = True
    materialize: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.config, GroupingConfig):
            raise ParameterError(f"config={self.config!r}; expected a GroupingConfig")
        if self.config.seed is None:
            raise ParameterError(
                "config.seed=None; a dataset needs a seed (each scan's grouping seed is derived from it and the "
                "scan's identity)"
            )
        options = self.load_options
        if not isinstance(options, LoadOptions):
            options = LoadOptions.from_mapping(options if options is not None else {})
        if "intensity" in options.changed():
            raise ParameterError("pass intensity= to the dataset itself, not inside load_options")
        object.__setattr__(self, "load_options", options)
        frames_dtype = canonical_frames_dtype(self.frames_dtype)
        if self.copy and frames_dtype == "float32":
            frames_dtype = None  # the default copy, however it is asked for
        object.__setattr__(self, "frames_dtype", frames_dtype)
        if self.intensity is not None:
            object.__setattr__(self, "intensity", bool(self.intensity))
        object.__setattr__(self, "copy", bool(self.copy))
        object.__setattr__(self, "materialize", bool(self.materialize))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, canonical: equal specs give equal dicts."""
        return {
            "version": SPEC_VERSION,
            "config": self.config.to_dict(),
            "load_options": self.load_options.identity(),
            "intensity": self.intensity,
            "frames_dtype": self.frames_dtype,
            "copy": self.copy,
            "materialize": self.materialize,
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, where: str = "") -> DatasetSpec:
        """The spec written by :meth:`to_dict` (a mask in ``load_options`` is not kept there)."""
        try:
            if values.get("version") != SPEC_VERSION:
                raise ParameterError(f"version {values.get('version')!r}; expected {SPEC_VERSION}")
            loading = dict(values["load_options"])
            if "mask" in loading:
                raise ParameterError("a detector mask given as an array is not kept in a dataset's spec")
            return cls(
                GroupingConfig.from_dict(values["config"]),
                LoadOptions.from_mapping(loading),
                values["intensity"],
                values["frames_dtype"],
                values["copy"],
                values["materialize"],
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ParameterError(f"{where}dataset spec: missing or malformed field ({exc})") from None

    def digest(self) -> str:
        """A short hex digest of :meth:`to_dict`: equal for specs that mean the same."""
        return hashlib.blake2b(canonical_json(self.to_dict()).encode(), digest_size=10).hexdigest()

    def config_for(self, uid: str) -> GroupingConfig:
        """The grouping of scan ``uid``: the dataset's, seeded by :func:`scan_seed`."""
        return replace(self.config, seed=scan_seed(self.config.seed, uid))

    def prepare_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`~ptychodata.store.prepare` for one scan."""
        return {
            "load_options": self.load_options.changed(),
            "intensity": self.intensity,
            "frames_dtype": self.frames_dtype,
            "copy": self.copy,
            "materialize": self.materialize,
        }


def scan_seed(dataset_seed: int, uid: str) -> int:
    """The grouping seed of scan ``uid`` in a dataset seeded ``dataset_seed``: a 63-bit hash of
    both, so it depends on what the scan is, never on where it sits in a list."""
    digest = hashlib.blake2b(f"scan-seed:{int(dataset_seed)}:{uid}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)
