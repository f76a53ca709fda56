"""``prepare``: find or make the store of some sources and a grouping, and open it.

A store is a frames build (the sources' patterns copied once, or referenced in place:
:mod:`ptychodata.store._frames_build`) and grouping builds of it
(:mod:`ptychodata.store._grouping_build`). This module decides what can be reused: a
file source is identified by its path, size and modification time (and, with
``verify=True``, a hash of its bytes), an in-memory scan by the hash of its arrays
(:mod:`ptychodata.store._hashing`). Every build happens in a temporary directory under
the slot's OS file lock, is renamed into the slot's ``builds/`` when complete and becomes
live when ``current`` is replaced (directories: :mod:`ptychodata.store._cache_paths`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ptychodata.errors import ParameterError, StoreNotFoundError
from ptychodata.grouping import GroupingConfig
from ptychodata.io import LoadOptions
from ptychodata.scan import ScanData
from ptychodata.store._build_options import BuildOptions
from ptychodata.store._cache import collect_builds, collect_frames, live_manifest
from ptychodata.store._cache_paths import BuildSlot, CachePaths, collects_implicitly, file_lock, open_current
from ptychodata.store._files import ensure_writable_directory, file_digest
from ptychodata.store._frames import FramesEncoding, canonical_frames_dtype
from ptychodata.store._frames_build import build_frames, frames_bytes
from ptychodata.store._grouping_build import GroupsAhead, build_grouping
from ptychodata.store._manifest import SCHEMA_VERSION, FrameManifest, GroupingManifest, is_sound, stable_key
from ptychodata.store._sources import Source, open_sources
from ptychodata.store._store import Store

__all__ = ["default_cache_dir", "prepare"]

_ATTEMPTS = 3  # a frames build removed under a grouping build: start again


def default_cache_dir() -> Path:
    """``$PTYCHODATA_CACHE``, else ``$XDG_CACHE_HOME/ptychodata``, else ``~/.cache/ptychodata``."""
    if os.environ.get("PTYCHODATA_CACHE"):
        return Path(os.environ["PTYCHODATA_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ptychodata"


def prepare(
    sources: str | os.PathLike | ScanData | Sequence[str | os.PathLike | ScanData],
    config: GroupingConfig | Callable[[str], GroupingConfig],
    *,
    cache_dir: str | os.PathLike | None = None,
    intensity: bool | None = None,
    load_options: Mapping[str, Any] | None = None,
    materialize: bool = False,
    progress: bool = True,
    verify: bool = False,
    copy: bool = True,
    frames_dtype: str | type | np.dtype | None = None,
    direct_io: bool | None = None,
):
    """Prepare (or reuse) the store of ``sources`` grouped by ``config`` and open it.

    Every build is immutable and has its own id: a changed source gives a new frames
    build, made beside the old one and then made live by replacing the ``current``
    pointer atomically (see :mod:`ptychodata.store._cache_paths`). Readers of the old build
    keep it until they close; it is deleted by a later ``prepare`` once no reader holds
    it, or by ``ptychodata cache``.

    Parameters
    ----------
    sources : path, ScanData, or a list of them
        Each source is one experiment; grouping never crosses experiments.
    config : GroupingConfig or callable
        The grouping; or, for one file source, a function of the SHA-256 (hex) of the file's
        bytes that returns it, so that a grouping can depend on what a scan is (as a
        dataset's seeds do). The hash is the one the frames build computes while it copies
        the patterns (a build found current gives the hash it recorded), so the file is not
        read an extra time.
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
    progress : bool or callable
        Show tqdm progress bars on long steps. A callable is called instead as
        ``progress(done, total)`` on the preparing thread after each chunk of patterns a
        frames build reads (``done`` of ``total`` patterns), e.g. to report progress
        elsewhere; an exception it raises ends the build, nothing published.
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
        How a copy stores the patterns (default float32 amplitudes), as a name, a NumPy
        type (``numpy.uint16``) or a dtype, all making the same store: float16/bfloat16
        amplitudes (rounded; half the bytes), or uint16/uint32 whole counts (lossless, with
        ``intensity=True``). Batches convert back to float32 X in the gather. With
        ``copy=False`` it must name the source's own dtype, if given.
    direct_io : bool, optional
        Whether the patterns (and a materialized X or stored patches) are written past the
        page cache (``O_DIRECT``, where the file system allows it). Default: when the file
        is larger than half the memory available, so the cache could not keep it anyway; a
        smaller store is written through the cache and its first epoch reads from memory.
        True: always (a one-time bulk write neither evicts what the cache holds nor pays
        the kernel's cost of caching it; the first pass over the new store reads it from
        disk). False: never.

    Returns
    -------
    Store
        Opened on the grouping build this call found or made.

    Raises
    ------
    SourceChangedError
        A source file was rewritten, replaced, truncated or removed while it was read
        (its identity, size and times are checked before every chunk and after the last
        read, and it is read with ``pread``, never through a map that a shrinking file
        would turn into ``SIGBUS``); nothing is published.
    DiskFullError
        The cache's file system has less free space than the build needs (checked
        before it starts), or filled during it; the partial build is removed.
    StoreCorruptError
        A store this call must read (the live frames build a grouping is made from) was
        edited or damaged in a way a rebuild does not repair.
    """
    frames_dtype = canonical_frames_dtype(frames_dtype)
    if copy:
        FramesEncoding.for_copy(frames_dtype, bool(intensity))  # refuse impossible requests before any work
        if frames_dtype == "float32":
            frames_dtype = None  # the default copy: one store however it is asked for
    options = BuildOptions(intensity, bool(copy), frames_dtype, direct_io, materialize, progress, verify)
    if load_options is not None and "intensity" in load_options:
        raise ParameterError("pass intensity= to prepare itself, not inside load_options")
    parsed = LoadOptions.from_mapping(load_options or {})
    loading = parsed.changed()
    handles = open_sources(sources, intensity, loading, copy=options.copy, counts_stored=options.counts_stored)
    paths = CachePaths(ensure_writable_directory(Path(cache_dir) if cache_dir is not None else default_cache_dir()))
    storing = {"copy": options.copy, "frames_dtype": frames_dtype}
    frames_key = stable_key(
        "frames", SCHEMA_VERSION, intensity, parsed.identity(), storing,
        [handle.identity() for handle in handles],
    )
    if callable(config) and (len(handles) != 1 or handles[0].path is None):
        raise ParameterError("a grouping given as a function of the file's SHA-256 needs exactly one file source")
    frames_slot = paths.frames_slot(frames_key)
    for attempt in range(_ATTEMPTS):
        try:
            return _prepare_once(paths, frames_slot, handles, config, options)
        except StoreNotFoundError:  # removed (e.g. 'ptychodata cache remove') while being prepared: again
            if attempt == _ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def _prepare_once(
    paths: CachePaths, frames_slot: BuildSlot, handles: list[Source],
    config: GroupingConfig | Callable[[str], GroupingConfig], options: BuildOptions,
) -> Store:
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ptychodata-grouping") as grouping_pool:
        hashed = None
        if callable(config):  # known once the frames build has hashed the file: grouped after it
            _ensure_frames(frames_slot, handles, options, grouping_pool, None)
            hashed, digest = _file_sha256(frames_slot)
            config, ahead = config(digest), None
        else:
            ahead = _ensure_frames(frames_slot, handles, options, grouping_pool, config)
        grouping_key = stable_key("grouping", config.to_dict(), options.materialize)
        grouping_slot = paths.grouping_slot(frames_slot.frames_key, grouping_key)
        store = _group_frames(frames_slot, grouping_slot, config, options, ahead)
    if hashed is not None and store.frames_build_id != hashed:  # replaced meanwhile (a changed source)
        store.close()
        raise StoreNotFoundError(f"{frames_slot.path}: the live build changed while it was grouped")
    return store


def _file_sha256(slot: BuildSlot) -> tuple[str, str]:
    """(build id, SHA-256 of its one file source) of the slot's live frames build: the hash the
    build recorded, or (a zero-copy build made without ``verify``) one computed here."""
    manifest = live_manifest(slot, FrameManifest)
    if manifest is None:
        raise StoreNotFoundError(f"{slot.path}: no live frames build to group")
    entry = manifest.experiments[0].source
    if entry.content_hash is not None:
        return manifest.build_id, entry.content_hash
    digest = file_digest(entry.path)
    if entry.changed() is not None:  # rewritten while hashed: the next attempt rebuilds
        raise StoreNotFoundError(f"{entry.path}: changed while it was hashed")
    return manifest.build_id, digest


def _group_frames(
    frames_slot: BuildSlot,
    grouping_slot: BuildSlot,
    config: GroupingConfig,
    options: BuildOptions,
    ahead: GroupsAhead | None,
) -> Store:
    """Open the grouping of the live frames build, building it first if there is none."""
    frames_id, frames_lock = open_current(frames_slot)
    try:
        with file_lock(grouping_slot.lock):
            grouping_slot.remove_temporaries()
            grouping_id = _reusable_grouping(grouping_slot, frames_id)
            built = grouping_id is None
            if built:
                try:
                    grouping_id = build_grouping(grouping_slot, frames_slot, frames_id, config, options, ahead)
                except FileNotFoundError as exc:  # only a forced removal deletes a build a reader holds
                    if frames_slot.build_dir(frames_id).is_dir():
                        raise
                    raise StoreNotFoundError(f"{frames_slot.path}: removed while a grouping was built") from exc
            store = Store.open_build(grouping_slot.path, grouping_id)
            if built and collects_implicitly(grouping_slot.cache_root):
                collect_builds(grouping_slot, keep={grouping_id})
    finally:
        frames_lock.close()
    if built and collects_implicitly(frames_slot.cache_root):
        with file_lock(frames_slot.lock):
            collect_frames(frames_slot)
    return store


def _ensure_frames(
    slot: BuildSlot, handles: list[Source], options: BuildOptions, grouping_pool: Executor,
    config: GroupingConfig | None,
) -> GroupsAhead | None:
    """Make the frames slot's live build match ``handles``, building a new one if needed.

    With a ``config``, a new build's groups are computed on ``grouping_pool`` while its
    patterns are streamed; they are returned (None when the live build was current or
    ``config`` is None)."""
    with file_lock(slot.lock):
        slot.remove_temporaries()
        if _frames_current(live_manifest(slot, FrameManifest), handles, options.verify):
            return None
        ahead = None
        if config is not None:
            positions = [np.stack([handle.scan.xcoords, handle.scan.ycoords], axis=1) for handle in handles]
            ahead = GroupsAhead.start(grouping_pool, positions, [handle.name for handle in handles], config)
        identity = [handle.state(digest=options.verify) for handle in handles]
        needs = frames_bytes(handles, options)
        with slot.new_build(identity, sound=_sound_frames, needs=needs) as (build_id, directory):
            build_frames(directory, slot.frames_key, build_id, handles, options)
        slot.publish(build_id)
        if collects_implicitly(slot.cache_root):
            collect_frames(slot)
    return ahead


def _sound_frames(directory: Path) -> bool:
    return is_sound(directory, FrameManifest)


def _frames_current(manifest: FrameManifest | None, handles: list[Source], verify: bool) -> bool:
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
    manifest = live_manifest(slot, GroupingManifest)
    return manifest.build_id if manifest is not None and manifest.frames_build_id == frames_id else None
