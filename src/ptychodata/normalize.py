"""Normalisation factors (contract §5), each recorded as a number beside the data.

``x_scale`` makes the mean per-pattern energy Σ X² of the grouped patterns (N/2)²;
``intensity_scale`` is the Poisson model's input scale; the probe factor is optional.
"""

from __future__ import annotations

import math

import numpy as np

from ptychodata.errors import ScanDataError

__all__ = ["intensity_scale", "normalize_probe", "pattern_energies", "x_scale"]

_CHUNK_BYTES = 64 << 20


def pattern_energies(diffraction: np.ndarray, indices: np.ndarray | None = None) -> np.ndarray:
    """Σ over pixels of amplitude² for each pattern (or only ``indices``), in float64.

    Reads ``diffraction`` (M, N, N) in chunks of about 64 MiB; each chunk is widened to
    float64 on its own, so no float64 copy of the whole stack exists.

    Returns
    -------
    ndarray of shape (M,) or (len(indices),), float64
    """
    if indices is None:
        indices = np.arange(diffraction.shape[0])
    indices = np.asarray(indices, dtype=np.int64)
    energies = np.empty(len(indices), np.float64)
    step = max(1, _CHUNK_BYTES // (8 * max(1, int(np.prod(diffraction.shape[1:])))))
    for start in range(0, len(indices), step):
        chunk = np.asarray(diffraction[indices[start : start + step]], dtype=np.float64)
        energies[start : start + step] = np.einsum("mij,mij->m", chunk, chunk)
    return energies


def x_scale(diffraction: np.ndarray, groups: np.ndarray, *, where: str = "") -> float:
    """s = sqrt((N/2)² / mean over groups and channels of Σ_pixels diffraction²) (§5).

    A pattern in several groups counts several times. Only the patterns that occur in
    ``groups`` (B, C) are read, each once.
    """
    N = diffraction.shape[-1]
    used, multiplicity = np.unique(np.asarray(groups).ravel(), return_counts=True)
    mean_energy = float(np.dot(pattern_energies(diffraction, used), multiplicity) / multiplicity.sum())
    if not (math.isfinite(mean_energy) and mean_energy > 0):
        raise ScanDataError(
            f"{where}mean pattern energy of the grouped patterns is {mean_energy}; expected a positive "
            "finite value (all-zero, NaN or Inf diffraction?)"
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
