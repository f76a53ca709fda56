"""Normalisation factors (contract §5), each recorded as a number beside the data.

``x_scale`` makes the mean per-pattern energy Σ X² of the grouped patterns (N/2)²;
``intensity_scale`` is the Poisson model's input scale; the probe factor is optional.
``rms_scaling_constant`` and ``physics_scaling_constant`` are ptycho_torch's per-experiment
constants (means over all of a scan's patterns, not the grouped ones), computed from
per-pattern sums so a store can keep the sums and never reread the patterns.
"""

from __future__ import annotations

import math

import numpy as np

from ptychodata._runtime import rows_per_chunk
from ptychodata.errors import ParameterError, ScanDataError
from ptychodata.io import invalid_patterns

__all__ = [
    "checked_energies",
    "checked_energies_and_sums",
    "invalid_patterns",
    "intensity_scale",
    "normalize_probe",
    "pattern_amplitude_sums",
    "pattern_energies",
    "physics_scaling_constant",
    "rms_scaling_constant",
    "scale_from_energies",
    "x_scale",
]

_CHUNK_BYTES = 64 << 20
# Rows widened to float64 at a time by checked_energies_and_sums: a block that stays in L2.
_BLOCK_BYTES = 1 << 20


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
    return _per_pattern(
        diffraction,
        indices,
        lambda chunk, chunk_indices: checked_energies(chunk, chunk_indices, where=f"{where}key 'diffraction': "),
    )


def _per_pattern(diffraction: np.ndarray, indices: np.ndarray | None, reduce) -> np.ndarray:
    """``reduce(chunk, chunk_indices)`` over ``diffraction[indices]`` (all patterns when
    None) read in chunks of about 64 MiB, concatenated: one float64 value per pattern."""
    indices = np.arange(diffraction.shape[0]) if indices is None else np.asarray(indices, dtype=np.int64)
    values = np.empty(len(indices), np.float64)
    step = rows_per_chunk(diffraction[:1].nbytes, _CHUNK_BYTES)
    for start in range(0, len(indices), step):
        chunk_indices = indices[start : start + step]
        values[start : start + step] = reduce(np.asarray(diffraction[chunk_indices]), chunk_indices)
    return values


def checked_energies(chunk: np.ndarray, indices: np.ndarray, *, where: str = "", hint: str = "") -> np.ndarray:
    """Σ amplitude² (float64) of each pattern of ``chunk`` (P, N, N), raising ``ScanDataError``
    that names the pattern (``indices[p]``) if one holds a NaN, Inf or negative amplitude."""
    return checked_energies_and_sums(chunk, indices, where=where, hint=hint, sums=False)[0]


def checked_energies_and_sums(
    chunk: np.ndarray, indices: np.ndarray, *, where: str = "", hint: str = "", sums: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """Σ A² and Σ A (float64) of each pattern of ``chunk`` (P, N, N) in one pass, checked as
    :func:`checked_energies` checks.

    The patterns are widened to float64 a few rows at a time into a buffer that stays in
    the CPU cache, and both sums and the check read that buffer: one pass over the chunk's
    memory instead of three (the sums equal ``np.einsum(..., dtype=np.float64)``'s and
    ``sum(dtype=np.float64)``'s).
    """
    P = len(chunk)
    flat = chunk.reshape(P, math.prod(chunk.shape[1:]))
    energies = np.empty(P, np.float64)
    totals = np.empty(P, np.float64) if sums else None
    minima = np.zeros(P, np.float64)
    rows = max(1, _BLOCK_BYTES // max(1, 8 * flat.shape[1]))
    block = np.empty((min(rows, P), flat.shape[1]), np.float64)
    for start in range(0, P, rows):
        part = flat[start : start + rows]
        wide = block[: len(part)]
        np.copyto(wide, part)
        energies[start : start + len(part)] = np.einsum("ij,ij->i", wide, wide)
        if totals is not None:
            totals[start : start + len(part)] = wide.sum(axis=1)
        if wide.size and part.dtype.kind in "fi":
            minima[start : start + len(part)] = wide.min(axis=1)
    bad = invalid_patterns(chunk, energies, minima)
    if bad.any():
        raise ScanDataError(
            f"{where}pattern {int(indices[np.argmax(bad)])} holds NaN, Inf or negative amplitudes; "
            f"expected finite amplitudes >= 0{hint}"
        )
    return energies, totals


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


def pattern_amplitude_sums(
    diffraction: np.ndarray, indices: np.ndarray | None = None, *, where: str = ""
) -> np.ndarray:
    """Σ over pixels of the amplitude for each pattern (or only ``indices``), in float64.

    Read in chunks of about 64 MiB, like :func:`pattern_energies`; the input to
    :func:`physics_scaling_constant`.

    Parameters
    ----------
    diffraction : ndarray of shape (M, N, N)
        Amplitudes (may be a memmap).
    indices : ndarray of shape (U,), int, optional

    Returns
    -------
    ndarray of shape (M,) or (U,), float64
    """
    return _per_pattern(
        diffraction, indices, lambda chunk, _: chunk.reshape(len(chunk), -1).sum(axis=1, dtype=np.float64)
    )


def rms_scaling_constant(energies: np.ndarray, *, N: int, where: str = "") -> float:
    """ptycho_torch's ``rms_scaling_constant``: sqrt(N² / mean over patterns of Σ A²).

    The mean is over **all** of an experiment's patterns, each once (ptycho_torch's
    ``get_rms_scaling_factor`` with ``normalize="Batch"``): twice the §5 ``x_scale`` when
    every pattern is grouped once, since §5 targets (N/2)² instead of N².

    Parameters
    ----------
    energies : ndarray of shape (M,)
        Σ A² of each pattern (:func:`pattern_energies`).
    N : int
        Pattern side length.
    """
    mean_energy = _positive_mean(energies, "energies (Σ A²)", where)
    return math.sqrt(N * N / mean_energy)


def physics_scaling_constant(amplitude_sums: np.ndarray, *, where: str = "") -> float:
    """ptycho_torch's ``physics_scaling_constant``: 1 / mean over patterns of Σ A.

    The mean is over all of an experiment's patterns, each once (ptycho_torch's
    ``get_physics_scaling_factor`` with ``normalize="Batch"``).

    Parameters
    ----------
    amplitude_sums : ndarray of shape (M,)
        Σ A of each pattern (:func:`pattern_amplitude_sums`).
    """
    return 1.0 / _positive_mean(amplitude_sums, "amplitude sums (Σ A)", where)


def _positive_mean(values: np.ndarray, what: str, where: str) -> float:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ScanDataError(f"{where}per-pattern {what}: shape {values.shape}; expected (M,) with M >= 1")
    mean = float(values.mean())
    if not (math.isfinite(mean) and mean > 0):
        raise ScanDataError(
            f"{where}per-pattern {what}: mean {mean}; expected a positive finite mean "
            "(are the patterns all zero?)"
        )
    return mean


_PROBE_RULES = ("tf", "ptycho_torch")


def normalize_probe(
    probe: np.ndarray, probe_scale: float = 4.0, *, rule: str = "tf"
) -> tuple[np.ndarray, float]:
    """Divide the probe by probe_scale · a mean amplitude (§5); PtychoPINN's two rules.

    Parameters
    ----------
    probe : ndarray of shape (N, N), complex
    probe_scale : float
        PtychoPINN's ``probe_scale`` (default 4.0).
    rule : {"tf", "ptycho_torch"}
        ``"tf"`` (the contract's, PtychoPINN TF's ``probe.set_probe``): the factor is
        probe_scale · mean over **all** N×N pixels of |P| · mask, the mask being the disk
        d < N//4 with d measured from the half-pixel-shifted centre (pixel i at i − N//2 + ½),
        so pixels outside the disk count as zeros in the mean.
        ``"ptycho_torch"`` (``ptycho_torch.helper.normalize_probe_like_tf`` with its default
        ``probe_mask=False``): probe_scale · mean over all pixels of |P|, no mask.

    Returns
    -------
    normalised : ndarray of shape (N, N), complex64
        ``probe / factor``.
    factor : float
        What the probe was divided by; ptycho_torch's ``probe_scaling`` is ``1 / factor``.
    """
    if rule not in _PROBE_RULES:
        raise ParameterError(f"rule={rule!r}; expected one of {{'tf', 'ptycho_torch'}}")
    probe = np.asarray(probe)
    if probe.ndim != 2 or probe.shape[0] != probe.shape[1]:
        raise ScanDataError(f"probe: shape {probe.shape}; expected (N, N)")
    if not (math.isfinite(probe_scale) and probe_scale > 0):
        raise ParameterError(f"probe_scale={probe_scale!r}; expected a positive finite number")
    amplitude = np.abs(probe.astype(np.complex128))
    N = probe.shape[-1]
    if rule == "tf":
        centred = np.arange(N) - N // 2 + 0.5
        inside = np.hypot(centred[:, None], centred[None, :]) < N // 4
        mean_amplitude = float(np.where(inside, amplitude, 0.0).mean())
        region = f"the disk d < N//4 = {N // 4}"
    else:
        mean_amplitude = float(amplitude.mean())
        region = "the probe"
    factor = probe_scale * mean_amplitude
    if not (math.isfinite(factor) and factor > 0):
        raise ScanDataError(f"probe: mean amplitude over {region} is {mean_amplitude}; cannot normalise it")
    return (probe / factor).astype(np.complex64), factor
