"""Counts or amplitudes, and the values a pattern may hold: one rule, used by reading,
``inspect`` and preparing a store.

Counts rule: an integer dtype is counts; so are whole-number float values (at least one of
them >= 2) whose mean per-pattern total is at least ``COUNTS_TOTAL_FACTOR`` × the pixels per
pattern. Amplitudes sqrt(c) of the same data total far less. Values rule: patterns hold no NaN,
Inf or negative value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ptychodata._runtime import rows_per_chunk
from ptychodata.errors import ScanDataError

__all__ = [
    "COUNTS_TOTAL_FACTOR",
    "CountsEvidence",
    "check_amplitudes",
    "counts_to_amplitude",
    "invalid_patterns",
]

COUNTS_TOTAL_FACTOR = 10.0
# Values are checked in chunks of about this many bytes, so memmaps are not loaded whole.
_CHECK_CHUNK_BYTES = 64 << 20


@dataclass(frozen=True)
class CountsEvidence:
    """What the counts rule reads of a sample of patterns.

    Attributes
    ----------
    dtype : str
        The stored dtype.
    whole_numbers : bool
        Every sampled value is a whole number.
    maximum : float
        The largest sampled finite value.
    mean_total : float
        The mean over the sampled patterns of each pattern's sum.
    n_pixels : int
        Pixels per pattern.
    """

    dtype: str
    whole_numbers: bool
    maximum: float
    mean_total: float
    n_pixels: int

    @property
    def integer_dtype(self) -> bool:
        dtype = np.dtype(self.dtype)
        return bool(np.issubdtype(dtype, np.integer) or dtype == np.bool_)

    @property
    def looks_like_counts(self) -> bool:
        """The counts rule (see the module's docstring)."""
        if self.integer_dtype:
            return True
        return self.whole_numbers and self.maximum >= 2 and self.mean_total >= COUNTS_TOTAL_FACTOR * self.n_pixels

    @property
    def low_dose_doubt(self) -> bool:
        """Whole numbers >= 2 in a float dtype taken as amplitudes: they may be counts at low dose."""
        return not self.looks_like_counts and self.whole_numbers and self.maximum >= 2 and not self.integer_dtype

    def describe(self) -> str:
        """The numbers the rule read, and the rule, in one line."""
        if self.integer_dtype:
            return f"integer dtype {self.dtype}"
        return (
            f"whole-number {self.dtype} values up to {self.maximum:.6g}, mean {self.mean_total:.4g} per pattern "
            f"= {self.mean_total / max(1, self.n_pixels):.3g} × the {self.n_pixels} pixels "
            f"(rule: ≥ {COUNTS_TOTAL_FACTOR:g}×)"
            if self.whole_numbers
            else f"{self.dtype} values that are not all whole numbers"
        )


def invalid_patterns(
    chunk: np.ndarray, energies: np.ndarray | None = None, minima: np.ndarray | None = None
) -> np.ndarray:
    """Mask (P,) of the patterns of ``chunk`` (P, N, N) that hold a NaN, Inf or negative value.

    With the patterns' float64 energies given, NaN and Inf are read from them (a
    non-finite value makes its pattern's energy non-finite; nothing else can) instead of
    from another pass over the pixels; with their minima given, so are negatives.
    """
    flat = chunk.reshape(len(chunk), math.prod(chunk.shape[1:]))
    if energies is not None:
        bad = ~np.isfinite(energies)
    elif flat.dtype.kind in "fc":
        bad = ~np.isfinite(flat).all(axis=1)
    else:
        bad = np.zeros(len(flat), bool)
    if flat.dtype.kind in "fi" and flat.size:
        bad |= (flat.min(axis=1) if minima is None else minima) < 0
    return bad


def check_amplitudes(diffraction: np.ndarray, *, where: str = "") -> None:
    """Raise ``ScanDataError`` if any amplitude is NaN, infinite or negative.

    Reads the array in chunks of about 64 MiB, so memmaps are not loaded whole.
    """
    if np.issubdtype(diffraction.dtype, np.unsignedinteger):
        return
    step = rows_per_chunk(diffraction[:1].nbytes, _CHECK_CHUNK_BYTES)
    for start in range(0, diffraction.shape[0], step):
        chunk = np.asarray(diffraction[start : start + step])
        bad = invalid_patterns(chunk)
        if bad.any():
            first = int(np.argmax(bad))
            pattern = chunk[first]
            if not np.isfinite(pattern).all():
                raise ScanDataError(
                    f"{where or 'diffraction: '}NaN or Inf amplitude in pattern {start + first}; "
                    "expected finite amplitudes"
                )
            raise ScanDataError(
                f"{where or 'diffraction: '}negative amplitude {pattern.min():g} in pattern "
                f"{start + first}; expected amplitudes >= 0 (sqrt of counts)"
            )


def counts_to_amplitude(counts: np.ndarray, *, source: str = "diffraction", first_pattern: int = 0) -> np.ndarray:
    """Convert detector counts (M, N, N) to float32 amplitudes sqrt(counts), in chunks.

    ``first_pattern`` is the index of ``counts[0]`` in its scan, for error messages.
    """
    counts = np.asanyarray(counts)
    if np.iscomplexobj(counts):
        raise ScanDataError(f"{source}: complex dtype {counts.dtype}; expected real counts")
    amplitude = np.empty(counts.shape, np.float32)
    if counts.dtype.kind == "u" and isinstance(counts, np.ndarray) and not isinstance(counts, np.memmap):
        return np.sqrt(counts, out=amplitude, dtype=np.float32)  # nothing to check, no float32 copy
    step = rows_per_chunk(counts[:1].nbytes, _CHECK_CHUNK_BYTES)
    for start in range(0, counts.shape[0], step):
        chunk = np.asarray(counts[start : start + step], dtype=np.float32)
        bad = invalid_patterns(chunk)
        if bad.any():
            index = first_pattern + start + int(np.argmax(bad))
            raise ScanDataError(f"{source}: pattern {index} holds NaN, Inf or negative counts; expected counts >= 0")
        np.sqrt(chunk, out=amplitude[start : start + step])
    return amplitude
