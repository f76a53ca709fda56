"""The PtychoPINN grouped dict (contract §6) and the model-facing container (§8).

``grouped_data`` gathers each group's patterns into a channels-last stack, scales them
(§5), computes coordinates (§3) and ground-truth patches (§4). Work happens in chunks
of groups so the temporaries stay small; only the outputs are full-size.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ptychodata._runtime import is_installed, optional_import, rows_per_chunk
from ptychodata.coords import grouped_coords
from ptychodata.errors import GroupingError, ParameterError
from ptychodata.grouping import GroupingConfig, check_groups, group
from ptychodata.normalize import intensity_scale, x_scale
from ptychodata.patches import extract_patches
from ptychodata.scan import ScanData

__all__ = ["PtychoDataContainer", "gather_channels_last", "grouped_data", "grouped_dict", "member_patches"]

_CHUNK_BYTES = 2 << 20
_THREADS = min(4, os.cpu_count() or 1)


def grouped_data(
    scan: ScanData, config: GroupingConfig, *, groups: np.ndarray | None = None, with_Y: bool = True
) -> dict[str, Any]:
    """Group a scan and return the §6 dict (NumPy, channels-last).

    Parameters
    ----------
    scan : ScanData
    config : GroupingConfig
    groups : array_like of shape (B, C), integer, optional
        Precomputed groups (:func:`~ptychodata.grouping.group` output, or PtychoPINN's
        ``nn_indices``); computed from ``config`` if None. Checked: 2-D, integer, C =
        gridsize² columns, indices in [0, M); returned as int64 in ``nn_indices``.
    with_Y : bool
        Compute ground-truth patches ``Y`` (from the file's ``Y`` or cut from the object).

    Returns
    -------
    dict
        ``diffraction``, ``X_full`` (B, N, N, C) float32; ``Y`` (B, N, N, C) complex64 or None;
        ``coords_nn``/``coords_offsets``/``coords_relative`` and their ``coords_start_*`` twins;
        ``nn_indices`` (B, C) int64; ``objectGuess``; ``x_scale``; ``intensity_scale``.
    """
    where = f"{scan.source}: " if scan.source else ""
    if groups is None:
        groups = group(scan, config)
    else:
        if config.N is not None and config.N != scan.N:
            raise GroupingError(f"{where}config N={config.N} but the patterns are {scan.N}×{scan.N}")
        groups = check_groups(groups, n_points=scan.n_points, C=config.C, where=where)
    nphotons = config.nphotons if config.nphotons is not None else scan.nphotons
    return grouped_dict(
        scan.diffraction,
        groups,
        scale=x_scale(scan.diffraction, groups, where=where),
        positions=(scan.xcoords, scan.ycoords),
        positions_start=(scan.xcoords_start, scan.ycoords_start),
        Y=member_patches(scan, groups) if with_Y else None,
        objectGuess=scan.object,
        intensity_scale=intensity_scale(nphotons, scan.N),
    )


def grouped_dict(
    patterns: np.ndarray,
    groups: np.ndarray,
    *,
    scale: float | np.ndarray,
    positions: tuple[np.ndarray, np.ndarray],
    positions_start: tuple[np.ndarray, np.ndarray],
    Y: np.ndarray | None,
    objectGuess: np.ndarray | None,
    intensity_scale: float | None | list[float | None],
    x_scale: float | list[float] | None = None,
    centres: tuple[np.ndarray, np.ndarray] | None = None,
    relative: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """The §6 dict from its parts: what :func:`grouped_data` computes from a scan, or what
    a store holds.

    Parameters
    ----------
    patterns : ndarray of shape (M, N, N)
        Unscaled amplitudes (may be a memmap).
    groups : ndarray of shape (B, C), int64
    scale : float or ndarray of shape (B,)
        The §5 factor, one for all groups or one per group (several experiments).
    positions, positions_start : (x, y) pairs of ndarray of shape (M,)
    Y : ndarray of shape (B, N, N, C), complex64, or None
    objectGuess : ndarray of shape (H, W) or None
    intensity_scale, x_scale
        Recorded as they are; ``x_scale`` defaults to ``scale``.
    centres, relative : optional
        Stored group centres ((B, 2), start (B, 2)) and offsets ((B, C, 2), start
        (B, C, 2)); computed from the positions when None.
    """
    if np.ndim(scale) == 0:
        diffraction, X_full = gather_channels_last(patterns, groups, scales=(None, float(scale)))
    else:
        (diffraction,) = gather_channels_last(patterns, groups)
        X_full = diffraction * np.asarray(scale, np.float32)[:, None, None, None]
    stored = None if centres is None else (centres, relative)
    return {
        "diffraction": diffraction,
        "X_full": X_full,
        "Y": Y,
        **grouped_coords(*positions, *positions_start, groups, stored=stored),
        "nn_indices": groups,
        "objectGuess": objectGuess,
        "x_scale": scale if x_scale is None else x_scale,
        "intensity_scale": intensity_scale,
    }


def gather_channels_last(
    source: np.ndarray,
    groups: np.ndarray,
    *,
    scales: tuple[float | None, ...] = (None,),
    dtype: np.dtype | type = np.float32,
) -> tuple[np.ndarray, ...]:
    """Gather ``source[groups]`` into channels-last stacks, one per entry of ``scales``.

    Parameters
    ----------
    source : ndarray of shape (M, N, N)
        Patterns (may be a memmap).
    groups : ndarray of shape (B, C), int
    scales : tuple of float or None
        One output per entry: the gathered stack times the factor (None = unscaled).

    Returns
    -------
    tuple of ndarray of shape (B, N, N, C)

    Chunks of groups small enough to stay in cache are filled by a few threads (NumPy
    releases the GIL while copying); the channels-last interleave is memory-bound.
    """
    n_groups, C = groups.shape
    N = source.shape[-1]
    outputs = tuple(np.empty((n_groups, N, N, C), dtype) for _ in scales)
    step = rows_per_chunk(C * N * N * np.dtype(dtype).itemsize, _CHUNK_BYTES)

    def fill(start: int) -> None:
        stop = min(start + step, n_groups)
        first = outputs[0][start:stop]
        for channel in range(C):
            first[..., channel] = source[groups[start:stop, channel]]
        if scales[0] is not None:
            first *= scales[0]
        for out, factor in zip(outputs[1:], scales[1:]):
            factor = 1.0 if factor is None else factor / (scales[0] or 1.0)
            np.multiply(first, factor, out=out[start:stop], casting="unsafe")

    with ThreadPoolExecutor(max_workers=_THREADS) as pool:
        list(pool.map(fill, range(0, n_groups, step)))
    return outputs


def member_patches(scan: ScanData, groups: np.ndarray) -> np.ndarray | None:
    """Ground-truth patches Y (B, N, N, C) complex64 for every member (§4), or None.

    The file's own ``Y`` wins; otherwise each patch is cut from the object centred on
    its member's own position. A patch depends only on the scan point, so each point
    used is cut once and then gathered.
    """
    if scan.Y is not None:
        return gather_channels_last(scan.Y, groups, dtype=np.complex64)[0]
    if scan.object is None:
        return None
    used, inverse = np.unique(groups, return_inverse=True)
    patches = extract_patches(scan.object, scan.xcoords[used], scan.ycoords[used], scan.N)
    return gather_channels_last(patches, inverse.reshape(groups.shape), dtype=np.complex64)[0]


@dataclass(frozen=True, eq=False)
class PtychoDataContainer:
    """Model-facing arrays (§8): torch tensors when torch is importable, NumPy otherwise.

    Attributes
    ----------
    X : (B, N, N, C) float32
    Y, Y_I, Y_phi : (B, N, N, C) complex64 (ones when absent), |Y|, angle(Y) float32
    coords_nominal, coords_true, coords : (B, 1, 2, C) float32
        All three from ``coords_start_relative`` (the nominal positions), as PtychoPINN's
        ``ptycho.loader.load`` sets them (§8).
    probe : (N, N) complex64
    nn_indices : (B, C) int64
    global_offsets : (B, 1, 2, 1) float64
        ``coords_offsets`` (the measured group centre).
    local_offsets : (B, 1, 2, C) float64
        ``coords_relative`` (measured).
    norm_Y_I : float or None (the intensity scale)
    YY_full : (H, W) complex64 or None
    """

    X: Any
    Y: Any
    Y_I: Any
    Y_phi: Any
    coords_nominal: Any
    coords_true: Any
    coords: Any
    probe: Any
    nn_indices: Any
    global_offsets: Any
    local_offsets: Any
    norm_Y_I: float | None
    YY_full: Any

    @classmethod
    def from_grouped(
        cls,
        grouped: dict[str, Any],
        probe: np.ndarray,
        *,
        backend: Literal["auto", "numpy", "torch"] = "auto",
    ) -> PtychoDataContainer:
        """Build from a :func:`grouped_data` dict and the (N, N) probe."""
        Y = grouped.get("Y")
        if Y is None:
            Y = np.ones(grouped["X_full"].shape, np.complex64)
        coords = np.asarray(grouped["coords_start_relative"], np.float32)
        arrays = {
            "X": np.asarray(grouped["X_full"], np.float32),
            "Y": np.asarray(Y, np.complex64),
            "Y_I": np.abs(Y).astype(np.float32),
            "Y_phi": np.angle(Y).astype(np.float32),
            "coords_nominal": coords,
            "coords_true": coords,
            "coords": coords,
            "probe": np.asarray(probe, np.complex64),
            "nn_indices": np.asarray(grouped["nn_indices"], np.int64),
            "global_offsets": np.asarray(grouped["coords_offsets"], np.float64),
            "local_offsets": np.asarray(grouped["coords_relative"], np.float64),
            "YY_full": None if grouped.get("objectGuess") is None else np.asarray(grouped["objectGuess"]),
        }
        convert = _tensor_converter(backend)
        return cls(norm_Y_I=grouped.get("intensity_scale"), **{k: convert(v) for k, v in arrays.items()})

    def __len__(self) -> int:
        return int(self.X.shape[0])


def _tensor_converter(backend: str):
    if backend not in ("auto", "numpy", "torch"):
        raise ParameterError(f"backend={backend!r}; expected one of {{'auto', 'numpy', 'torch'}}")
    if backend == "numpy":
        return lambda value: value
    if backend == "auto" and not is_installed("torch"):
        return lambda value: value
    torch = optional_import("torch", purpose="backend='torch'")
    # a read-only (memory-mapped) array is copied: torch tensors are writable
    return lambda value: None if value is None else torch.from_numpy(
        np.ascontiguousarray(value) if np.asarray(value).flags.writeable else np.array(value)
    )
