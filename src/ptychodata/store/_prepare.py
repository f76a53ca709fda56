"""Build stores: copy sources into a frame store once, then write groupings into it.

``prepare`` streams each source's patterns in chunks (bounded memory), hashes and checks
them while copying, and records per-pattern energies so that any later grouping gets
its scale factors (§5) without reading a pattern again. Every build happens in a
temporary directory under an OS file lock and is renamed into place when complete.
"""

from __future__ import annotations

import datetime
import math
import os
import uuid
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ptychodata.errors import PtychodataError, ScanDataError, StoreError
from ptychodata.grouping import GroupingConfig, group
from ptychodata.normalize import checked_energies, intensity_scale, scale_from_energies
from ptychodata.scan import ScanData, counts_to_amplitude
from ptychodata.store._files import (
    NpyWriter,
    atomic_directory,
    ensure_writable_directory,
    file_lock,
    iter_rows,
    new_hasher,
    release_pages,
    remove_stale_temporaries,
    write_npy,
)
from ptychodata.store._manifest import (
    ExperimentEntry,
    FileEntry,
    FrameManifest,
    GroupingManifest,
    SourceEntry,
    check_files,
    read_manifest,
    stable_key,
    write_manifest,
)

__all__ = ["default_cache_dir", "prepare"]

_CHUNK_BYTES = 32 << 20
GROUPINGS = "groupings"


def default_cache_dir() -> Path:
    """``$PTYCHODATA_CACHE``, else ``$XDG_CACHE_HOME/ptychodata``, else ``~/.cache/ptychodata``."""
    if os.environ.get("PTYCHODATA_CACHE"):
        return Path(os.environ["PTYCHODATA_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ptychodata"


def prepare(
    sources: str | os.PathLike | ScanData | Sequence[str | os.PathLike | ScanData],
    config: GroupingConfig,
    *,
    cache_dir: str | os.PathLike | None = None,
    intensity: bool = False,
    materialize: bool = False,
    progress: bool = True,
    verify: bool = False,
):
    """Prepare (or reuse) the store of ``sources`` grouped by ``config`` and open it.

    Parameters
    ----------
    sources : path, ScanData, or a list of them
        Each source is one experiment; grouping never crosses experiments.
    config : GroupingConfig
    cache_dir : path, optional
        Where stores live; default :func:`default_cache_dir`.
    intensity : bool
        Sources hold counts; store sqrt(counts).
    materialize : bool
        Also write the grouped, scaled (B, C, N, N) X array (for slow random reads).
    progress : bool
        Show tqdm progress bars on long steps.
    verify : bool
        Re-hash file sources and rebuild if their content differs from the store's record.

    Returns
    -------
    Store
    """
    from ptychodata.store._store import Store

    cache = ensure_writable_directory(Path(cache_dir) if cache_dir is not None else default_cache_dir())
    handles = [_Source.open(source) for source in _as_list(sources)]
    frames_key = stable_key("frames", intensity, [handle.identity() for handle in handles])
    frames_dir = cache / f"frames-{frames_key}"
    with file_lock(cache / f"frames-{frames_key}.lock"):
        reason = _frames_stale(frames_dir, handles, verify)
        if reason is not None:
            remove_stale_temporaries(cache, frames_dir.name)
            with atomic_directory(frames_dir) as building:
                _build_frames(building, frames_key, handles, intensity, progress)
    frames = read_manifest(frames_dir, FrameManifest)
    grouping_key = stable_key("grouping", frames_key, config.to_dict(), materialize)
    groupings = frames_dir / GROUPINGS
    groupings.mkdir(exist_ok=True)
    with file_lock(groupings / f"{grouping_key}.lock"):
        grouping_dir = groupings / grouping_key
        if _grouping_stale(grouping_dir, frames) is not None:
            remove_stale_temporaries(groupings, grouping_key)
            with atomic_directory(grouping_dir) as building:
                _build_grouping(building, grouping_key, frames_dir, frames, config, materialize, progress)
    return Store(grouping_dir)


def _as_list(sources: Any) -> list[Any]:
    if isinstance(sources, (str, os.PathLike, ScanData)):
        return [sources]
    sources = list(sources)
    if not sources:
        raise StoreError("prepare() needs at least one source")
    return sources


class _Source:
    """A source scan to copy: its identity now, its (memory-mapped) arrays when first needed.

    Reusing an up-to-date store only stats the file; the scan is opened for a build or
    a content check.
    """

    def __init__(self, path: str | None, size: int | None, mtime_ns: int | None, scan: ScanData | None = None):
        self.path, self.size, self.mtime_ns = path, size, mtime_ns
        self._scan = scan
        self.known_hash = None if scan is None else content_hash(scan)

    @classmethod
    def open(cls, source: Any) -> _Source:
        if isinstance(source, ScanData):
            return cls(None, None, None, source)
        path = Path(source).expanduser().resolve()
        stat = _stat_source(path)
        return cls(str(path), stat.st_size, stat.st_mtime_ns)

    @property
    def scan(self) -> ScanData:
        if self._scan is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # integer counts are fine here: intensity= says what they are
                self._scan = ScanData.load(self.path, check_values=False)
        return self._scan

    def identity(self) -> dict[str, Any]:
        return {"path": self.path} if self.path is not None else {"content_hash": self.known_hash}


def _stat_source(path: Path) -> os.stat_result:
    try:
        return path.stat()
    except FileNotFoundError:
        raise ScanDataError(f"{path}: no such file") from None


def content_hash(scan: ScanData, *, progress: bool = False) -> str:
    """The hash recorded for a source: its patterns (as stored in the source) and other arrays."""
    hasher = _hash_small_arrays(scan)
    for _, chunk in tqdm(_pattern_chunks(scan), disable=not progress, desc="hashing", unit="chunk"):
        hasher.update(memoryview(np.ascontiguousarray(chunk)).cast("B"))
    return hasher.hexdigest()


def _hash_small_arrays(scan: ScanData):
    hasher = new_hasher()
    for array in (
        scan.xcoords,
        scan.ycoords,
        scan.xcoords_start,
        scan.ycoords_start,
        scan.probe,
        scan.object,
    ):
        if array is not None:
            hasher.update(np.ascontiguousarray(array).tobytes())
    return hasher


def _pattern_chunks(scan: ScanData) -> Iterator[tuple[int, np.ndarray]]:
    rows = max(1, _CHUNK_BYTES // max(1, scan.diffraction[:1].nbytes))
    return iter_rows(scan.diffraction, rows)


def _complete_manifest(directory: Path, kind: type) -> FrameManifest | GroupingManifest | str:
    """The manifest of a complete store directory, or why there is none (absent, broken)."""
    if not directory.exists():
        return "absent"
    try:
        manifest = read_manifest(directory, kind)
        check_files(directory, manifest.files)
    except StoreError as exc:
        return str(exc)
    return manifest


def _frames_stale(frames_dir: Path, handles: list[_Source], verify: bool) -> str | None:
    """Why the frame store at ``frames_dir`` cannot be reused, or None when it can."""
    manifest = _complete_manifest(frames_dir, FrameManifest)
    if isinstance(manifest, str):
        return manifest
    recorded = [experiment.source for experiment in manifest.experiments]
    for entry, handle in zip(recorded, handles):
        if entry.path != handle.path:
            return "sources differ"
        reason = entry.changed()
        if reason is not None:
            return reason
        if verify and entry.path is not None and content_hash(handle.scan) != entry.content_hash:
            return f"source {entry.path} content differs from the store's hash"
    return None


def _grouping_stale(grouping_dir: Path, frames: FrameManifest) -> str | None:
    manifest = _complete_manifest(grouping_dir, GroupingManifest)
    if isinstance(manifest, str):
        return manifest
    return None if manifest.frames_key == frames.key else "built for other frames"


# ---------------------------------------------------------------------- frames
def _build_frames(directory: Path, key: str, handles: list[_Source], intensity: bool, progress: bool) -> None:
    sizes = {handle.scan.N for handle in handles}
    if len(sizes) > 1:
        found = ", ".join(f"{h.path or 'in-memory scan'}: N={h.scan.N}" for h in handles)
        raise ScanDataError(f"sources have different pattern sizes ({found}); a store needs one N")
    N = sizes.pop()
    n_total = sum(handle.scan.n_points for handle in handles)
    all_Y = all(handle.scan.Y is not None for handle in handles)
    experiments = []
    start = 0
    bar = tqdm(total=n_total, disable=not progress, desc="copying patterns", unit="pattern", unit_scale=True)
    with (
        NpyWriter(directory / "patterns.npy", (n_total, N, N), np.float32) as patterns,
        NpyWriter(directory / "energies.npy", (n_total,), np.float64) as energies,
    ):
        for experiment_id, handle in enumerate(handles):
            digest = _copy_patterns(handle, patterns, energies, intensity, bar)
            scan = handle.scan
            source = SourceEntry(handle.path, handle.size, handle.mtime_ns, digest)
            experiments.append(
                ExperimentEntry(
                    experiment_id=experiment_id,
                    source=source,
                    start=start,
                    stop=start + scan.n_points,
                    object_shape=None if scan.object is None else list(scan.object.shape),
                    nphotons=scan.nphotons,
                    has_Y=scan.Y is not None,
                )
            )
            if scan.object is not None:
                write_npy(directory / f"object_{experiment_id}.npy", scan.object)
            start += scan.n_points
    bar.close()
    scans = [handle.scan for handle in handles]
    columns = {
        "xcoords": [s.xcoords for s in scans],
        "ycoords": [s.ycoords for s in scans],
        "xcoords_start": [s.xcoords_start for s in scans],
        "ycoords_start": [s.ycoords_start for s in scans],
        "scan_index": [s.scan_index for s in scans],
        "experiment_id": [np.full(s.n_points, e, np.int64) for e, s in enumerate(scans)],
    }
    for name, parts in columns.items():
        write_npy(directory / f"{name}.npy", np.concatenate(parts))
    write_npy(directory / "probes.npy", np.stack([s.probe for s in scans]))
    if all_Y:
        with NpyWriter(directory / "Y.npy", (n_total, N, N), np.complex64) as writer:
            for scan in scans:
                for _, chunk in iter_rows(scan.Y, max(1, _CHUNK_BYTES // (8 * N * N))):
                    writer.write(chunk)
    _write_manifest_last(
        directory, FrameManifest, key=key, N=N, n_patterns=n_total, intensity=intensity, experiments=experiments
    )


def _copy_patterns(
    handle: _Source, patterns: NpyWriter, energies: NpyWriter, intensity: bool, bar: tqdm
) -> str:
    """Stream one source's patterns into the store; return its content hash.

    The main thread reads, converts and checks chunk k+1 while a writer thread hashes
    and writes chunk k (both release the GIL), so reading overlaps writing. At most two
    chunks are in memory.
    """
    scan = handle.scan
    hasher = _hash_small_arrays(scan) if handle.known_hash is None else None
    where = f"{handle.path or 'in-memory scan'}: key 'diffraction'"

    def write(raw: np.ndarray, amplitude: np.ndarray, chunk_energy: np.ndarray) -> None:
        if hasher is not None:
            hasher.update(memoryview(np.ascontiguousarray(raw)).cast("B"))
        patterns.write(amplitude)
        energies.write(chunk_energy)

    with ThreadPoolExecutor(max_workers=1) as writer:
        pending = None
        for start, raw in _pattern_chunks(scan):
            if intensity:
                amplitude = counts_to_amplitude(raw, source=where, first_pattern=start)
            else:
                amplitude = raw.astype(np.float32, copy=False)
            chunk_energy = checked_energies(
                amplitude,
                np.arange(start, start + len(amplitude)),
                where=f"{where}: ",
                hint="" if intensity else " (counts? pass intensity=True)",
            )
            if pending is not None:
                pending.result()
            pending = writer.submit(write, raw, amplitude, chunk_energy)
            bar.update(len(raw))
        if pending is not None:
            pending.result()
    return handle.known_hash if hasher is None else hasher.hexdigest()


# ---------------------------------------------------------------------- groupings
def _build_grouping(
    directory: Path,
    key: str,
    frames_dir: Path,
    frames: FrameManifest,
    config: GroupingConfig,
    materialize: bool,
    progress: bool,
) -> None:
    if config.N is not None and config.N != frames.N:
        raise PtychodataError(f"config N={config.N} but the store's patterns are {frames.N}×{frames.N}")
    x = np.load(frames_dir / "xcoords.npy")
    y = np.load(frames_dir / "ycoords.npy")
    energies = np.load(frames_dir / "energies.npy", mmap_mode="r")
    n_groups = _split_groups(config.n_groups, [e.n_points for e in frames.experiments])
    all_groups, group_experiment, scales, photon_scales = [], [], [], []
    for experiment, count in zip(frames.experiments, n_groups):
        sl = slice(experiment.start, experiment.stop)
        experiment_config = replace(config, n_groups=count, seed=_experiment_seed(config.seed, experiment))
        try:
            groups = group(np.stack([x[sl], y[sl]], axis=1), experiment_config) + experiment.start
        except ScanDataError as exc:
            raise ScanDataError(f"{experiment.source.path or 'in-memory scan'}: {exc}") from None
        used, multiplicity = np.unique(groups, return_counts=True)
        where = f"{experiment.source.path or 'in-memory scan'}: "
        scales.append(scale_from_energies(energies[used], multiplicity, N=frames.N, where=where))
        nphotons = config.nphotons if config.nphotons is not None else experiment.nphotons
        photon_scales.append(intensity_scale(nphotons, frames.N))
        all_groups.append(groups)
        group_experiment.append(np.full(len(groups), experiment.experiment_id, np.int64))
    groups = np.concatenate(all_groups)
    experiment_of_group = np.concatenate(group_experiment)
    members = np.stack([x[groups], y[groups]], axis=-1)  # (B, C, 2)
    centres = members.mean(axis=1)
    write_npy(directory / "groups.npy", groups)
    write_npy(directory / "group_experiment.npy", experiment_of_group)
    write_npy(directory / "coords_offsets.npy", centres)
    write_npy(directory / "coords_relative.npy", -(members - centres[:, None, :]))
    if materialize:
        _materialize_X(directory, frames_dir, groups, np.asarray(scales)[experiment_of_group], progress)
    _write_manifest_last(
        directory,
        GroupingManifest,
        key=key,
        frames_key=frames.key,
        config=config.to_dict(),
        n_groups=len(groups),
        C=int(groups.shape[1]),
        x_scale=scales,
        intensity_scale=photon_scales,
        materialized=materialize,
    )


def _materialize_X(directory: Path, frames_dir: Path, groups: np.ndarray, scale: np.ndarray, progress: bool):
    patterns = np.load(frames_dir / "patterns.npy", mmap_mode="r")
    n_groups, C = groups.shape
    N = patterns.shape[-1]
    step = max(1, _CHUNK_BYTES // (4 * C * N * N))
    with NpyWriter(directory / "X.npy", (n_groups, C, N, N), np.float32) as writer:
        for start in tqdm(
            range(0, n_groups, step), disable=not progress, desc="materializing X", unit="chunk"
        ):
            block = patterns[groups[start : start + step].ravel()].reshape(-1, C, N, N)
            block *= scale[start : start + step, None, None, None].astype(np.float32)
            writer.write(block)
            release_pages(patterns)


def _write_manifest_last(directory: Path, kind: type, **fields: Any) -> None:
    """Write the manifest of a finished build: its files, a fresh build id, the time."""
    from ptychodata import __version__

    manifest = kind(
        **fields,
        files={path.name: FileEntry.of(path) for path in sorted(directory.glob("*.npy"))},
        created=_now(),
        build_id=uuid.uuid4().hex,
        library_version=__version__,
    )
    write_manifest(directory, manifest)


def _split_groups(n_groups: int | None, sizes: list[int]) -> list[int | None]:
    """Share ``n_groups`` among experiments in proportion to their sizes (largest remainder)."""
    if n_groups is None:
        return [None] * len(sizes)
    total = sum(sizes)
    exact = [n_groups * size / total for size in sizes]
    counts = [math.floor(value) for value in exact]
    by_remainder = sorted(range(len(sizes)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in by_remainder[: n_groups - sum(counts)]:
        counts[i] += 1
    return [max(1, count) for count in counts]


def _experiment_seed(seed: int | None, experiment: ExperimentEntry) -> int | None:
    """Experiment 0 uses the config's seed as is (a one-source store equals ``grouped_data``);
    the others get independent seeds derived from (seed, experiment_id)."""
    if seed is None or experiment.experiment_id == 0:
        return seed
    return int(np.random.SeedSequence([seed, experiment.experiment_id]).generate_state(1)[0])


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
