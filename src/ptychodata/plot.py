"""Quick-look figures of a scan and of grouped data, written as PNG files.

Matplotlib is imported inside the functions, so ``import ptychodata.plot`` stays cheap.
Figures are built on :class:`matplotlib.figure.Figure` directly, never through
``pyplot``: nothing touches the user's backend or pyplot's figure registry, it works
headless, and nothing is left open once the file is written.

Coordinates follow the data contract: object pixels, x = column, y = row. Images are
drawn with pixel centres at integer coordinates and y pointing down (image rows), so a
scan position (x, y) lands on the object pixel it names.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ptychodata._runtime import check_int

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure, SubFigure

    from ptychodata.scan import ScanData
    from ptychodata.store import Store

__all__ = ["plot_groups", "plot_scan", "plot_store"]

# Smallest value shown on log-scaled patterns, relative to their maximum.
_LOG_FLOOR = 1e-4
# Phase is hidden where the amplitude is below this fraction of its maximum (it is noise there).
_PHASE_MASK = 1e-3
_DPI = 110


def plot_scan(scan: ScanData, path: str | os.PathLike, *, n_patterns: int = 4) -> Path:
    """Draw an overview of a scan and save it as a PNG.

    Left: scan positions (coloured by scan order, y down). Right, top: probe amplitude
    and phase and, when the scan has an object, object amplitude and phase with the
    extent of the scan positions outlined (solid) and the region the N×N windows cover
    (dashed). Right, bottom: ``n_patterns`` diffraction patterns, evenly spaced through
    the scan, on one shared logarithmic colour scale (values below 1e-4 of the maximum
    are clipped). Phases are hidden where the amplitude is below 1e-3 of its maximum.

    Parameters
    ----------
    scan : ScanData
    path : str or PathLike
        Output PNG; parent folders are created.
    n_patterns : int
        How many diffraction patterns to show (at most M).

    Returns
    -------
    Path
        The file written.
    """
    check_int("n_patterns", n_patterns)
    fig = _new_figure()
    has_object = scan.object is not None
    left, right = fig.subfigures(1, 2, width_ratios=[1.0, 2.7])
    _draw_positions(left.subplots(), scan)
    top, bottom = right.subfigures(2, 1)
    axes = top.subplots(1, 4 if has_object else 2)
    if scan.probe is not None:
        _draw_complex(axes[0], axes[1], scan.probe, "probe")
    else:
        for ax in axes[:2]:
            ax.text(0.5, 0.5, "no probe in the file", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
    if has_object:
        amp_ax, phase_ax = axes[2], axes[3]
        _draw_complex(amp_ax, phase_ax, scan.object, "object")
        for ax in (amp_ax, phase_ax):
            _outline_scan(ax, scan.xcoords, scan.ycoords, scan.N)
        amp_ax.legend(loc="lower right", fontsize=6, framealpha=0.8)
    n_shown = min(n_patterns, scan.n_points)
    indices = np.unique(np.linspace(0, scan.n_points - 1, n_shown).round().astype(np.int64))
    patterns = np.asarray(scan.diffraction[indices], dtype=np.float32)
    titles = [f"pattern {int(i)}" for i in indices]
    _draw_patterns(bottom, patterns, titles, label="amplitude (log scale)")
    name = Path(scan.source).name if scan.source else "scan"
    fig.suptitle(f"{name}: M={scan.n_points} points, N={scan.N}", fontsize=11)
    return _save(fig, path)


def plot_groups(grouped: Mapping[str, Any], path: str | os.PathLike, *, n_groups: int = 3) -> Path:
    """Draw a few groups of a :func:`~ptychodata.grouped.grouped_data` dict and save a PNG.

    Top left: every grouped position in grey, with ``n_groups`` groups (evenly spaced
    through the batch) highlighted: members as dots, their centre (``coords_offsets``)
    as a cross. Top middle: a zoom on the first highlighted group, each member labelled
    with its channel c and an arrow along ``coords_relative`` (member → centre). Top
    right, when ``objectGuess`` is present: the object amplitude around that group with
    each member's N×N window outlined. Bottom row: that group's ``X_full`` channels on
    one shared logarithmic scale.

    Parameters
    ----------
    grouped : dict
        Needs ``coords_nn`` (B, 1, 2, C), ``coords_offsets`` (B, 1, 2, 1),
        ``coords_relative`` (B, 1, 2, C), ``nn_indices`` (B, C) and ``X_full``
        (B, N, N, C); uses ``objectGuess`` (H, W) when present.
    path : str or PathLike
        Output PNG; parent folders are created.
    n_groups : int
        How many groups to highlight (at most B).

    Returns
    -------
    Path
        The file written.
    """
    check_int("n_groups", n_groups)
    coords_nn = np.asarray(grouped["coords_nn"], dtype=np.float64)[:, 0]  # (B, 2, C)
    centres = np.asarray(grouped["coords_offsets"], dtype=np.float64)[:, 0, :, 0]  # (B, 2)
    relative = np.asarray(grouped["coords_relative"], dtype=np.float64)[:, 0]  # (B, 2, C)
    nn_indices = np.asarray(grouped["nn_indices"])
    X_full = grouped["X_full"]
    obj = grouped.get("objectGuess")
    n_total, _, C = coords_nn.shape
    N = int(X_full.shape[1])
    chosen = np.unique(np.linspace(0, n_total - 1, min(n_groups, n_total)).round().astype(np.int64))
    colours = [f"C{k % 10}" for k in range(len(chosen))]
    b0 = int(chosen[0])
    members, centre = coords_nn[b0], centres[b0]

    fig = _new_figure()
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.2, 1.0])
    axes = top.subplots(1, 2 if obj is None else 3)
    overview, zoom = axes[0], axes[1]
    all_xy = np.unique(coords_nn.transpose(0, 2, 1).reshape(-1, 2), axis=0)
    for ax in (overview, zoom):
        ax.scatter(all_xy[:, 0], all_xy[:, 1], s=_marker_size(len(all_xy)), c="0.7", lw=0, rasterized=True)
    for b, colour in zip(chosen, colours):
        overview.scatter(coords_nn[b, 0], coords_nn[b, 1], s=14, color=colour, zorder=3)
        overview.scatter(*centres[b], marker="x", s=40, color=colour, zorder=4, label=f"group {b}")
    overview.set_aspect("equal")
    overview.invert_yaxis()
    overview.set_xlabel("x (px, column)")
    overview.set_ylabel("y (px, row)")
    overview.legend(loc="upper right", fontsize=7, framealpha=0.8)
    overview.set_title(f"{len(chosen)} of {n_total} groups (× = centre)", fontsize=10)

    for c in range(C):
        zoom.annotate(
            "",
            xy=members[:, c] + relative[b0, :, c],
            xytext=members[:, c],
            arrowprops={"arrowstyle": "->", "color": f"C{c % 10}", "lw": 0.8, "alpha": 0.7},
        )
        zoom.annotate(f"c={c}", members[:, c], textcoords="offset points", xytext=(4, 4), fontsize=8)
    zoom.scatter(members[0], members[1], s=30, color=[f"C{c % 10}" for c in range(C)], zorder=3)
    zoom.scatter(*centre, marker="x", s=60, color="k", zorder=4, label="centre (coords_offsets)")
    half = max(float(np.abs(members - centre[:, None]).max()), 1.0) * 1.8
    _set_view(zoom, centre, half)
    zoom.legend(loc="upper right", fontsize=7, framealpha=0.8)
    zoom.set_title(f"group {b0}: arrows = coords_relative", fontsize=10)

    if obj is not None:
        window_ax = axes[2]
        image = window_ax.imshow(np.abs(np.asarray(obj)), cmap="gray")
        fig.colorbar(image, ax=window_ax, shrink=0.8, label="|object|")
        for c in range(C):
            _outline_window(window_ax, members[:, c], N, colour=f"C{c % 10}", label=f"c={c}")
        window_ax.scatter(*centre, marker="x", s=60, color="w", zorder=4)
        _set_view(window_ax, centre, half + N / 2 + 2)
        window_ax.legend(loc="upper right", fontsize=7, framealpha=0.8)
        window_ax.set_title(f"group {b0}: N×N windows on objectGuess", fontsize=10)

    channels = np.moveaxis(np.asarray(X_full[b0], dtype=np.float32), -1, 0)  # (C, N, N)
    titles = [f"c={c} (point {int(nn_indices[b0, c])})" for c in range(C)]
    _draw_patterns(bottom, channels, titles, label=f"X_full, group {b0} (log)")
    fig.suptitle(f"grouped data: B={n_total} groups of C={C}, N={N}", fontsize=11)
    return _save(fig, path)


# ---------------------------------------------------------------------- helpers
def plot_store(store: Store, path: str | os.PathLike, *, n_groups: int = 3) -> Path:
    """Overview of a prepared store: positions coloured by experiment, a few groups, X samples.

    Left: every scan position, coloured by experiment, with ``n_groups`` groups drawn as
    their members joined to the group centre. Right: the normalised X channels of those
    groups (one row per group), on a shared log scale.
    """
    fig = _new_figure()
    left, right = fig.subfigures(1, 2, width_ratios=[1, 1.3])
    ax = left.subplots()
    x, y = store.positions.T
    experiment = store.pattern_experiment
    for experiment_id in range(store.n_experiments):
        mine = experiment == experiment_id
        ax.scatter(x[mine], y[mine], s=_marker_size(len(x)), label=f"experiment {experiment_id}")
    rng = np.random.default_rng(0)
    shown = np.sort(rng.choice(len(store), size=min(n_groups, len(store)), replace=False))
    batch = store.batch(shown, reuse=False)
    for row, members in enumerate(batch["nn_indices"]):
        centre = batch["coords_offsets"][row, 0, 0]
        for member in members:
            ax.plot([centre[0], x[member]], [centre[1], y[member]], color="k", lw=0.8)
        ax.scatter(x[members], y[members], s=30, facecolors="none", edgecolors="k")
        ax.annotate(f"group {shown[row]}", centre, xytext=(4, 4), textcoords="offset points", fontsize=8)
    ax.set_aspect("equal")
    ax.invert_yaxis()
    ax.set_xlabel("x (object px)")
    ax.set_ylabel("y (object px)")
    ax.set_title(f"{len(x)} positions, {len(store)} groups of C={store.C}")
    ax.legend(loc="upper right", fontsize=8, markerscale=3)
    rows = right.subfigures(len(shown), 1)
    for row, subfigure in enumerate(np.atleast_1d(rows)):
        titles = [f"group {shown[row]}, c={c}" for c in range(store.C)]
        _draw_patterns(subfigure, batch["X"][row], titles, label="X (normalised)")
    return _save(fig, path)


def _new_figure() -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(15, 7.5), dpi=_DPI, layout="constrained")


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=_DPI)
    fig.clear()
    return path


def _marker_size(n_points: int) -> float:
    return float(np.clip(3e3 / max(n_points, 1), 0.3, 20.0))


def _draw_positions(ax: Axes, scan: ScanData) -> None:
    points = ax.scatter(
        scan.xcoords,
        scan.ycoords,
        c=np.arange(scan.n_points),
        s=_marker_size(scan.n_points),
        cmap="viridis",
        lw=0,
        rasterized=True,
    )
    ax.set_aspect("equal")
    ax.invert_yaxis()
    ax.set_xlabel("x (px, column)")
    ax.set_ylabel("y (px, row)")
    ax.set_title(f"scan positions (M={scan.n_points})", fontsize=10)
    ax.figure.colorbar(points, ax=ax, label="scan index", location="bottom", shrink=0.8, aspect=30)


def _draw_complex(amp_ax: Axes, phase_ax: Axes, field: np.ndarray, name: str) -> None:
    field = np.asarray(field)
    amplitude = np.abs(field)
    phase = np.angle(field)
    phase = np.where(amplitude > _PHASE_MASK * amplitude.max(), phase, np.nan)
    image = amp_ax.imshow(amplitude, cmap="gray")
    amp_ax.figure.colorbar(image, ax=amp_ax, shrink=0.8)
    amp_ax.set_title(f"|{name}| ({field.shape[0]}×{field.shape[1]})", fontsize=9)
    low, high = _phase_limits(phase)
    cyclic = high - low > 1.5 * np.pi
    image = phase_ax.imshow(
        phase,
        cmap="twilight" if cyclic else "viridis",
        vmin=-np.pi if cyclic else low,
        vmax=np.pi if cyclic else high,
    )
    phase_ax.figure.colorbar(image, ax=phase_ax, shrink=0.8, label="rad")
    phase_ax.set_title(f"{name} phase", fontsize=9)
    for ax in (amp_ax, phase_ax):
        ax.set_xlabel("x (px)")
        ax.set_ylabel("y (px)")


def _phase_limits(phase: np.ndarray) -> tuple[float, float]:
    """0.5–99.5 percentile range of the finite phases; a cyclic ±π map is used for wide ranges."""
    finite = phase.ravel()[:: max(1, phase.size // 1_000_000)]  # a sample is enough for limits
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return -np.pi, np.pi
    low, high = (float(v) for v in np.percentile(finite, [0.5, 99.5]))
    return (low, high) if high > low else (low - 0.1, low + 0.1)


def _set_view(ax: Axes, centre: np.ndarray, half: float) -> None:
    """Square view of half-width ``half`` px about ``centre`` (x, y), y pointing down."""
    ax.set_xlim(centre[0] - half, centre[0] + half)
    ax.set_ylim(centre[1] + half, centre[1] - half)
    ax.set_aspect("equal")
    ax.set_xlabel("x (px, column)")
    ax.set_ylabel("y (px, row)")


def _outline_window(ax: Axes, position: np.ndarray, N: int, *, colour: str, label: str) -> None:
    """The N×N window centred on ``position`` (§4): pixel centres x − N//2 … x − N//2 + N − 1."""
    from matplotlib.patches import Rectangle

    corner = (position[0] - N // 2 - 0.5, position[1] - N // 2 - 0.5)
    ax.add_patch(Rectangle(corner, N, N, fill=False, ec=colour, lw=1.0, label=label))
    ax.scatter(*position, s=12, color=colour, zorder=3)


def _outline_scan(ax: Axes, x: np.ndarray, y: np.ndarray, N: int) -> None:
    from matplotlib.patches import Rectangle

    x0, x1, y0, y1 = float(x.min()), float(x.max()), float(y.min()), float(y.max())
    ax.add_patch(
        Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="tab:orange", lw=1.2, label="positions")
    )
    ax.add_patch(
        Rectangle(
            (x0 - N / 2, y0 - N / 2),
            x1 - x0 + N,
            y1 - y0 + N,
            fill=False,
            ec="tab:cyan",
            lw=1.0,
            ls="--",
            label="N×N windows",
        )
    )


def _draw_patterns(fig: Figure | SubFigure, patterns: np.ndarray, titles: list[str], *, label: str) -> None:
    """Patterns (K, N, N) side by side on one shared log colour scale, with one colour bar."""
    from matplotlib.colors import LogNorm

    top = float(patterns.max()) if patterns.size else 1.0
    top = top if top > 0 else 1.0
    norm = LogNorm(vmin=top * _LOG_FLOOR, vmax=top, clip=True)
    axes = np.atleast_1d(fig.subplots(1, len(patterns)))
    image = None
    for ax, pattern, title in zip(axes, patterns, titles):
        image = ax.imshow(
            np.maximum(pattern, top * _LOG_FLOOR), norm=norm, cmap="magma", interpolation="nearest"
        )
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("detector px")
    axes[0].set_ylabel("detector px")
    fig.colorbar(image, ax=list(axes), label=label, shrink=0.9)
