"""Photon energy and wavelength, far-field object pixel size."""

from __future__ import annotations

__all__ = ["HC_EV_M", "J_PER_EV", "far_field_pixel", "wavelength_from_energy"]

HC_EV_M = 1.239841984e-6  # h·c in eV·m
J_PER_EV = 1.602176634e-19


def wavelength_from_energy(energy_eV: float) -> float:
    """Wavelength in metres of a photon of ``energy_eV`` electron-volts."""
    return HC_EV_M / energy_eV


def far_field_pixel(wavelength_m: float, distance_m: float, n_pixels: int, detector_pixel_m: float) -> float:
    """Object pixel λ·z / (N·p) in metres, N the detector window in detector pixels (before binning)."""
    return wavelength_m * distance_m / (n_pixels * detector_pixel_m)
