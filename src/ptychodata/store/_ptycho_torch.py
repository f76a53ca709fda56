"""The ptycho_torch adapter: its per-experiment constants and its batch (``layout="ptycho_torch"``),
gathered with the same machinery as the §7 batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ptychodata._runtime import take_into
from ptychodata.errors import ParameterError, StoreError
from ptychodata.normalize import normalize_probe, physics_scaling_constant, rms_scaling_constant
from ptychodata.store._batch import BatchGatherer
from ptychodata.store._batch_schema import PTYCHO_TORCH_SCHEMA

__all__ = ["PtychoTorchConstants", "gather_ptycho_torch", "ptycho_torch_constants"]


@dataclass(frozen=True)
class PtychoTorchConstants:
    """ptycho_torch's per-experiment constants of a store (E experiments).

    Attributes
    ----------
    rms_scaling_constant : (E,) float32
        sqrt(N² / mean over all of the experiment's patterns of Σ A²).
    physics_scaling_constant : (E,) float32
        1 / mean over all of the experiment's patterns of Σ A.
    probe : (E, N, N) complex64
        Each experiment's probe normalised by ptycho_torch's rule
        (:func:`~ptychodata.normalize.normalize_probe` with ``rule="ptycho_torch"``).
    probe_scaling : (E,) float32
        1 / the factor the probe was divided by (ptycho_torch's ``probe_scaling``).
    probe_scale : float
        The ``probe_scale`` used.
    """

    rms_scaling_constant: np.ndarray
    physics_scaling_constant: np.ndarray
    probe: np.ndarray
    probe_scaling: np.ndarray
    probe_scale: float


def ptycho_torch_constants(
    energies: np.ndarray,
    amplitude_sums: np.ndarray,
    pattern_experiment: np.ndarray,
    probes: list[np.ndarray],
    *,
    N: int,
    probe_scale: float = 4.0,
    where: str = "",
) -> PtychoTorchConstants:
    """ptycho_torch's constants of E experiments from every pattern of each.

    Parameters
    ----------
    energies, amplitude_sums : ndarray of shape (M,)
        Σ A² and Σ A of each pattern.
    pattern_experiment : ndarray of shape (M,)
        The experiment of each pattern, in [0, E).
    probes : list of E (N, N) complex arrays
    N : int
    probe_scale : float
        ptycho_torch's ``DataConfig.probe_scale``.
    where : str
        Prefix of error messages (the store's path).
    """
    E = len(probes)
    experiment = np.asarray(pattern_experiment)
    order = np.argsort(experiment, kind="stable")
    bounds = np.searchsorted(experiment[order], np.arange(E + 1))
    energies, sums = np.asarray(energies), np.asarray(amplitude_sums)
    rms = np.empty(E, np.float32)
    physics = np.empty(E, np.float32)
    normalised = np.empty((E, N, N), np.complex64)
    probe_scaling = np.empty(E, np.float32)
    for e in range(E):
        mine = order[bounds[e] : bounds[e + 1]]
        here = f"{where}experiment {e}: "
        rms[e] = rms_scaling_constant(energies[mine], N=N, where=here)
        physics[e] = physics_scaling_constant(sums[mine], where=here)
        normalised[e], factor = normalize_probe(probes[e], probe_scale, rule="ptycho_torch")
        probe_scaling[e] = 1.0 / factor
    return PtychoTorchConstants(rms, physics, normalised, probe_scaling, float(probe_scale))


def gather_ptycho_torch(
    gatherer: BatchGatherer,
    index: np.ndarray,
    constants: PtychoTorchConstants,
    *,
    with_Y: bool,
    reuse: bool,
    out: dict[str, np.ndarray] | None,
    threads: int | None,
) -> dict[str, np.ndarray]:
    """The ptycho_torch batch (:data:`~ptychodata.store._batch_schema.PTYCHO_TORCH_SCHEMA`) of
    groups ``index`` (int64, checked, within the build's table), per-experiment values
    taken from ``constants``."""
    s = gatherer.sources
    N, C = gatherer.N, gatherer.C
    if s.start_centres is None or s.start_relative is None:
        raise StoreError("this build has no start (nominal) group coordinates; prepare the store again")
    if len(constants.probe) != len(s.x_scale) or constants.probe.shape[1:] != (N, N):
        raise ParameterError(
            f"constants hold {len(constants.probe)} probes of shape {constants.probe.shape[1:]}; expected "
            f"{len(s.x_scale)} of shape {(N, N)} (from this store's ptycho_torch_constants())"
        )
    B = len(index)
    layout = PTYCHO_TORCH_SCHEMA.arrays(B, C, N, with_Y=with_Y)
    out = gatherer.arrays(layout, ("ptycho_torch", B, with_Y), reuse, out)
    experiment, members = gatherer.members(index, out)
    gatherer.gather_scaled(members, None, out["images"], gatherer.thread_count(threads))
    out["coords_global"][:, :, 0, 0] = s.xcoords[members]
    out["coords_global"][:, :, 0, 1] = s.ycoords[members]
    out["coords_center"][:, 0, 0, :] = s.centres[index]
    out["coords_relative"][:, :, 0, :] = s.relative[index]
    out["coords_start_center"][:, 0, 0, :] = s.start_centres[index]
    out["coords_start_relative"][:, :, 0, :] = s.start_relative[index]
    for key in ("rms_scaling_constant", "physics_scaling_constant", "probe_scaling"):
        np.take(getattr(constants, key), experiment, out=out[key].reshape(B))
    take_into(constants.probe, experiment, out["probe"].reshape(B, N, N))
    if with_Y:
        _fill_labels(gatherer, members, out)
    return out


def _fill_labels(gatherer: BatchGatherer, members: np.ndarray, out: dict[str, Any]) -> None:
    """``label_amp`` = |Y| and ``label_phase`` = angle(Y) of the members' ground truth."""
    B, C, N = members.shape[0], gatherer.C, gatherer.N
    Y = gatherer.pool.take({"Y": ((B, C, N, N), np.complex64)}, key=("label_Y", B))["Y"]
    gatherer.fill_Y(members, Y)
    np.abs(Y, out=out["label_amp"])
    np.arctan2(Y.imag, Y.real, out=out["label_phase"])
