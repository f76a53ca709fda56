"""Build stores: copy sources into a frames build once (or reference one in place), then
write groupings of it.

``prepare`` streams each source's patterns in chunks (bounded memory), hashes and checks
them while copying them in the build's encoding (:mod:`ptychodata.store._frames`), and
records per-pattern energies and amplitude sums so that any later grouping gets its
scale factors (§5) without reading a pattern again. A zero-copy build (``copy=False``)
streams the same way but writes no patterns: it records where they are. Every build
happens in a temporary directory under the slot's OS file lock, is renamed into the
slot's ``builds/`` when complete and becomes live when ``current`` is replaced
(layout: :mod:`ptychodata.store._layout`).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import math
import mmap
import os
import warnings
from collections import deque
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
from ptychodata.io._memory import is_memory_mapped
from ptychodata.normalize import checked_energies_and_sums, intensity_scale, scale_from_energies
from ptychodata.scan import ScanData, counts_to_amplitude
from ptychodata.summary import jsonable
from ptychodata.store._files import (
    NpyWriter,
    ensure_writable_directory,
    file_digest,
    iter_rows,
    new_hasher,
    release_pages,
    rows_per_chunk,
    write_npy,
)
from ptychodata.store._frames import FRAMES_DTYPES, FramesEncoding, decode_into, file_extent, map_patterns
from ptychodata.store._layout import (
    BuildSlot,
    CacheLayout,
    FrameFile,
    GroupingFile,
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
    PatternsEntry,
    SourceEntry,
    check_files,
    read_manifest,
    stable_key,
    write_manifest,
)

__all__ = ["default_cache_dir", "prepare"]

_CHUNK_BYTES = 32 << 20
_RING = 4  # pattern chunks in flight while streaming (read, converted/hashed, written)
_WORKERS = 2  # threads converting, checking and hashing chunks (NumPy and hashlib release the GIL)
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
    copy: bool = True,
    frames_dtype: str | None = None,
    direct_io: bool = True,
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
        With ``copy=False`` the source's hash is computed and recorded only when True.
    copy : bool
        False: do not copy the patterns; reference them where they are. Needs one file
        source whose patterns are an uncompressed ``.npz`` member, C-contiguous and
        little-endian, of a dtype a store can serve as is: float32 or float16 amplitudes,
        or (``intensity=True``) float32, uint16 or uint32 counts. The frames build records
        the file, offset, size and modification time; if the source changes, ``open_store``
        raises ``StoreError`` and ``prepare`` rebuilds. Energies and amplitude sums are
        still computed (streamed) here.
    frames_dtype : {None, "float32", "float16", "bfloat16", "uint16", "uint32"}
        How a copy stores the patterns (default float32 amplitudes): float16/bfloat16
        amplitudes (rounded; half the bytes), or uint16/uint32 whole counts (lossless, with
        ``intensity=True``). Batches convert back to float32 X in the gather. With
        ``copy=False`` it must name the source's own dtype, if given.
    direct_io : bool
        True (default): write the patterns (and a materialized X) past the page cache
        (``O_DIRECT``) where the file system allows it, else through it. A one-time bulk
        write then neither evicts what the cache holds nor pays the kernel's cost of caching
        it; the first pass over a new store reads its patterns from disk. False: write
        through the page cache (the new store is then cached while memory lasts).

    Returns
    -------
    Store
        Opened on the grouping build this call found or made.
    """
    if frames_dtype is not None and frames_dtype not in FRAMES_DTYPES:
        raise ParameterError(f"frames_dtype={frames_dtype!r}; expected one of {FRAMES_DTYPES} or None")
    if copy:
        FramesEncoding.for_copy(frames_dtype, bool(intensity))  # refuse impossible requests before any work
    listed = _as_list(sources)
    if not copy:
        _check_zero_copy_sources(listed)
    layout = CacheLayout(ensure_writable_directory(Path(cache_dir) if cache_dir is not None else default_cache_dir()))
    options = dict(load_options or {})
    if "intensity" in options:
        raise ParameterError("pass intensity= to prepare itself, not inside load_options")
    # Counts stored as counts (uint frames, or referenced in place) reach the stream raw.
    counts_stored = bool(intensity) and (frames_dtype in ("uint16", "uint32") or not copy)
    handles = [_Source.open(source, intensity, options, counts_stored=counts_stored) for source in listed]
    storing = {"copy": bool(copy), "frames_dtype": frames_dtype}
    frames_key = stable_key(
        "frames", SCHEMA_VERSION, intensity, _options_identity(options), storing,
        [handle.identity() for handle in handles],
    )
    frames_slot = layout.frames_slot(frames_key)
    grouping_slot = layout.grouping_slot(frames_key, stable_key("grouping", config.to_dict(), materialize))
    for attempt in range(_ATTEMPTS):
        try:
            return _prepare_once(frames_slot, grouping_slot, handles, config, intensity, materialize, progress, verify,
                                 storing, direct_io)
        except StoreNotFoundError:  # removed (e.g. 'ptychodata cache remove') while being prepared: again
            if attempt == _ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def _prepare_once(
    frames_slot: BuildSlot,
    grouping_slot: BuildSlot,
    handles: list[_Source],
    config: GroupingConfig,
    intensity: bool | None,
    materialize: bool,
    progress: bool,
    verify: bool,
    storing: dict[str, Any],
    direct_io: bool,
):
    from ptychodata.store._store import Store

    _ensure_frames(frames_slot, handles, intensity, verify, progress, storing, direct_io)
    frames_id, frames_lock = open_current(frames_slot)
    try:
        with file_lock(grouping_slot.lock):
            grouping_slot.remove_temporaries()
            grouping_id = _reusable_grouping(grouping_slot, frames_id)
            built = grouping_id is None
            if built:
                try:
                    grouping_id = _build_grouping(
                        grouping_slot, frames_slot, frames_id, config, materialize, progress, direct_io
                    )
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


def _check_zero_copy_sources(sources: list[Any]) -> None:
    """What ``copy=False`` needs before any file is opened: one source, a file."""
    if len(sources) != 1:
        raise ParameterError(
            f"copy=False references one source file's patterns in place; got {len(sources)} sources "
            "(prepare them with copy=True, or one at a time)"
        )
    if isinstance(sources[0], ScanData):
        raise ParameterError("copy=False needs a source file to reference; got an in-memory ScanData (save it "
                             "with ScanData.save first, or use copy=True)")


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
        counts_stored: bool = False,
    ):
        self.path, self.size, self.mtime_ns = path, size, mtime_ns
        self.intensity = intensity
        self.options = options or {}
        # The stream takes the square root itself: an in-memory scan of counts, or a file
        # whose counts are stored as counts (read raw, not converted at load).
        self.stream_counts = bool(intensity) and (path is None or counts_stored)
        self._scan = scan
        self.known_hash = None if scan is None else content_hash(scan)

    @classmethod
    def open(cls, source: Any, intensity: bool | None, options: dict[str, Any], *, counts_stored: bool) -> _Source:
        if isinstance(source, ScanData):
            return cls(None, None, None, source, intensity=intensity)
        path = Path(source).expanduser().resolve()
        stat = _stat_source(path)
        return cls(
            str(path), stat.st_size, stat.st_mtime_ns, intensity=intensity, options=options, counts_stored=counts_stored
        )

    @property
    def scan(self) -> ScanData:
        """The scan as amplitudes (file sources are converted by :meth:`ScanData.load`)."""
        if self._scan is None:
            intensity = False if self.stream_counts else self.intensity  # raw counts for the stream
            with warnings.catch_warnings():
                if self.stream_counts:  # "whole numbers: counts?" is the point here, not news
                    warnings.simplefilter("ignore", UserWarning)
                self._scan = ScanData.load(self.path, check_values=False, intensity=intensity, **self.options)
        return self._scan

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
    dtype and bytes, patterns as stored in the source) and its metadata.

    Large arrays are hashed as SHA-256 digests of fixed row chunks (computed on two
    threads), fed in order to one BLAKE2b hasher with the shapes, dtypes and small arrays.
    """
    hasher = _hash_small_arrays(scan)
    _hash_header(hasher, "diffraction", scan.diffraction)
    digests = _row_digests(scan.diffraction)
    for digest in tqdm(digests, disable=not progress, desc="hashing", unit="chunk"):
        hasher.update(digest)
    return hasher.hexdigest()


def _hash_header(hasher, name: str, array: np.ndarray) -> None:
    hasher.update(json.dumps([name, list(array.shape), np.dtype(array.dtype).str]).encode())


def _chunk_digest(chunk: np.ndarray) -> bytes:
    """SHA-256 of a chunk's bytes (with the CPU's SHA extensions, about three times
    BLAKE2b's speed: hashing is most of ``prepare``'s work beyond the copy)."""
    return hashlib.sha256(memoryview(np.ascontiguousarray(chunk)).cast("B")).digest()


def _chunk_rows(array: np.ndarray) -> int:
    """Rows of ``array`` per hashed (and streamed) chunk: fixed by the row size alone."""
    return rows_per_chunk(array[:1].nbytes if array.ndim else array.nbytes, _CHUNK_BYTES)


def _row_digests(array: np.ndarray) -> Iterator[bytes]:
    """SHA-256 digests of ``array``'s row chunks, in order, computed by two threads (a
    memmap is read chunk by chunk and its pages released, so RSS stays at a few chunks)."""
    if array.ndim == 0:
        yield _chunk_digest(array.reshape(1))
        return
    if array.nbytes <= _CHUNK_BYTES:
        yield _chunk_digest(array)
        return
    rows = _chunk_rows(array)
    if is_memory_mapped(array):  # copies, the pages released after each (a view of a memmap too)
        chunks = iter_rows(array, rows)
    else:
        chunks = ((start, array[start : start + rows]) for start in range(0, array.shape[0], rows))
    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        window: deque = deque()
        for _, chunk in chunks:
            window.append(pool.submit(_chunk_digest, chunk))
            if len(window) > _WORKERS:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()


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
        "Y": scan.Y,
    }
    for name, array in fields.items():
        if array is None:
            hasher.update(f"{name}:none".encode())
            continue
        _hash_header(hasher, name, array)
        for digest in _row_digests(array):
            hasher.update(digest)
    hasher.update(json.dumps(dict(scan.metadata), sort_keys=True, default=str).encode())
    return hasher


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


def _ensure_frames(
    slot: BuildSlot,
    handles: list[_Source],
    intensity: bool | None,
    verify: bool,
    progress: bool,
    storing: dict[str, Any],
    direct_io: bool,
) -> None:
    """Make the frames slot's live build match ``handles``, building a new one if needed."""
    with file_lock(slot.lock):
        slot.remove_temporaries()
        if _frames_current(_live_manifest(slot, FrameManifest), handles, verify):
            return
        with slot.new_build() as (build_id, directory):
            _build_frames(directory, slot.frames_key, build_id, handles, intensity, progress, storing, verify, direct_io)
        slot.publish(build_id)
        _collect_frames(slot)


def _frames_current(manifest: FrameManifest | None, handles: list[_Source], verify: bool) -> bool:
    """Whether the live frames build was made from exactly these sources as they are now."""
    if manifest is None or manifest.patterns.changed() is not None:
        return False
    recorded = [experiment.source for experiment in manifest.experiments]
    if len(recorded) != len(handles):
        return False
    for entry, handle in zip(recorded, handles):
        if entry.path != handle.path or (entry.path is None and entry.content_hash != handle.known_hash):
            return False
        if entry.changed() is not None:
            return False
        # A zero-copy build made without verify=True has no hash: verify=True rebuilds it.
        if verify and entry.path is not None and file_digest(entry.path) != entry.content_hash:
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
def _build_frames(
    directory: Path,
    key: str,
    build_id: str,
    handles: list[_Source],
    intensity: bool | None,
    progress: bool,
    storing: dict[str, Any],
    verify: bool,
    direct_io: bool,
) -> None:
    sizes = {handle.scan.N for handle in handles}
    if len(sizes) > 1:
        found = ", ".join(f"{h.name}: N={h.scan.N}" for h in handles)
        raise ScanDataError(f"sources have different pattern sizes ({found}); a store needs one N")
    N = sizes.pop()
    n_total = sum(handle.scan.n_points for handle in handles)
    if storing["copy"]:
        encoding = FramesEncoding.for_copy(storing["frames_dtype"], bool(intensity))
        reference = None
    else:
        encoding, reference = _zero_copy_reference(handles[0], bool(intensity), storing["frames_dtype"])
    experiments = []
    start = 0
    desc = "copying patterns" if reference is None else "reading patterns (zero-copy)"
    with (
        tqdm(total=n_total, disable=not progress, desc=desc, unit="pattern", unit_scale=True) as bar,
        NpyWriter(directory / npy_name(FrameFile.ENERGIES), (n_total,), np.float64) as energies,
        NpyWriter(directory / npy_name(FrameFile.AMPLITUDE_SUMS), (n_total,), np.float64) as sums,
        (
            NpyWriter(directory / npy_name(FrameFile.PATTERNS), (n_total, N, N), encoding.storage, direct=direct_io)
            if reference is None
            else contextlib.nullcontext()
        ) as patterns,
    ):
        for experiment_id, handle in enumerate(handles):
            # A file is identified by its bytes on disk (hashed beside the stream, compressed
            # bytes too), an in-memory scan by the hash of its arrays (computed on opening).
            digesting = handle.path is not None and (reference is None or verify)
            with ThreadPoolExecutor(max_workers=1) as hashing:
                on_disk = hashing.submit(file_digest, handle.path) if digesting else None
                _stream_patterns(handle, encoding, bar, patterns, energies, sums)
                digest = on_disk.result() if on_disk is not None else handle.known_hash
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
        with NpyWriter(directory / npy_name(FrameFile.Y), (n_total, N, N), np.complex64, direct=direct_io) as writer:
            for scan in scans:
                for _, chunk in iter_rows(scan.Y, rows_per_chunk(8 * N * N, _CHUNK_BYTES)):
                    writer.write(chunk)
    file, offset = reference if reference is not None else (None, 0)
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
        patterns=PatternsEntry(
            dtype=encoding.dtype,
            values=encoding.values,
            storage=encoding.storage.str,
            conversion=encoding.conversion,
            shape=[n_total, N, N],
            file=file,
            offset=offset,
            size=None if file is None else handles[0].size,
            mtime_ns=None if file is None else handles[0].mtime_ns,
        ),
    )


def _zero_copy_reference(handle: _Source, intensity: bool, frames_dtype: str | None) -> tuple[FramesEncoding, tuple[str, int]]:
    """The encoding and (file, offset) under which a source's patterns can be served in
    place, or ``ParameterError`` naming what stands in the way."""
    patterns = handle.scan.diffraction
    where = f"{handle.name}: copy=False"
    extent = file_extent(patterns)
    if extent is None or Path(extent[0]).resolve() != Path(handle.path):
        raise ParameterError(
            f"{where} needs the patterns as an uncompressed .npz member (memory-mapped in place); they are "
            "compressed or were read into memory. Save the scan uncompressed (ScanData.save) or use copy=True"
        )
    if not patterns.flags.c_contiguous:
        raise ParameterError(f"{where}: the patterns are stored in Fortran order; expected C order. Use copy=True")
    stored = patterns.dtype
    if stored.byteorder == ">" or (stored.byteorder == "=" and not np.little_endian):
        raise ParameterError(f"{where}: the patterns are big-endian ({stored.str}); expected little-endian. Use copy=True")
    kinds = {"f4": "float32", "f2": "float16"} if not intensity else {"f4": "float32", "u2": "uint16", "u4": "uint32"}
    name = kinds.get(stored.str[1:])
    if name is None:
        allowed = ", ".join(kinds.values())
        what = "counts (intensity=True)" if intensity else "amplitudes"
        raise ParameterError(
            f"{where}: the patterns are {stored.name}; a store serves {what} in place only as {allowed}. "
            "Use copy=True (with frames_dtype= to choose how they are stored)"
        )
    if frames_dtype is not None and frames_dtype != name:
        raise ParameterError(
            f"{where}: frames_dtype={frames_dtype!r} but the source holds {name}; in place, the stored dtype "
            f"is the source's. Pass frames_dtype={name!r} or None, or use copy=True"
        )
    return FramesEncoding(name, "counts" if intensity else "amplitude"), (str(Path(handle.path)), extent[1])


class _RowReader:
    """Row ranges of a pattern array, without growing this process's resident memory.

    A whole memmap of a file is served as views of its pages (no copy: the hash, the checks
    and the write read the page cache directly, and each range's pages are dropped from
    this process once its chunk is written); any other array is copied into the caller's
    buffer (a memmap's pages released after each copy).
    """

    def __init__(self, array: np.ndarray):
        self.array = array
        self.row_bytes = int(array[:1].nbytes)
        self._mapping = None
        if file_extent(array) is not None and array.flags.c_contiguous:
            self._mapping = array._mmap  # the mmap starts at the allocation boundary below the offset
            self._first = int(array.offset) % mmap.ALLOCATIONGRANULARITY

    @property
    def maps(self) -> bool:
        return self._mapping is not None

    @property
    def fresh(self) -> bool:
        """Reads return new arrays that nothing else holds (a lazy, prepared source): use
        them as they are, no copy into a ring buffer."""
        return bool(getattr(self.array, "returns_fresh_arrays", False))

    def view(self, start: int, stop: int) -> np.ndarray:
        return self.array[start:stop].view(np.ndarray)

    def release(self, start: int, stop: int) -> None:
        """Drop the pages of rows [start, stop) from this process (they stay in the page cache)."""
        if self._mapping is None:
            return
        first = self._first + start * self.row_bytes
        begin = first - first % mmap.PAGESIZE
        with contextlib.suppress(ValueError, OSError):
            self._mapping.madvise(mmap.MADV_DONTNEED, begin, self._first + stop * self.row_bytes - begin)

    def read(self, start: int, out: np.ndarray) -> None:
        np.copyto(out, self.array[start : start + len(out)])
        release_pages(self.array)


def _stream_patterns(
    handle: _Source,
    encoding: FramesEncoding,
    bar: tqdm,
    patterns: NpyWriter | None,
    energies: NpyWriter,
    sums: NpyWriter,
) -> None:
    """Stream one source's patterns through the store: per chunk, check them, record Σ A²
    and Σ A (§5 scales of any later grouping, ptycho_torch's constants) and, for a copy,
    write them in the stored encoding.

    At most ``_RING`` chunks are in flight: this thread hands out views of a memory-mapped
    source (or fills a ring of reused buffers from any other array); two worker threads
    convert and check the chunks, and one writer thread writes them in order, so reading,
    computing and writing overlap (NumPy and file writes release the GIL). A chunk's pages are released, or its buffer reused, once it is written. The
    first bad pattern (in file order) is the one reported.
    """
    scan = handle.scan
    source = scan.diffraction
    where = f"{handle.name}: key 'diffraction'"
    hint = "" if handle.intensity else " (counts? pass intensity=True)"
    rows = _chunk_rows(source)
    n_points = source.shape[0]
    copying = patterns is not None  # else zero-copy: the source's own bytes are what is served
    decode = copying and encoding.values == "amplitude" and not encoding.is_identity

    def convert(start: int, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if handle.stream_counts:
            amplitude = counts_to_amplitude(raw, source=where, first_pattern=start)
        else:
            amplitude = raw.astype(np.float32, copy=False)
        stored = encoding.encode(raw, amplitude, start, f"{where}: ") if copying else raw
        if decode:  # the energies of what is served, not of what was rounded away
            amplitude = np.empty(stored.shape, np.float32)
            decode_into(encoding, stored, amplitude)
        chunk_energy, chunk_sums = checked_energies_and_sums(
            amplitude, np.arange(start, start + len(amplitude)), where=f"{where}: ", hint=hint
        )
        return stored, chunk_energy, chunk_sums

    def write(converted) -> None:
        stored, chunk_energy, chunk_sums = converted.result()
        if patterns is not None:
            patterns.write(stored)
        energies.write(chunk_energy)
        sums.write(chunk_sums)

    reader = _RowReader(source)
    buffers: list[np.ndarray] = []
    with ThreadPoolExecutor(max_workers=_WORKERS) as workers, ThreadPoolExecutor(max_workers=1) as writer:
        in_flight: deque = deque()

        def finish_oldest() -> None:
            written, span = in_flight.popleft()
            written.result()
            reader.release(*span)

        for k, start in enumerate(range(0, n_points, rows)):
            if len(in_flight) == _RING:
                finish_oldest()
            stop = min(start + rows, n_points)
            if reader.maps:
                raw = reader.view(start, stop)
            elif reader.fresh:
                raw = np.asarray(source[start:stop])
            else:
                if len(buffers) < _RING:
                    buffers.append(np.empty((rows, *source.shape[1:]), source.dtype))
                raw = buffers[k % _RING][: stop - start]
                reader.read(start, raw)
            converted = workers.submit(convert, start, raw)
            in_flight.append((writer.submit(write, converted), (start, stop)))
            bar.update(len(raw))
        while in_flight:
            finish_oldest()


# ---------------------------------------------------------------------- groupings
def _build_grouping(
    slot: BuildSlot,
    frames_slot: BuildSlot,
    frames_id: str,
    config: GroupingConfig,
    materialize: bool,
    progress: bool,
    direct_io: bool,
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
            local = group(np.stack([x[sl], y[sl]], axis=1), experiment_config)
        except ScanDataError as exc:
            raise ScanDataError(f"{where}{exc}") from None
        # The patterns used and how often, in index order (np.unique's result, without its sort).
        multiplicity = np.bincount(local.ravel(), minlength=experiment.n_points)
        used = np.flatnonzero(multiplicity)
        scales.append(scale_from_energies(energies[used + experiment.start], multiplicity[used], N=frames.N, where=where))
        local += experiment.start
        groups = local
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
            _materialize_X(
                directory, frames_dir, frames, groups, np.asarray(scales)[experiment_of_group], progress, direct_io
            )
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


def _materialize_X(
    directory: Path,
    frames_dir: Path,
    frames: FrameManifest,
    groups: np.ndarray,
    scale: np.ndarray,
    progress: bool,
    direct_io: bool,
):
    patterns = map_patterns(frames_dir, frames.patterns)
    encoding = FramesEncoding.of(frames.patterns)
    n_groups, C = groups.shape
    N = patterns.shape[-1]
    step = rows_per_chunk(4 * C * N * N, _CHUNK_BYTES)
    with NpyWriter(directory / npy_name(GroupingFile.X), (n_groups, C, N, N), np.float32, direct=direct_io) as writer:
        for start in tqdm(range(0, n_groups, step), disable=not progress, desc="materializing X", unit="chunk"):
            if encoding.is_identity:
                block = patterns[groups[start : start + step].ravel()].reshape(-1, C, N, N)
                block *= scale[start : start + step, None, None, None].astype(np.float32)
            else:
                members = groups[start : start + step]
                block = np.empty((len(members), C, N, N), np.float32)
                factor = np.repeat(scale[start : start + step].astype(np.float32), C)[:, None, None]
                decode_into(encoding, patterns[members.ravel()], block.reshape(-1, N, N), factor)
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
