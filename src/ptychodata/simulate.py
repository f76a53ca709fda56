"""Synthetic ptychography scans with known ground truth (data contract §1 and §4).

:func:`simulate` builds a probe, an object (smooth random, or an image you pass) and a
scan pattern, then computes the far-field amplitudes

    diffraction[m] = fftshift(|fft2(probe * window_m, norm="ortho")|)

where ``window_m[r, q] = O(y_m + r - N//2, x_m + q - N//2)`` is the N×N object window
centred on scan point m, bilinearly interpolated at sub-pixel positions: the §4 patch
convention, so |FFT(probe · Y_m)| reproduces pattern m. The FFT is unitary
(``norm="ortho"``): the total intensity of a pattern equals the exit-wave energy
Σ|probe · window|² (Parseval). Coordinates are in object pixels, x = column, y = row.

Randomness comes from one ``numpy.random.Generator``; numpy's global RNG is never
touched. Patterns are computed in chunks of positions (only a chunk of temporaries is
alive at once) and Poisson noise is drawn per fixed block of patterns with its own
child seed, so the result does not depend on ``chunk_size``.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.lib.format import open_memmap
from scipy import fft as sp_fft
from tqdm.auto import tqdm

from ptychodata._runtime import check_int, release_pages
from ptychodata.errors import SimulationError
from ptychodata.patches import extract_patches
from ptychodata.scan import ScanData

__all__ = ["FFT_NORM", "simulate"]

FFT_NORM = "ortho"
_PATTERNS = ("raster", "jittered", "fermat")
_PROBES = ("disk", "gaussian")
_GOLDEN_ANGLE = math.pi * (3.0 - math.sqrt(5.0))
# Fermat spiral r_k = c·sqrt(k): its median nearest-neighbour distance is ≈ 1.68 c
# (measured for 50 to 10⁴ points), so c = step / 1.68 spaces neighbours about one step.
_FERMAT_SCALE = 1 / 1.68
# Non-integer shift (x, y) of every pattern in pixels, so positions exercise bilinear
# interpolation even when the step is a whole number of pixels.
_SUBPIXEL_OFFSET = (0.37, 0.21)
# Pixels per block of Poisson noise; a function of N only, never of chunk_size.
_NOISE_BLOCK_PIXELS = 1 << 20


def simulate(
    n_points: int = 1024,
    N: int = 64,
    *,
    probe: Literal["disk", "gaussian"] | np.ndarray = "disk",
    probe_radius: float | None = None,
    defocus: float = 2.0,
    object_image: np.ndarray | None = None,
    object_shape: tuple[int, int] | None = None,
    object: np.ndarray | None = None,
    positions: np.ndarray | None = None,
    pattern: Literal["raster", "jittered", "fermat"] = "raster",
    overlap: float = 0.7,
    jitter: float = 0.2,
    nphotons: float | None = None,
    seed: int | np.random.Generator | None = None,
    chunk_size: int = 4096,
    out: str | os.PathLike | None = None,
    progress: bool = False,
) -> ScanData:
    """Simulate a ptychography scan: amplitudes, positions, probe and ground-truth object.

    Parameters
    ----------
    n_points : int
        M, the number of scan points (exactly M positions are made).
    N : int
        Side of the probe, object windows and patterns, in pixels.
    probe : {"disk", "gaussian"} or ndarray of shape (N, N), complex
        Soft-edged disk (tanh edge of width radius/8) or Gaussian amplitude
        ``exp(-(r/radius)²)``, peak 1, centred on pixel (N//2, N//2); or a probe array,
        e.g. from a real reconstruction (its size sets N).
    probe_radius : float, optional
        Probe radius in pixels, 0 < radius <= N/2; default N/4.
    defocus : float
        Quadratic phase of the probe, in radians at r = radius: ``defocus · (r/radius)²``.
    object_image : ndarray of shape (H, W), optional
        Object to scan: real values are used as amplitude (zero phase), complex as is.
    object : ndarray of shape (H, W), optional
        The same as ``object_image`` (e.g. a reconstruction's object); give one of the two.
    positions : ndarray of shape (M, 2), optional
        Scan positions (x, y) in pixels of the given object (x = column, y = row), used as
        they are (not re-centred); they set M. Needs ``object``/``object_image``.
    object_shape : (H, W), optional
        Shape of the random object (Gaussian noise low-pass filtered by a Gaussian of std
        N/8 pixels; amplitude in [0.5, 1], phase in [-π/2, π/2]). Default: the smallest
        that holds every window plus a margin of about N/2 a side. Too small: SimulationError.
    pattern : {"raster", "jittered", "fermat"}
        Rows of points (x = column, y = row); rows plus uniform jitter; Fermat spiral.
    overlap : float
        Linear overlap of the probe diameter, 0 <= overlap < 1:
        step = (1 - overlap) · 2 · radius pixels (Fermat: nearest neighbours ≈ step).
    jitter : float
        For "jittered", half-width of the uniform jitter as a fraction of the step.
    nphotons : float, optional
        Mean total counts per pattern. Intensities are scaled by
        ``count_scale = nphotons / mean_m Σ diffraction[m]²``, Poisson counts drawn, and
        amplitudes returned as ``sqrt(counts / count_scale)`` so they stay on the scale of
        the noise-free ones; ``count_scale`` is recorded in the metadata. None: no noise.
    seed : int, Generator or None
        Source of randomness; an int (or None, recorded) makes the scan reproducible.
    chunk_size : int
        Positions per chunk. Working memory is a few complex (chunk_size, N, N) arrays;
        the result does not depend on it.
    out : path, optional
        Write an uncompressed ``.npz`` there and return it memory-mapped. Patterns go to
        a temporary ``.npy`` memmap beside ``out`` (removed afterwards) and are streamed
        into the archive, so RAM holds a chunk, never the whole stack; the disk briefly
        holds two copies. None: return an in-memory scan (one copy of the patterns).
    progress : bool
        Show a tqdm bar over chunks.

    Returns
    -------
    ScanData
        ``diffraction`` (M, N, N) float32, ``xcoords``/``ycoords`` (M,) float64,
        ``xcoords_start``/``ycoords_start`` the nominal grid ("jittered") or the positions,
        ``probe`` (N, N) complex64, ``object`` (H, W) complex64, and ``metadata`` with
        ``simulated``, ``seed``, ``pattern``, ``nphotons`` (also as ``physics_parameters.nphotons``
        when given, as PtychoPINN stores it), ``fft_norm`` and the parameters.
    """
    if object is not None:
        if object_image is not None:
            raise SimulationError("give the object as object= or object_image=, not both")
        object_image = object
    given_probe = None
    if not isinstance(probe, str):
        given_probe = _user_probe(probe)
        N, probe = given_probe.shape[0], "given"
    if positions is not None:
        positions = _user_positions(positions, object_image)
        n_points = len(positions)
    radius = N / 4 if probe_radius is None else float(probe_radius)
    _check_args(n_points, N, probe, radius, pattern, overlap, jitter, nphotons, chunk_size)
    n_points, N, chunk_size = int(n_points), int(N), int(chunk_size)
    rng, seed_value = _make_rng(seed)
    step = (1.0 - overlap) * 2.0 * radius
    if positions is not None:
        x_start, y_start = positions[:, 0].copy(), positions[:, 1].copy()
    else:
        x_start, y_start = _scan_grid(n_points, step, pattern)
    x, y = x_start, y_start
    if pattern == "jittered" and positions is None:
        x = x_start + rng.uniform(-jitter * step, jitter * step, n_points)
        y = y_start + rng.uniform(-jitter * step, jitter * step, n_points)
    if object_image is not None:
        obj = _user_object(object_image, object_shape)
    else:
        if object_shape is None:
            object_shape = tuple(math.ceil(np.ptp(c)) + N + 4 for c in (y, x))
        obj = _random_object(_parse_shape(object_shape), max(1.0, N / 8), rng)
    # Centre the scan in the object, off the integer grid (given positions stay where they are).
    shift_x = (obj.shape[1] - 1) / 2 - (x.min() + x.max()) / 2 + _SUBPIXEL_OFFSET[0]
    shift_y = (obj.shape[0] - 1) / 2 - (y.min() + y.max()) / 2 + _SUBPIXEL_OFFSET[1]
    if positions is not None:
        shift_x = shift_y = 0.0
    x, y, x_start, y_start = x + shift_x, y + shift_y, x_start + shift_x, y_start + shift_y
    _check_inside(x, y, N, obj.shape)
    noise_key = int(rng.integers(2**63))
    probe_array = given_probe if given_probe is not None else _make_probe(N, probe, radius, defocus)
    metadata = {
        "simulated": True, "generator": "ptychodata.simulate", "seed": seed_value, "pattern": pattern,
        "nphotons": None if nphotons is None else float(nphotons), "count_scale": None,
        "fft_norm": FFT_NORM, "probe": probe, "probe_radius": radius, "defocus": float(defocus),
        "overlap": float(overlap), "step": step, "jitter": float(jitter) if pattern == "jittered" else 0.0,
        "object": "random" if object_image is None else "image",
        "positions": "given" if positions is not None else pattern,
    }  # fmt: skip
    if nphotons is not None:  # also where PtychoPINN's metadata manager keeps it (ScanData.save writes both)
        metadata["physics_parameters"] = {"nphotons": float(nphotons)}

    def build(diffraction: np.ndarray) -> ScanData:
        energies = np.empty(n_points)
        chunks = range(0, n_points, chunk_size)
        for start in tqdm(chunks, desc="simulate", unit="chunk", disable=not progress):
            chunk = slice(start, start + chunk_size)
            amplitude = _diffract(probe_array, obj, x[chunk], y[chunk])
            diffraction[chunk] = amplitude
            release_pages(diffraction)  # a memmap's written pages stay in the page cache, not in RSS
            energies[chunk] = np.square(amplitude, dtype=np.float64).sum(axis=(1, 2))
        if nphotons is not None:
            metadata["count_scale"] = float(nphotons) / float(energies.mean())
            _add_poisson_noise(diffraction, metadata["count_scale"], noise_key)
        return ScanData.from_arrays(
            diffraction=diffraction, xcoords=x, ycoords=y, xcoords_start=x_start, ycoords_start=y_start,
            probe=probe_array, object=obj, metadata=metadata,
            check_values=False,  # finite and >= 0 by construction
        )  # fmt: skip

    if out is None:
        return build(np.empty((n_points, N, N), np.float32))
    return _build_on_disk(Path(out), (n_points, N, N), build)


def _build_on_disk(
    target: Path, shape: tuple[int, int, int], build: Callable[[np.ndarray], ScanData]
) -> ScanData:
    """Fill a temporary ``.npy`` memmap beside ``target``, save the scan there, reopen it mapped.

    RAM holds one chunk of patterns at a time; ``write_npz`` streams the memmap into the
    uncompressed archive, after which the temporary file is removed.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".npy", dir=target.parent)
    os.close(fd)
    try:
        diffraction = open_memmap(name, mode="w+", dtype=np.float32, shape=shape)
        scan = build(diffraction)
        diffraction.flush()
        scan.save(target)
    finally:
        Path(name).unlink(missing_ok=True)
    return ScanData.load(target, check_values=False)


def _diffract(probe: np.ndarray, obj: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Amplitudes fftshift(|fft2(probe · window)|), shape (P, N, N) float32."""
    exit_wave = probe * extract_patches(obj, x, y, probe.shape[0])
    field = sp_fft.fft2(exit_wave, norm=FFT_NORM, overwrite_x=True, workers=-1)
    return sp_fft.fftshift(np.abs(field), axes=(-2, -1)).astype(np.float32, copy=False)


def _add_poisson_noise(diffraction: np.ndarray, count_scale: float, noise_key: int) -> None:
    """Replace amplitudes A by sqrt(Poisson(count_scale · A²) / count_scale), in place.

    Block b of patterns draws from ``SeedSequence(noise_key, spawn_key=(b,))``; blocks
    depend on N only, so the noise does not depend on how the patterns were chunked.
    """
    n_points, N = diffraction.shape[0], diffraction.shape[-1]
    block = max(1, _NOISE_BLOCK_PIXELS // (N * N))
    for index, start in enumerate(range(0, n_points, block)):
        rng = np.random.default_rng(np.random.SeedSequence(noise_key, spawn_key=(index,)))
        intensity = np.square(diffraction[start : start + block], dtype=np.float64) * count_scale
        diffraction[start : start + block] = np.sqrt(rng.poisson(intensity) / count_scale)
        release_pages(diffraction)


def _make_probe(N: int, kind: str, radius: float, defocus: float) -> np.ndarray:
    """Probe (N, N) complex64 centred on pixel (N//2, N//2), peak amplitude 1."""
    offsets = np.arange(N) - N // 2
    r = np.hypot(offsets[:, None], offsets[None, :])
    if kind == "disk":
        amplitude = 0.5 * (1.0 - np.tanh((r - radius) / max(1.0, radius / 8)))
    else:
        amplitude = np.exp(-((r / radius) ** 2))
    return (amplitude * np.exp(1j * defocus * (r / radius) ** 2)).astype(np.complex64)


def _scan_grid(n_points: int, step: float, pattern: str) -> tuple[np.ndarray, np.ndarray]:
    """Nominal positions (x, y), shape (M,) float64 each, before centring in the object."""
    index = np.arange(n_points)
    if pattern == "fermat":
        r = _FERMAT_SCALE * step * np.sqrt(index)
        theta = index * _GOLDEN_ANGLE
        return r * np.cos(theta), r * np.sin(theta)
    n_cols = math.ceil(math.sqrt(n_points))
    return (index % n_cols) * step, (index // n_cols) * step


def _random_object(shape: tuple[int, int], feature_size: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth random object (H, W) complex64: amplitude in [0.5, 1], phase in [-π/2, π/2]."""
    amplitude = 0.5 + 0.5 * _smooth_field(shape, feature_size, rng)
    phase = np.pi * (_smooth_field(shape, feature_size, rng) - 0.5)
    return (amplitude * np.exp(1j * phase)).astype(np.complex64)


def _smooth_field(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise low-pass filtered (Gaussian of std ``sigma`` px) via FFT, scaled to [0, 1]."""
    spectrum = sp_fft.rfft2(rng.standard_normal(shape, dtype=np.float32))
    # Transfer function of a Gaussian blur, exp(-2π²σ²f²), applied separably.
    spectrum *= np.exp(-2 * (np.pi * sigma * sp_fft.fftfreq(shape[0])) ** 2).astype(np.float32)[:, None]
    spectrum *= np.exp(-2 * (np.pi * sigma * sp_fft.rfftfreq(shape[1])) ** 2).astype(np.float32)
    field = sp_fft.irfft2(spectrum, s=shape)
    low, high = field.min(), field.max()
    return (field - low) / max(high - low, np.finfo(np.float32).tiny)


def _user_object(image: np.ndarray, shape: tuple[int, int] | None) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 2 or not np.issubdtype(image.dtype, np.number):
        raise SimulationError(f"object_image: shape {image.shape}, dtype {image.dtype}; expected (H, W) numbers")
    if shape is not None and tuple(shape) != image.shape:
        raise SimulationError(f"object_shape {tuple(shape)} disagrees with object_image of shape {image.shape}")
    if not np.isfinite(image).all():
        raise SimulationError("object_image: contains NaN or Inf; expected finite values")
    return np.ascontiguousarray(image, dtype=np.complex64)


def _user_probe(probe: np.ndarray) -> np.ndarray:
    probe = np.asarray(probe)
    if probe.ndim != 2 or probe.shape[0] != probe.shape[1] or probe.shape[0] < 2:
        raise SimulationError(f"probe array of shape {probe.shape}; expected (N, N) with N >= 2")
    if not np.isfinite(probe).all():
        raise SimulationError("probe array contains NaN or Inf; expected finite values")
    return np.ascontiguousarray(probe, dtype=np.complex64)


def _user_positions(positions: np.ndarray, obj: np.ndarray | None) -> np.ndarray:
    positions = np.asarray(positions, dtype=np.float64)
    if positions.ndim != 2 or positions.shape[1] != 2 or len(positions) < 1:
        raise SimulationError(f"positions of shape {positions.shape}; expected (M, 2) columns (x, y), object pixels")
    if obj is None:
        raise SimulationError("positions= are pixels of a given object: pass object= (or object_image=) too")
    if not np.isfinite(positions).all():
        raise SimulationError("positions contain NaN or Inf; expected finite object pixels")
    return positions


def _parse_shape(shape: tuple[int, int]) -> tuple[int, int]:
    if len(shape) != 2 or any(int(side) != side or side < 1 for side in shape):
        raise SimulationError(f"object_shape {shape!r}; expected two positive integers (H, W)")
    return int(shape[0]), int(shape[1])


def _check_inside(x: np.ndarray, y: np.ndarray, N: int, shape: tuple[int, ...]) -> None:
    """Raise SimulationError unless every bilinear window, with its +1 neighbours, lies in ``shape``."""
    x0, y0 = np.floor(x), np.floor(y)
    last_y, last_x = y0.max() + N - N // 2, x0.max() + N - N // 2
    if min(x0.min(), y0.min()) - N // 2 < 0 or last_y >= shape[0] or last_x >= shape[1]:
        need = (math.ceil(np.ptp(y)) + N + 4, math.ceil(np.ptp(x)) + N + 4)
        raise SimulationError(
            f"an object of shape {tuple(shape)} cannot hold the scan's {N}x{N} windows; it needs "
            f"{need}. Pass a larger object, fewer points or a larger step (less overlap)."
        )


def _make_rng(seed: int | np.random.Generator | None) -> tuple[np.random.Generator, int | None]:
    """The generator to draw from, and the seed to record (None for a caller's Generator)."""
    if isinstance(seed, np.random.Generator):
        return seed, None
    sequence = np.random.SeedSequence(seed)
    return np.random.default_rng(sequence), int(sequence.entropy)


def _check_args(n_points, N, probe, radius, pattern, overlap, jitter, nphotons, chunk_size) -> None:
    check_int("n_points", n_points)
    check_int("N", N, minimum=2)
    check_int("chunk_size", chunk_size)
    checks = [
        (probe in _PROBES or probe == "given", f"probe={probe!r}; expected one of {_PROBES} or an (N, N) array"),
        (pattern in _PATTERNS, f"pattern={pattern!r}; expected one of {_PATTERNS}"),
        (0 < radius <= N / 2, f"probe_radius={radius!r}; expected 0 < radius <= N/2 = {N / 2:g}"),
        (0 <= overlap < 1, f"overlap={overlap!r}; expected 0 <= overlap < 1 (step = (1 - overlap)·2·radius)"),
        (jitter >= 0, f"jitter={jitter!r}; expected a fraction of the step >= 0"),
        (nphotons is None or 0 < nphotons < np.inf, f"nphotons={nphotons!r}; expected > 0 or None"),
    ]
    for ok, message in checks:
        if not ok:
            raise SimulationError(message)
