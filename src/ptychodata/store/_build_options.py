"""How :func:`~ptychodata.store.prepare` builds what it has to: its build arguments as one
small frozen value, shared by the frames and grouping builders."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["BuildOptions"]


@dataclass(frozen=True)
class BuildOptions:
    """The arguments of :func:`~ptychodata.store.prepare` of the same names.

    Attributes
    ----------
    intensity : bool or None
        Whether the sources hold counts (None: what each file says).
    copy : bool
        Copy the patterns into the frames build (False: reference them in place).
    frames_dtype : str or None
        How a copy stores the patterns (None: float32 amplitudes).
    direct_io : bool or None
        Whether large files are written past the page cache (None: by their size).
    materialize : bool
        Also write the grouped, scaled X.
    progress : bool or callable
        Show progress bars (True), or call ``progress(done, total)`` after each chunk of
        patterns a frames build reads.
    verify : bool
        Hash file sources' bytes.
    """

    intensity: bool | None
    copy: bool
    frames_dtype: str | None
    direct_io: bool | None
    materialize: bool
    progress: bool | Callable[[int, int], None]
    verify: bool

    @property
    def counts_stored(self) -> bool:
        """Counts are stored as counts (uint frames, or referenced in place), so they reach
        the stream raw."""
        return bool(self.intensity) and (self.frames_dtype in ("uint16", "uint32") or not self.copy)
