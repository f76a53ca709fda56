"""Human summaries of a scan: shapes, value ranges, step, overlap, counts-or-amplitude hint.

Pure functions of a :class:`~ptychodata.scan.ScanData`, cheap even for a huge
memory-mapped file (diffraction statistics come from a bounded, evenly spaced sample).
"""

from __future__ import annotations

import json
import math
import textwrap
from typing import Any

import numpy as np

from ptychodata._runtime import jsonable
from ptychodata.errors import PtychodataError
from ptychodata.io import (
    CountsEvidence,
    LoadOptions,
    assemble,
    check_links,
    filters_of,
    invalid_patterns,
    open_container,
    plan,
    read_raw,
    recognise,
    require_h5py,
    sniff,
)
from ptychodata.scan import ScanData

__all__ = [
    "describe_file",
    "format_description",
    "format_summary",
    "human_size",
    "probe_diameter",
    "summarize_scan",
]

# inspect reads at most this many diffraction patterns, and at most this many bytes of them.
_SAMPLE_PATTERNS = 2000
_SAMPLE_BYTES = 128 << 20
# Fraction of the probe intensity Σ|P|² inside the circle whose diameter is "the probe diameter".
_PROBE_ENERGY_FRACTION = 0.9


def summarize_scan(scan: ScanData, *, max_patterns: int = _SAMPLE_PATTERNS) -> dict[str, Any]:
    """Summary numbers of a scan, cheap even for a huge memory-mapped file.

    Diffraction statistics come from at most ``max_patterns`` patterns (and at most
    128 MiB of them), evenly spaced through the scan; the rest is computed from the
    positions, probe and shapes.

    Parameters
    ----------
    scan : ScanData
    max_patterns : int
        Largest number of patterns read for the value statistics.

    Returns
    -------
    dict
        JSON-ready: ``source``, ``n_points`` (M), ``N``; ``arrays`` (key -> shape, dtype,
        memory-mapped or not; ``*_start`` marked when they default to the positions);
        ``diffraction`` (min, max, mean, ``n_sampled``, ``sampled``, ``integer_valued``);
        ``looks_like_counts`` and a one-line ``hint``; ``x_range`` and ``y_range``
        (min, max in object pixels, x = column, y = row); ``step`` (median
        nearest-neighbour distance, px; None for one point); ``probe_diameter`` (px, see
        :func:`probe_diameter`); ``overlap`` = 1 − step / probe_diameter (linear
        overlap; None when either is unknown); ``probe_shape``, ``object_shape``;
        ``metadata``.
    """
    from scipy.spatial import cKDTree

    stats = _diffraction_stats(scan.diffraction, max_patterns)
    counts, hint = _counts_hint(scan.diffraction, stats)
    step = None
    if scan.n_points > 1:
        distances, _ = cKDTree(scan.positions).query(scan.positions, k=2, workers=-1)
        step = float(np.median(distances[:, 1]))
    diameter = None if scan.probe is None else probe_diameter(scan.probe)
    overlap = None if step is None or not diameter else 1.0 - step / diameter
    return {
        "source": scan.source,
        "n_points": scan.n_points,
        "N": scan.N,
        "arrays": _array_table(scan),
        "diffraction": stats,
        "looks_like_counts": counts,
        "hint": hint,
        "x_range": [float(scan.xcoords.min()), float(scan.xcoords.max())],
        "y_range": [float(scan.ycoords.min()), float(scan.ycoords.max())],
        "step": step,
        "probe_diameter": diameter,
        "probe_diameter_definition": f"diameter of the circle about the intensity centroid holding "
        f"{_PROBE_ENERGY_FRACTION:.0%} of sum |P|^2",
        "overlap": overlap,
        "probe_shape": None if scan.probe is None else list(scan.probe.shape),
        "mask": None if scan.mask is None else {"shape": list(scan.mask.shape), "bad_pixels": int((~scan.mask).sum())},
        "object_shape": None if scan.object is None else list(scan.object.shape),
        "metadata": jsonable(dict(scan.metadata)),
    }


def probe_diameter(probe: np.ndarray, *, fraction: float = _PROBE_ENERGY_FRACTION) -> float | None:
    """Encircled-energy diameter of a probe, in pixels.

    Twice the radius, measured from the centroid of |P|², of the circle that holds
    ``fraction`` of Σ|P|² (linearly interpolated between pixel radii). For the default
    0.9 this is ≈ 0.93 × the 50 %-amplitude diameter of a flat-topped disk and
    ≈ 1.07 × the 1/e²-intensity diameter of a Gaussian, so ``1 − step / diameter``
    is the usual linear overlap. Defined for any probe shape; for a ring-shaped
    (centrally obstructed) probe it measures the outer footprint.

    Parameters
    ----------
    probe : ndarray of shape (N, N), complex
    fraction : float
        Energy fraction in (0, 1].

    Returns
    -------
    float or None
        None for an all-zero probe.
    """
    intensity = np.abs(np.asarray(probe, dtype=np.complex128)) ** 2
    total = float(intensity.sum())
    if not total > 0:
        return None
    rows, cols = np.indices(intensity.shape)
    centre_row = float((intensity * rows).sum() / total)
    centre_col = float((intensity * cols).sum() / total)
    radii = np.hypot(rows - centre_row, cols - centre_col).ravel()
    order = np.argsort(radii, kind="stable")
    cumulative = np.cumsum(intensity.ravel()[order]) / total
    return 2.0 * float(np.interp(fraction, cumulative, radii[order]))


def format_summary(summary: dict[str, Any]) -> str:
    """Human-readable text of a :func:`summarize_scan` dict (with optional ``file``/``file_size_bytes``)."""
    lines = []
    if "file" in summary:
        lines.append(f"file         {summary['file']} ({human_size(summary['file_size_bytes'])})")
    lines.append(f"points       M = {summary['n_points']}")
    lines.append(f"patterns     N = {summary['N']} (N×N)")
    lines.append("arrays")
    for key, info in summary["arrays"].items():
        shape = "(" + ", ".join(map(str, info["shape"])) + ("," if len(info["shape"]) == 1 else "") + ")"
        note = f"  {info['note']}" if info.get("note") else ""
        lines.append(f"  {key:<15} {shape:<18} {info['dtype']:<10}{note}".rstrip())
    stats = summary["diffraction"]
    sample = (
        f"sample of {stats['n_sampled']} of {summary['n_points']} patterns, evenly spaced"
        if stats["sampled"]
        else f"all {stats['n_sampled']} patterns"
    )
    if stats["min"] is None:
        lines.append(f"diffraction  no finite value ({sample})")
    else:
        lines.append(
            f"diffraction  min {stats['min']:.4g}, max {stats['max']:.4g}, mean {stats['mean']:.4g} of the finite "
            f"values ({sample})"
        )
    lines.append(f"             {summary['hint']}")
    (x0, x1), (y0, y1) = summary["x_range"], summary["y_range"]
    lines.append(f"positions    x {x0:.2f} .. {x1:.2f} px, y {y0:.2f} .. {y1:.2f} px (x = column, y = row)")
    step = summary["step"]
    lines.append(
        "step         n/a (one point)"
        if step is None
        else f"step         {step:.3f} px (median nearest-neighbour distance)"
    )
    diameter = summary["probe_diameter"]
    if summary["probe_shape"] is None:
        lines.append("probe        none in the file (grouping and normalisation need none; overlap unknown)")
    else:
        probe = "×".join(map(str, summary["probe_shape"]))
        lines.append(
            f"probe        {probe}, diameter "
            + ("n/a (all-zero probe)" if diameter is None else f"{diameter:.2f} px")
            + f" ({_PROBE_ENERGY_FRACTION:.0%} of |P|² inside)"
        )
    if summary.get("mask") is not None:
        lines.append(f"mask         {summary['mask']['bad_pixels']} bad pixel(s) of {summary['N']}×{summary['N']} "
                     "(zeroed; mask True = usable)")
    overlap = summary["overlap"]
    if overlap is not None:
        note = " (no overlap: step exceeds the probe diameter)" if overlap < 0 else ""
        lines.append(f"overlap      {overlap:.3f} (linear: 1 − step / probe diameter){note}")
    shape = summary["object_shape"]
    lines.append("object       " + ("none" if shape is None else "×".join(map(str, shape))))
    metadata = summary["metadata"]
    if metadata:
        text = ", ".join(f"{key}={json.dumps(value)}" for key, value in metadata.items())
        wrapped = textwrap.wrap(text, width=96, initial_indent="metadata     ", subsequent_indent=" " * 13)
        lines.extend(wrapped)
    else:
        lines.append("metadata     none")
    return "\n".join(lines)


# ---------------------------------------------------------------------- summary helpers
def _array_table(scan: ScanData) -> dict[str, dict[str, Any]]:
    """key -> {shape, dtype, note} for the scan's arrays, under the file-format key names."""
    entries: list[tuple[str, np.ndarray | None, str]] = [
        ("diffraction", scan.diffraction, ""),
        ("xcoords", scan.xcoords, ""),
        ("ycoords", scan.ycoords, ""),
        ("xcoords_start", scan.xcoords_start, "(= xcoords)" if scan.xcoords_start is scan.xcoords else ""),
        ("ycoords_start", scan.ycoords_start, "(= ycoords)" if scan.ycoords_start is scan.ycoords else ""),
        ("scan_index", scan.scan_index, "" if scan.scan_index.any() else "(all 0: one scan)"),
        ("probeGuess", scan.probe, ""),
        ("mask", scan.mask, ""),
        ("objectGuess", scan.object, ""),
        ("Y", scan.Y, ""),
    ]
    entries.extend((key, value, "(extra key)") for key, value in scan.extras.items())
    table = {}
    for key, value, note in entries:
        if value is None:
            continue
        if isinstance(value, np.memmap):
            note = (note + " memory-mapped").strip()
        elif hasattr(value, "detector"):
            note = (note + " read lazily, prepared per chunk").strip()
        table[key] = {"shape": list(value.shape), "dtype": str(value.dtype), "note": note}
    return table


def _sample_indices(n_points: int, pattern_bytes: int, max_patterns: int) -> np.ndarray:
    count = min(n_points, max(1, max_patterns), max(1, _SAMPLE_BYTES // max(1, pattern_bytes)))
    return np.unique(np.linspace(0, n_points - 1, count).round().astype(np.int64))


def _diffraction_stats(diffraction: np.ndarray, max_patterns: int) -> dict[str, Any]:
    """Value statistics of an evenly spaced sample of patterns, read in chunks of ~16 MiB.

    ``min``, ``max`` and ``mean`` are over the finite values (None when there are none);
    ``invalid`` counts the sampled patterns holding a NaN, Inf or negative value, the first
    of them is ``first_invalid``; ``mean_total`` is the mean per-pattern sum the counts rule reads.
    """
    n_points = diffraction.shape[0]
    indices = _sample_indices(n_points, diffraction[:1].nbytes, max_patterns)
    low, high, total, count, pattern_total, integral = math.inf, -math.inf, 0.0, 0, 0.0, True
    invalid, first_invalid = 0, None
    step = max(1, (16 << 20) // max(1, diffraction[:1].nbytes))
    for start in range(0, len(indices), step):
        rows = indices[start : start + step]
        chunk = np.asarray(diffraction[rows])
        bad = invalid_patterns(chunk)
        if bad.any() and first_invalid is None:
            first_invalid = int(rows[np.argmax(bad)])
        invalid += int(bad.sum())
        finite = chunk[np.isfinite(chunk)] if chunk.dtype.kind in "fc" else chunk.ravel()
        if finite.size:
            low, high = min(low, float(finite.min())), max(high, float(finite.max()))
        total += float(finite.sum(dtype=np.float64))
        pattern_total += float(finite.sum(dtype=np.float64))
        count += finite.size
        if integral and chunk.dtype.kind == "f":
            integral = bool(np.all(finite == np.floor(finite)))
    return {
        "min": low if count else None,
        "max": high if count else None,
        "mean": total / count if count else None,
        "mean_total": pattern_total / len(indices),
        "n_sampled": len(indices),
        "sampled": bool(len(indices) < n_points),
        "integer_valued": integral,
        "invalid": invalid,
        "first_invalid": first_invalid,
    }


def _counts_hint(diffraction: np.ndarray, stats: dict[str, Any]) -> tuple[bool, str]:
    """(counts by the counts rule?, one-line hint): the rule ``load`` applies, on the sampled values."""
    if stats["invalid"]:
        return False, (
            f"{stats['invalid']} of the sampled patterns hold NaN, Inf or negative values (first: pattern "
            f"{stats['first_invalid']}); ScanData.load refuses them: fix the file (or, for dark-subtracted counts, "
            "load with clip_negative=True)"
        )
    evidence = CountsEvidence(
        dtype=str(diffraction.dtype),
        whole_numbers=stats["integer_valued"],
        maximum=stats["max"] if stats["max"] is not None else 0.0,
        mean_total=stats["mean_total"],
        n_pixels=int(np.prod(diffraction.shape[1:])),
    )
    if evidence.looks_like_counts:
        return True, f"{evidence.describe()}: counts by the counts rule: load converts them (intensity=True)"
    if evidence.low_dose_doubt:
        return False, (
            f"{evidence.describe()}: amplitudes by the counts rule, but may be counts at low dose; "
            "if so, load with intensity=True"
        )
    return False, "amplitudes by the counts rule (sqrt of counts)"


def human_size(n_bytes: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= size:
            return f"{n_bytes / size:.1f} {unit}"
    return f"{n_bytes} B"


# ---------------------------------------------------------------------- any file
_TREE_LIMIT = 200


def describe_file(path: str | Any, *, max_patterns: int = _SAMPLE_PATTERNS, **options: Any) -> dict[str, Any]:
    """What ``ptychodata inspect`` says about any readable file, before and after validating it.

    Parameters
    ----------
    path : path
        An HDF5/CXI file, an ``.npz`` (also bz2/gzip-compressed), in any layout.
    max_patterns : int
        Largest number of patterns read for the value statistics of the loaded scan.
    **options
        Load options of :meth:`ScanData.load <ptychodata.scan.ScanData.load>` (``keys``,
        ``pixel_size``, ``crop``, ``bin``, ...).

    Returns
    -------
    dict
        JSON-ready: ``file``, ``file_size_bytes``, ``container`` ({"hdf5", "zip", "bz2",
        "gzip"}), ``tree`` (one entry per dataset or member: ``path``, ``shape``, ``dtype``
        and for HDF5 ``chunks``, ``filters``, ``link``), ``layout`` (recognised layout or
        None), ``evidence`` (frame shape, counts rule numbers and verdict, shift evidence,
        bad pixels, geometry; absent when the layout could not be read), ``problem`` (why the
        file does not load as it is, and what to pass; None when it loads), ``warnings``, and
        when it loads every key of :func:`summarize_scan`.
    """
    import warnings
    from pathlib import Path


    path = Path(path)
    kind = sniff(path)
    result: dict[str, Any] = {"file": str(path), "file_size_bytes": path.stat().st_size, "container": kind}
    with open_container(path) as container:
        result["tree"] = _tree(container)
        result["layout"] = "key map" if options.get("keys") else recognise(container)
    result["evidence"] = None
    result["problem"] = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            load_options = LoadOptions(**options)
            raw = read_raw(path, load_options)
            decided = plan(raw, load_options)
            result["evidence"] = _evidence(raw, decided)
            scan = ScanData(**assemble(raw, load_options, decided=decided))
            scan.check_values()  # what load refuses is the problem here too
        except PtychodataError as exc:
            result["problem"] = str(exc)
            scan = None
    result["warnings"] = [str(warning.message) for warning in caught]
    if scan is not None:
        result.update(summarize_scan(scan, max_patterns=max_patterns))
        result["file"], result["file_size_bytes"] = str(path), path.stat().st_size
    return result


def _tree(container: Any) -> list[dict[str, Any]]:
    entries = []
    if container.kind == "npz":
        for key in list(container.keys())[:_TREE_LIMIT]:
            value = container.raw(key)
            entries.append({"path": key, "shape": list(value.shape), "dtype": str(value.dtype)})
        return entries
    h5py = require_h5py()
    h5 = container._h5

    def visit(group: Any, prefix: str) -> None:
        for name in group:
            if len(entries) >= _TREE_LIMIT:
                return
            item_path = f"{prefix}/{name}"
            link = group.get(name, getlink=True)
            target = link.path if isinstance(link, (h5py.SoftLink, h5py.ExternalLink)) else None
            try:
                check_links(h5, item_path)  # never follow a link to a FIFO or device
                item = group[name]
            except PtychodataError as exc:
                entries.append({"path": item_path, "link": target, "refused": str(exc)})
                continue
            except (KeyError, OSError, RuntimeError):
                entries.append({"path": item_path, "link": target, "broken": True})
                continue
            if isinstance(item, h5py.Dataset):
                entries.append({
                    "path": item_path, "shape": list(item.shape), "dtype": str(item.dtype),
                    "chunks": None if item.chunks is None else list(item.chunks),
                    "filters": [name for _, name in filters_of(item)], "link": target,
                })
            elif isinstance(item, h5py.Group) and target is None:
                visit(item, item_path)
            else:
                entries.append({"path": item_path, "link": target, "group": True})

    visit(h5, "")
    return entries


def _evidence(raw: Any, decided: Any) -> dict[str, Any]:
    stats, prep = decided.stats, decided.detector
    return jsonable({
        "patterns": raw.patterns_key,
        "frames": {"count": int(raw.patterns.shape[0]), "shape": [int(n) for n in raw.patterns.shape[1:]],
                   "dtype": stats.dtype},
        "counts": {"converted": decided.counts, "reason": decided.counts_reason, "rule": stats.counts_evidence(),
                   "sampled": stats.n_sampled, "min": stats.minimum, "max": stats.maximum,
                   "mean_total": stats.mean_total, "whole_numbers": stats.whole_numbers},
        "shift": {"shifted_in_file": decided.shifted_in_file, "reason": decided.shift_reason,
                  "centroid_evidence": stats.shift_evidence()},
        "bad_pixels": 0 if prep.mask is None else int((~prep.mask).sum()),
        "preparation": prep.steps(),
        "N": prep.N,
        "positions": {"unit": raw.position_unit, "origin": raw.position_origin},
        "geometry": {"photon_energy_eV": raw.energy_eV, "wavelength_m": raw.wavelength_m,
                     "distance_m": raw.distance_m, "detector_pixel_m": raw.detector_pixel_m,
                     "object_pixel_m": raw.object_pixel_m},
    })


def format_description(description: dict[str, Any]) -> str:
    """Human-readable text of a :func:`describe_file` dict."""
    lines = [f"file         {description['file']} ({human_size(description['file_size_bytes'])})"]
    container = {"hdf5": "HDF5", "zip": "npz (zip)", "bz2": "npz, bz2-compressed (read into memory)",
                 "gzip": "npz, gzip-compressed (read into memory)"}.get(description["container"],
                                                                          description["container"])
    lines.append(f"container    {container}")
    layout = description["layout"]
    lines.append("layout       " + (layout or "not recognised: name the datasets with --key diffraction=PATH "
                                    "--key xcoords=PATH --key ycoords=PATH (or --key positions=PATH)"))
    lines.append("contents")
    for entry in description["tree"]:
        if entry.get("refused"):
            lines.append(f"  {entry['path']:<44} not followed: {entry['refused']}")
            continue
        if entry.get("broken"):
            lines.append(f"  {entry['path']:<44} broken link -> {entry['link']}")
            continue
        if entry.get("group"):
            lines.append(f"  {entry['path']:<44} group" + (f" -> {entry['link']}" if entry.get("link") else ""))
            continue
        shape = "(" + ", ".join(map(str, entry["shape"])) + ("," if len(entry["shape"]) == 1 else "") + ")"
        extra = []
        if entry.get("chunks"):
            extra.append("chunks (" + ", ".join(map(str, entry["chunks"])) + ")")
        if entry.get("filters"):
            extra.append("+".join(entry["filters"]))
        if entry.get("link"):
            extra.append(f"-> {entry['link']}")
        lines.append(f"  {entry['path']:<44} {shape:<18} {entry['dtype']:<10} {'  '.join(extra)}".rstrip())
    if len(description["tree"]) >= _TREE_LIMIT:
        lines.append(f"  ... (first {_TREE_LIMIT} entries)")
    evidence = description.get("evidence")
    if evidence:
        frames, counts, shift = evidence["frames"], evidence["counts"], evidence["shift"]
        lines.append(f"patterns     {evidence['patterns']}: {frames['count']} frames of "
                     f"{'×'.join(map(str, frames['shape']))} {frames['dtype']} -> N = {evidence['N']}")
        verdict = "counts: converted to amplitude sqrt(counts)" if counts["converted"] else "amplitudes (kept)"
        lines.append(f"intensity    {verdict}; {counts['reason']}")
        lines.append(f"             evidence: {counts['rule']}; min {counts['min']:.4g} over {counts['sampled']} "
                     "sampled patterns")
        lines.append(f"shift        {'fftshifted on read' if not shift['shifted_in_file'] else 'already shifted'}; "
                     f"{shift['centroid_evidence']}")
        lines.append(f"bad pixels   {evidence['bad_pixels']}" + (" (zeroed; mask True = usable)"
                                                                 if evidence["bad_pixels"] else ""))
        lines.append("preparation  " + (", ".join(evidence["preparation"]) or "none"))
        geometry = {key: value for key, value in evidence["geometry"].items() if value is not None}
        lines.append(f"positions    {evidence['positions']['unit']}, window {evidence['positions']['origin']}")
        lines.append("geometry     " + (", ".join(f"{key} {_fmt(value)}" for key, value in geometry.items())
                                       or "none in the file"))
    if description.get("problem"):
        lines.append(textwrap.fill(description["problem"], width=110, initial_indent="PROBLEM      ",
                                   subsequent_indent=" " * 13))
    for message in description.get("warnings", []):
        lines.append(textwrap.fill(message, width=110, initial_indent="note         ", subsequent_indent=" " * 13))
    if description.get("n_points") is not None:
        lines.append("scan (as loaded)")
        body = dict(description)
        body.pop("file", None)
        lines.append(format_summary(body))
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(_fmt(item) for item in value) + ")"
    return f"{value:.6g}" if isinstance(value, float) else str(value)
