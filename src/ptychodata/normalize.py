"""Normalisation factors (contract §5), each recorded as a number beside the data.

``x_scale`` makes the mean per-pattern energy Σ X² of the grouped patterns (N/2)²;
``intensity_scale`` is the Poisson model's input scale; the probe factor is optional.
"""

from __future__ import annotations

import math

import numpy as np

from ptychodata.errors import ScanDataError

__all__ = ["checked_energies", "intensity_scale", "normalize_probe", "pattern_energies", "scale_from_energies", "x_scale"]

_CHUNK_BYTES = 64 << 20


def pattern_energies(
    diffraction: np.ndarray, indices: np.ndarray | None = None, *, where: str = ""
) -> np.ndarray:
    """Σ over pixels of amplitude² for each pattern (or only ``indices``), accumulated in float64.

    Reads ``diffraction`` (M, N, N) in chunks of about 64 MiB (no float64 copy of the
    stack) and checks what it reads: a NaN/Inf or negative amplitude raises
    ``ScanDataError`` naming the pattern.

    Returns
    -------
    ndarray of shape (M,) or (len(indices),), float64
    """
    if indices is None:
        indices = np.arange(diffraction.shape[0])
    indices = np.asarray(indices, dtype=np.int64)
    energies = np.empty(len(indices), np.float64)
    step = max(1, _CHUNK_BYTES // max(1, diffraction[:1].nbytes))
    for start in range(0, len(indices), step):
        chunk_indices = indices[start : start + step]
        energies[start : start + step] = checked_energies(
            np.asarray(diffraction[chunk_indices]), chunk_indices, where=f"{where}key 'diffraction': "
        )
    return energies


def checked_energies(chunk: np.ndarray, indices: np.ndarray, *, where: str = "", hint: str = "") -> np.ndarray:
    """Σ amplitude² (float64) of each pattern of ``chunk`` (P, N, N), raising ``ScanDataError``
    that names the pattern (``indices[p]``) if one holds a NaN, Inf or negative amplitude."""
    energies = np.einsum("mij,mij->m", chunk, chunk, dtype=np.float64)
    # A NaN or Inf amplitude makes its pattern's float64 energy non-finite; nothing else can.
    bad = ~np.isfinite(energies)
    if chunk.dtype.kind in "fi":
        bad |= chunk.reshape(len(chunk), -1).min(axis=1) < 0
    if bad.any():
        raise ScanDataError(
            f"{where}pattern {int(indices[np.argmax(bad)])} holds NaN, Inf or negative amplitudes; "
            f"expected finite amplitudes >= 0{hint}"
        )
    return energies


def x_scale(diffraction: np.ndarray, groups: np.ndarray, *, where: str = "") -> float:
    """s = sqrt((N/2)² / mean over groups and channels of Σ_pixels diffraction²) (§5).

    A pattern in several groups counts several times. Only the patterns that occur in
    ``groups`` (B, C) are read, each once, and checked (see :func:`pattern_energies`).
    """
    used, multiplicity = np.unique(np.asarray(groups).ravel(), return_counts=True)
    energies = pattern_energies(diffraction, used, where=where)
    return scale_from_energies(energies, multiplicity, N=diffraction.shape[-1], where=where)


def scale_from_energies(
    energies: np.ndarray, multiplicity: np.ndarray, *, N: int, where: str = ""
) -> float:
    """The §5 scale from per-pattern energies Σ d² and how often each pattern is grouped.

    Parameters
    ----------
    energies, multiplicity : ndarray of shape (U,)
        Energy of each used pattern, and its number of occurrences in the groups.
    """
    mean_energy = float(np.dot(energies, multiplicity) / np.sum(multiplicity))
    if not mean_energy > 0:
        raise ScanDataError(
            f"{where}key 'diffraction': the grouped patterns are all zero (mean energy {mean_energy}); "
            "cannot normalise them"
        )
    return math.sqrt((N / 2) ** 2 / mean_energy)


def intensity_scale(nphotons: float | None, N: int) -> float | None:
    """sqrt(nphotons) / (N/2), or None when nphotons is unknown (§5)."""
    return None if nphotons is None else math.sqrt(float(nphotons)) / (N / 2)


def normalize_probe(probe: np.ndarray, probe_scale: float = 4.0) -> tuple[np.ndarray, float]:
    """Divide the probe by probe_scale · mean |P| over the centred disk r < N/4 (§5).

    Returns the normalised (N, N) complex64 probe and the factor it was divided by.
    """
    N = probe.shape[-1]
    rows, cols = np.indices(probe.shape[-2:]) - N // 2
    disk = rows**2 + cols**2 < (N / 4) ** 2
    factor = float(probe_scale * np.abs(probe[..., disk]).mean())
    if not factor > 0:
        raise ScanDataError(f"probe has zero amplitude inside r < N/4 = {N / 4}; cannot normalise it")
    return (probe / factor).astype(np.complex64), factor
