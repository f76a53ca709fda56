"""Build stores: copy sources into a frames build once, then write groupings of it.

``prepare`` streams each source's patterns in chunks (bounded memory), hashes and checks
them while copying, and records per-pattern energies and amplitude sums so that any
later grouping gets its scale factors (§5) without reading a pattern again. Every build
happens in a temporary directory under the slot's OS file lock, is renamed into the
slot's ``builds/`` when complete and becomes live when ``current`` is replaced
(layout: :mod:`ptychodata.store._layout`).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ptychodata.coords import group_coords
from ptychodata.errors import ParameterError, ScanDataError, StoreError, StoreNotFoundError
from ptychodata.grouping import GroupingConfig, group
from ptychodata.normalize import checked_energies, intensity_scale, scale_from_energies
from ptychodata.scan import ScanData, counts_to_amplitude
from ptychodata.summary import jsonable
from ptychodata.store._files import (
    NpyWriter,
    ensure_writable_directory,
    iter_rows,
    new_hasher,
    release_pages,
    rows_per_chunk,
    write_npy,
)
from ptychodata.store._layout import (
    BuildSlot,
    CacheLayout,
    FrameFile,
    GroupingFile,
    ReaderLock,
    file_lock,
    npy_files,
    npy_name,
    object_stem,
    open_current,
)
from ptychodata.store._manifest import (
    SCHEMA_VERSION,
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
_ATTEMPTS = 3  # a frames build removed under a grouping build: start again


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
    intensity: bool | None = None,
    load_options: Mapping[str, Any] | None = None,
    materialize: bool = False,
    progress: bool = True,
    verify: bool = False,
):
    """Prepare (or reuse) the store of ``sources`` grouped by ``config`` and open it.

    Every build is immutable and has its own id: a changed source gives a new frames
    build, made beside the old one and then made live by replacing the ``current``
    pointer atomically (see :mod:`ptychodata.store._layout`). Readers of the old build
    keep it until they close; it is deleted by a later ``prepare`` once no reader holds
    it, or by ``ptychodata cache``.

    Parameters
    ----------
    sources : path, ScanData, or a list of them
        Each source is one experiment; grouping never crosses experiments.
    config : GroupingConfig
    cache_dir : path, optional
        Where stores live; default :func:`default_cache_dir`.
    intensity : bool, optional
        Whether the sources hold counts (stored as sqrt(counts)) or amplitudes; default:
        what each file's format and content say (:meth:`ScanData.load`'s counts rule). For
        an in-memory ``ScanData``, ``True`` means its ``diffraction`` holds counts.
    load_options : dict, optional
        Options of :meth:`ScanData.load` for file sources (``keys``, ``crop``, ``bin``,
        ``pixel_size``, ``mask``, ...); part of the store's key, so other options make
        another store.
    materialize : bool
        Also write the grouped, scaled (B, C, N, N) X array (for slow random reads).
    progress : bool
        Show tqdm progress bars on long steps.
    verify : bool
        Re-hash file sources and rebuild if their content differs from the store's record.

    Returns
    -------
    Store
        Opened on the grouping build this call found or made.
    """
    layout = CacheLayout(ensure_writable_directory(Path(cache_dir) if cache_dir is not None else default_cache_dir()))
    options = dict(load_options or {})
    if "intensity" in options:
        raise ParameterError("pass intensity= to prepare itself, not inside load_options")
    handles = [_Source.open(source, intensity, options) for source in _as_list(sources)]
    frames_key = stable_key(
        "frames", SCHEMA_VERSION, intensity, _options_identity(options), [handle.identity() for handle in handles]
    )
    frames_slot = layout.frames_slot(frames_key)
    grouping_slot = layout.grouping_slot(frames_key, stable_key("grouping", config.to_dict(), materialize))
    for attempt in range(_ATTEMPTS):
        try:
            return _prepare_once(frames_slot, grouping_slot, handles, config, materialize, progress, verify)
        except StoreNotFoundError:  # removed (e.g. 'ptychodata cache remove') while being prepared: again
            if attempt == _ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def _prepare_once(
    frames_slot: BuildSlot,
    grouping_slot: BuildSlot,
    handles: list[_Source],
    config: GroupingConfig,
    materialize: bool,
    progress: bool,
    verify: bool,
):
    from ptychodata.store._store import Store

    _ensure_frames(frames_slot, handles, verify, progress)
    frames_id, frames_lock = open_current(frames_slot)
    try:
        with file_lock(grouping_slot.lock):
            grouping_slot.remove_temporaries()
            grouping_id = _reusable_grouping(grouping_slot, frames_id)
            built = grouping_id is None
            if built:
                try:
                    grouping_id = _build_grouping(grouping_slot, frames_slot, frames_id, config, materialize, progress)
                except FileNotFoundError as exc:  # only a forced removal deletes a build a reader holds
                    if frames_slot.build_dir(frames_id).is_dir():
                        raise
                    raise StoreNotFoundError(f"{frames_slot.path}: removed while a grouping was built") from exc
            store = Store.open_build(grouping_slot.path, grouping_id)
            if built:
                _collect_builds(grouping_slot, keep={grouping_id})
    finally:
        frames_lock.close()
    if built:
        with file_lock(frames_slot.lock):
            _collect_frames(frames_slot)
    return store


def _as_list(sources: Any) -> list[Any]:
    if isinstance(sources, (str, os.PathLike, ScanData)):
        return [sources]
    sources = list(sources)
    if not sources:
        raise ParameterError("prepare() needs at least one source")
    return sources


class _Source:
    """A source scan to copy: its identity now, its (memory-mapped or lazy) arrays when
    first needed.

    Reusing an up-to-date store only stats the file; the scan is opened for a build or
    a content check. An in-memory scan is identified by the hash of everything that
    reaches the store.
    """

    def __init__(
        self,
        path: str | None,
        size: int | None,
        mtime_ns: int | None,
        scan: ScanData | None = None,
        *,
        intensity: bool | None = None,
        options: dict[str, Any] | None = None,
    ):
        self.path, self.size, self.mtime_ns = path, size, mtime_ns
        self.intensity = intensity
        self.options = options or {}
        self._scan = scan
        self.known_hash = None if scan is None else content_hash(scan)

    @classmethod
    def open(cls, source: Any, intensity: bool | None, options: dict[str, Any]) -> _Source:
        if isinstance(source, ScanData):
            return cls(None, None, None, source, intensity=intensity)
        path = Path(source).expanduser().resolve()
        stat = _stat_source(path)
        return cls(str(path), stat.st_size, stat.st_mtime_ns, intensity=intensity, options=options)

    @property
    def scan(self) -> ScanData:
        """The scan as amplitudes (file sources are converted by :meth:`ScanData.load`)."""
        if self._scan is None:
            self._scan = ScanData.load(self.path, check_values=False, intensity=self.intensity, **self.options)
        return self._scan

    @property
    def holds_counts(self) -> bool:
        """An in-memory scan whose ``diffraction`` the caller says holds counts."""
        return self.path is None and bool(self.intensity)

    def identity(self) -> dict[str, Any]:
        return {"path": self.path} if self.path is not None else {"content_hash": self.known_hash}

    @property
    def name(self) -> str:
        return self.path or "in-memory scan"


def _options_identity(options: Mapping[str, Any]) -> dict[str, Any]:
    """Load options as JSON for the store key; arrays (a mask) by a hash of their content."""
    identity = {}
    for name, value in sorted(options.items()):
        if isinstance(value, np.ndarray):
            hasher = new_hasher()
            _hash_header(hasher, name, value)
            hasher.update(memoryview(np.ascontiguousarray(value)).cast("B"))
            value = {"array": hasher.hexdigest()}
        identity[name] = value
    return identity


def _stat_source(path: Path) -> os.stat_result:
    try:
        return path.stat()
    except FileNotFoundError:
        raise ScanDataError(f"{path}: no such file") from None


def content_hash(scan: ScanData, *, progress: bool = False) -> str:
    """The hash recorded for a source: every array that reaches the store (name, shape,
    dtype and bytes, patterns as stored in the source) and its metadata."""
    hasher = _hash_small_arrays(scan)
    _hash_header(hasher, "diffraction", scan.diffraction)
    for _, chunk in tqdm(_pattern_chunks(scan), disable=not progress, desc="hashing", unit="chunk"):
        hasher.update(memoryview(np.ascontiguousarray(chunk)).cast("B"))
    return hasher.hexdigest()


def _hash_header(hasher, name: str, array: np.ndarray) -> None:
    hasher.update(json.dumps([name, list(array.shape), np.dtype(array.dtype).str]).encode())


def _hash_small_arrays(scan: ScanData):
    """A hasher fed with everything of ``scan`` but its patterns."""
    hasher = new_hasher()
    fields = {
        "xcoords": scan.xcoords,
        "ycoords": scan.ycoords,
        "xcoords_start": scan.xcoords_start,
        "ycoords_start": scan.ycoords_start,
        "scan_index": scan.scan_index,
        "probe": scan.probe,
        "object": scan.object,
        "mask": scan.mask,
    }
    for name, array in fields.items():
        if array is None:
            hasher.update(f"{name}:none".encode())
            continue
        _hash_header(hasher, name, array)
        hasher.update(memoryview(np.ascontiguousarray(array)).cast("B"))
    if scan.Y is None:
        hasher.update(b"Y:none")
    else:
        _hash_header(hasher, "Y", scan.Y)
        for _, chunk in iter_rows(scan.Y, rows_per_chunk(scan.Y[:1].nbytes, _CHUNK_BYTES)):
            hasher.update(memoryview(np.ascontiguousarray(chunk)).cast("B"))
    hasher.update(json.dumps(dict(scan.metadata), sort_keys=True, default=str).encode())
    return hasher


def _pattern_chunks(scan: ScanData) -> Iterator[tuple[int, np.ndarray]]:
    return iter_rows(scan.diffraction, rows_per_chunk(scan.diffraction[:1].nbytes, _CHUNK_BYTES))


def _live_manifest(slot: BuildSlot, kind: type) -> FrameManifest | GroupingManifest | None:
    """The manifest of the slot's live build when it is complete, else None."""
    build_id = slot.current_id()
    if build_id is None:
        return None
    directory = slot.build_dir(build_id)
    try:
        manifest = read_manifest(directory, kind)
        check_files(directory, manifest.files)
    except StoreError:
        return None
    return manifest if manifest.build_id == build_id else None


def _ensure_frames(slot: BuildSlot, handles: list[_Source], verify: bool, progress: bool) -> None:
    """Make the frames slot's live build match ``handles``, building a new one if needed."""
    with file_lock(slot.lock):
        slot.remove_temporaries()
        if _frames_current(_live_manifest(slot, FrameManifest), handles, verify):
            return
        with slot.new_build() as (build_id, directory):
            _build_frames(directory, slot.frames_key, build_id, handles, progress)
        slot.publish(build_id)
        _collect_frames(slot)


def _frames_current(manifest: FrameManifest | None, handles: list[_Source], verify: bool) -> bool:
    """Whether the live frames build was made from exactly these sources as they are now."""
    if manifest is None:
        return False
    recorded = [experiment.source for experiment in manifest.experiments]
    if len(recorded) != len(handles):
        return False
    for entry, handle in zip(recorded, handles):
        if entry.path != handle.path or (entry.path is None and entry.content_hash != handle.known_hash):
            return False
        if entry.changed() is not None:
            return False
        if verify and entry.path is not None and content_hash(handle.scan) != entry.content_hash:
            return False
    return True


def _reusable_grouping(slot: BuildSlot, frames_id: str) -> str | None:
    manifest = _live_manifest(slot, GroupingManifest)
    return manifest.build_id if manifest is not None and manifest.frames_build_id == frames_id else None


def _collect_builds(slot: BuildSlot, keep: set[str]) -> None:
    """Delete the slot's builds that are not in ``keep`` and that no reader holds."""
    for build_id in slot.build_ids():
        if build_id not in keep:
            slot.remove_build_if_unread(build_id)


def _collect_frames(slot: BuildSlot) -> None:
    """Delete old frames builds that no reader holds and no live grouping was made from.
    Hold the frames slot's lock."""
    keep = {slot.current_id()}
    for grouping in slot.groupings():
        manifest = _live_manifest(grouping, GroupingManifest)
        if manifest is not None:
            keep.add(manifest.frames_build_id)
    _collect_builds(slot, keep)


# ---------------------------------------------------------------------- frames
def _build_frames(directory: Path, key: str, build_id: str, handles: list[_Source], progress: bool) -> None:
    sizes = {handle.scan.N for handle in handles}
    if len(sizes) > 1:
        found = ", ".join(f"{h.name}: N={h.scan.N}" for h in handles)
        raise ScanDataError(f"sources have different pattern sizes ({found}); a store needs one N")
    N = sizes.pop()
    n_total = sum(handle.scan.n_points for handle in handles)
    experiments = []
    start = 0
    with (
        tqdm(total=n_total, disable=not progress, desc="copying patterns", unit="pattern", unit_scale=True) as bar,
        NpyWriter(directory / npy_name(FrameFile.PATTERNS), (n_total, N, N), np.float32) as patterns,
        NpyWriter(directory / npy_name(FrameFile.ENERGIES), (n_total,), np.float64) as energies,
        NpyWriter(directory / npy_name(FrameFile.AMPLITUDE_SUMS), (n_total,), np.float64) as sums,
    ):
        for experiment_id, handle in enumerate(handles):
            digest = _copy_patterns(handle, patterns, energies, sums, bar)
            scan = handle.scan
            experiments.append(
                ExperimentEntry(
                    experiment_id=experiment_id,
                    source=SourceEntry(handle.path, handle.size, handle.mtime_ns, digest),
                    start=start,
                    stop=start + scan.n_points,
                    object_shape=None if scan.object is None else list(scan.object.shape),
                    nphotons=scan.nphotons,
                    has_Y=scan.Y is not None,
                    has_probe=scan.probe is not None,
                    has_mask=scan.mask is not None,
                    metadata=jsonable(dict(scan.metadata)),
                )
            )
            if scan.object is not None:
                write_npy(directory / npy_name(object_stem(experiment_id)), scan.object)
            start += scan.n_points
    scans = [handle.scan for handle in handles]
    columns = {
        FrameFile.XCOORDS: [s.xcoords for s in scans],
        FrameFile.YCOORDS: [s.ycoords for s in scans],
        FrameFile.XCOORDS_START: [s.xcoords_start for s in scans],
        FrameFile.YCOORDS_START: [s.ycoords_start for s in scans],
        FrameFile.SCAN_INDEX: [s.scan_index for s in scans],
        FrameFile.EXPERIMENT_ID: [np.full(s.n_points, e, np.int64) for e, s in enumerate(scans)],
    }
    for stem, parts in columns.items():
        write_npy(directory / npy_name(stem), np.concatenate(parts))
    if all(scan.probe is not None for scan in scans):
        write_npy(directory / npy_name(FrameFile.PROBES), np.stack([s.probe for s in scans]))
    if any(scan.mask is not None for scan in scans):
        masks = [np.ones((N, N), bool) if s.mask is None else s.mask for s in scans]
        write_npy(directory / npy_name(FrameFile.MASKS), np.stack(masks))
    if all(scan.Y is not None for scan in scans):
        with NpyWriter(directory / npy_name(FrameFile.Y), (n_total, N, N), np.complex64) as writer:
            for scan in scans:
                for _, chunk in iter_rows(scan.Y, rows_per_chunk(8 * N * N, _CHUNK_BYTES)):
                    writer.write(chunk)
    _write_manifest_last(
        directory,
        FrameManifest,
        key=key,
        build_id=build_id,
        N=N,
        n_patterns=n_total,
        intensity=handles[0].intensity,
        load_options=_options_identity(handles[0].options),
        experiments=experiments,
    )


def _copy_patterns(handle: _Source, patterns: NpyWriter, energies: NpyWriter, sums: NpyWriter, bar: tqdm) -> str:
    """Stream one source's patterns into the store; return its content hash.

    The main thread reads, converts and checks chunk k+1 while a writer thread hashes
    and writes chunk k (both release the GIL), so reading overlaps writing. At most two
    chunks are in memory. Per pattern, Σ A² and Σ A are recorded (§5 scales of any later
    grouping, ptycho_torch's constants) so no pattern is read again for them.
    """
    scan = handle.scan
    hasher = None
    if handle.known_hash is None:
        hasher = _hash_small_arrays(scan)
        _hash_header(hasher, "diffraction", scan.diffraction)
    where = f"{handle.name}: key 'diffraction'"

    def write(raw: np.ndarray, amplitude: np.ndarray, chunk_energy: np.ndarray) -> None:
        if hasher is not None:
            hasher.update(memoryview(np.ascontiguousarray(raw)).cast("B"))
        patterns.write(amplitude)
        energies.write(chunk_energy)
        sums.write(amplitude.sum(axis=(1, 2), dtype=np.float64))

    with ThreadPoolExecutor(max_workers=1) as writer:
        pending = None
        for start, raw in _pattern_chunks(scan):
            if handle.holds_counts:
                amplitude = counts_to_amplitude(raw, source=where, first_pattern=start)
            else:
                amplitude = raw.astype(np.float32, copy=False)
            chunk_energy = checked_energies(
                amplitude,
                np.arange(start, start + len(amplitude)),
                where=f"{where}: ",
                hint="" if handle.intensity else " (counts? pass intensity=True)",
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
    slot: BuildSlot,
    frames_slot: BuildSlot,
    frames_id: str,
    config: GroupingConfig,
    materialize: bool,
    progress: bool,
) -> str:
    """Build and publish a grouping of frames build ``frames_id``; return its build id.
    Hold the grouping slot's lock and a reader lock on the frames build."""
    frames_dir = frames_slot.build_dir(frames_id)
    frames = read_manifest(frames_dir, FrameManifest)
    if config.N is not None and config.N != frames.N:
        raise ParameterError(f"config N={config.N} but the store's patterns are {frames.N}×{frames.N}")
    x = np.load(frames_dir / npy_name(FrameFile.XCOORDS))
    y = np.load(frames_dir / npy_name(FrameFile.YCOORDS))
    energies = np.load(frames_dir / npy_name(FrameFile.ENERGIES), mmap_mode="r")
    n_groups = _split_groups(config.n_groups, [e.n_points for e in frames.experiments])
    all_groups, group_experiment, scales, photon_scales = [], [], [], []
    for experiment, count in zip(frames.experiments, n_groups):
        sl = slice(experiment.start, experiment.stop)
        experiment_config = replace(config, n_groups=count, seed=_experiment_seed(config.seed, experiment))
        where = f"{experiment.source.path or 'in-memory scan'}: "
        try:
            groups = group(np.stack([x[sl], y[sl]], axis=1), experiment_config) + experiment.start
        except ScanDataError as exc:
            raise ScanDataError(f"{where}{exc}") from None
        used, multiplicity = np.unique(groups, return_counts=True)
        scales.append(scale_from_energies(energies[used], multiplicity, N=frames.N, where=where))
        nphotons = config.nphotons if config.nphotons is not None else experiment.nphotons
        photon_scales.append(intensity_scale(nphotons, frames.N))
        all_groups.append(groups)
        group_experiment.append(np.full(len(groups), experiment.experiment_id, np.int64))
    groups = np.concatenate(all_groups)
    experiment_of_group = np.concatenate(group_experiment)
    x_start = np.load(frames_dir / npy_name(FrameFile.XCOORDS_START))
    y_start = np.load(frames_dir / npy_name(FrameFile.YCOORDS_START))
    with slot.new_build() as (build_id, directory):
        write_npy(directory / npy_name(GroupingFile.GROUPS), groups)
        write_npy(directory / npy_name(GroupingFile.GROUP_EXPERIMENT), experiment_of_group)
        for (xs, ys), (offsets_stem, relative_stem) in (
            ((x, y), (GroupingFile.COORDS_OFFSETS, GroupingFile.COORDS_RELATIVE)),
            ((x_start, y_start), (GroupingFile.COORDS_START_OFFSETS, GroupingFile.COORDS_START_RELATIVE)),
        ):
            coords = group_coords(xs, ys, groups)  # (B, 1, 2, C) layout of §3
            write_npy(directory / npy_name(offsets_stem), coords.offsets[:, 0, :, 0])  # (B, 2)
            write_npy(directory / npy_name(relative_stem), coords.relative[:, 0].transpose(0, 2, 1))  # (B, C, 2)
        if materialize:
            _materialize_X(directory, frames_dir, groups, np.asarray(scales)[experiment_of_group], progress)
        _write_manifest_last(
            directory,
            GroupingManifest,
            key=slot.key,
            build_id=build_id,
            frames_key=frames.key,
            frames_build_id=frames_id,
            config=config.to_dict(),
            n_groups=len(groups),
            C=int(groups.shape[1]),
            x_scale=scales,
            intensity_scale=photon_scales,
            materialized=materialize,
        )
    slot.publish(build_id)
    return build_id


def _materialize_X(directory: Path, frames_dir: Path, groups: np.ndarray, scale: np.ndarray, progress: bool):
    patterns = np.load(frames_dir / npy_name(FrameFile.PATTERNS), mmap_mode="r")
    n_groups, C = groups.shape
    N = patterns.shape[-1]
    step = rows_per_chunk(4 * C * N * N, _CHUNK_BYTES)
    with NpyWriter(directory / npy_name(GroupingFile.X), (n_groups, C, N, N), np.float32) as writer:
        for start in tqdm(range(0, n_groups, step), disable=not progress, desc="materializing X", unit="chunk"):
            block = patterns[groups[start : start + step].ravel()].reshape(-1, C, N, N)
            block *= scale[start : start + step, None, None, None].astype(np.float32)
            writer.write(block)
            release_pages(patterns)


def _write_manifest_last(directory: Path, kind: type, **fields: Any) -> None:
    """Write the manifest of a finished build (its files, the time): last, so its presence
    marks the build complete."""
    from ptychodata import __version__

    manifest = kind(
        **fields,
        files={path.name: FileEntry.of(path) for path in npy_files(directory)},
        created=_now(),
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
