"""Frames builds: a store's patterns (copied in the build's encoding, or referenced in
place), their energies and amplitude sums, positions, probes, masks and objects.

Patterns are streamed in chunks (bounded memory): read, converted and checked on worker
threads, written in order by a writer thread. The energies and amplitude sums recorded
here give every later grouping its §5 scales without reading a pattern again.
"""

from __future__ import annotations

import contextlib
import mmap
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ptychodata._runtime import iter_rows, jsonable, release_pages, usable_cores
from ptychodata.errors import ParameterError, ScanDataError
from ptychodata.io import LoadOptions
from ptychodata.normalize import checked_energies_and_sums
from ptychodata.scan import counts_to_amplitude
from ptychodata.store._build_options import BuildOptions
from ptychodata.store._cache_paths import FrameFile, npy_name, object_stem
from ptychodata.store._files import NpyWriter, file_digest, stream_rows, use_direct_io, write_npy
from ptychodata.store._frames import FramesEncoding, decode_into, file_extent
from ptychodata.store._manifest import (
    ExperimentEntry,
    FrameManifest,
    PatternsEntry,
    SourceEntry,
    write_manifest_last,
)
from ptychodata.store._sources import Source

__all__ = ["build_frames"]

# Threads converting and checking chunks (NumPy releases the GIL): 2, up to 4 where there
# are the cores (a zero-copy build, which only reads, then keeps pace with a read of the file).
_WORKERS = max(2, min(4, usable_cores()))
_RING = _WORKERS + 2  # pattern chunks in flight while streaming (read, converted, written)


def build_frames(
    directory: Path,
    key: str,
    build_id: str,
    handles: list[Source],
    options: BuildOptions,
) -> None:
    """Write the frames build of ``handles`` into ``directory`` (a new build's temporary
    directory): patterns (copied, or referenced in place with ``copy=False``), their
    energies and amplitude sums, positions, probes, masks, objects and patches, and the
    manifest last."""
    N, n_total = _pattern_shape(handles)
    if options.copy:
        encoding, reference = FramesEncoding.for_copy(options.frames_dtype, bool(options.intensity)), None
    else:
        encoding, reference = _zero_copy_reference(handles[0], bool(options.intensity), options.frames_dtype)
    experiments = _stream_sources(directory, handles, options, encoding, copying=reference is None, shape=(n_total, N))
    scans = [handle.scan for handle in handles]
    _write_positions(directory, scans)
    if all(scan.probe is not None for scan in scans):
        write_npy(directory / npy_name(FrameFile.PROBES), np.stack([s.probe for s in scans]))
    if any(scan.mask is not None for scan in scans):
        masks = [np.ones((N, N), bool) if s.mask is None else s.mask for s in scans]
        write_npy(directory / npy_name(FrameFile.MASKS), np.stack(masks))
    if all(scan.Y is not None for scan in scans):
        _write_patches(directory, scans, (n_total, N), options.direct_io)
    file, offset = reference if reference is not None else (None, 0)
    write_manifest_last(
        directory,
        FrameManifest,
        key=key,
        build_id=build_id,
        N=N,
        n_patterns=n_total,
        intensity=handles[0].intensity,
        load_options=LoadOptions(**handles[0].options).identity(),
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


def _pattern_shape(handles: list[Source]) -> tuple[int, int]:
    """(N, patterns of all sources), or ``ScanDataError`` naming each source's N when they differ."""
    sizes = {handle.scan.N for handle in handles}
    if len(sizes) > 1:
        found = ", ".join(f"{h.name}: N={h.scan.N}" for h in handles)
        raise ScanDataError(f"sources have different pattern sizes ({found}); a store needs one N")
    return sizes.pop(), sum(handle.scan.n_points for handle in handles)


def _stream_sources(
    directory: Path,
    handles: list[Source],
    options: BuildOptions,
    encoding: FramesEncoding,
    *,
    copying: bool,
    shape: tuple[int, int],
) -> list[ExperimentEntry]:
    """Stream every source's patterns through the build (energies, sums and, ``copying``,
    the patterns themselves), write each experiment's object, and return the experiments'
    entries. ``shape``: (patterns of all sources, N)."""
    n_total, N = shape
    experiments = []
    start = 0
    desc = "copying patterns" if copying else "reading patterns (zero-copy)"
    direct = copying and use_direct_io(options.direct_io, n_total * N * N * encoding.storage.itemsize)
    with (
        tqdm(total=n_total, disable=not options.progress, desc=desc, unit="pattern", unit_scale=True) as bar,
        NpyWriter(directory / npy_name(FrameFile.ENERGIES), (n_total,), np.float64) as energies,
        NpyWriter(directory / npy_name(FrameFile.AMPLITUDE_SUMS), (n_total,), np.float64) as sums,
        (
            NpyWriter(directory / npy_name(FrameFile.PATTERNS), (n_total, N, N), encoding.storage, direct=direct)
            if copying
            else contextlib.nullcontext()
        ) as patterns,
    ):
        for experiment_id, handle in enumerate(handles):
            # A file is identified by its bytes on disk (hashed beside the stream, compressed
            # bytes too), an in-memory scan by the hash of its arrays (computed on opening).
            digesting = handle.path is not None and (copying or options.verify)
            with ThreadPoolExecutor(max_workers=1) as hashing:
                on_disk = hashing.submit(file_digest, handle.path) if digesting else None
                _stream_patterns(handle, encoding, bar, patterns, energies, sums)
                digest = on_disk.result() if on_disk is not None else handle.known_hash
            experiments.append(_experiment_entry(experiment_id, handle, start, digest))
            if handle.scan.object is not None:
                write_npy(directory / npy_name(object_stem(experiment_id)), handle.scan.object)
            start += handle.scan.n_points
    return experiments


def _experiment_entry(experiment_id: int, handle: Source, start: int, digest: str | None) -> ExperimentEntry:
    scan = handle.scan
    return ExperimentEntry(
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


def _write_positions(directory: Path, scans: list) -> None:
    """Every pattern's positions, scan index and experiment, the sources one after another."""
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


def _write_patches(directory: Path, scans: list, shape: tuple[int, int], direct_io: bool | None) -> None:
    """The sources' ground-truth patches Y, streamed in row chunks. ``shape``: (patterns, N)."""
    n_total, N = shape
    direct = use_direct_io(direct_io, n_total * N * N * 8)
    with NpyWriter(directory / npy_name(FrameFile.Y), (n_total, N, N), np.complex64, direct=direct) as writer:
        for scan in scans:
            for _, chunk in iter_rows(scan.Y, stream_rows(scan.Y)):
                writer.write(chunk)


def _zero_copy_reference(handle: Source, intensity: bool, frames_dtype: str | None) -> tuple[FramesEncoding, tuple[str, int]]:
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
    handle: Source,
    encoding: FramesEncoding,
    bar: tqdm,
    patterns: NpyWriter | None,
    energies: NpyWriter,
    sums: NpyWriter,
) -> None:
    """Stream one source's patterns through the store: per chunk, check them, record Σ A²
    and Σ A (§5 scales of any later grouping, ptycho_torch's constants) and, for a copy,
    write them in the stored encoding (``patterns`` None: zero-copy, the source's own
    bytes are what is served). The first bad pattern (in file order) is the one reported.
    """
    source = handle.scan.diffraction
    keeping_integers = getattr(source, "keeping_integers", None)  # a lazy source's integer-keeping view
    if handle.stream_counts and encoding.values == "counts" and keeping_integers is not None:
        source = keeping_integers()  # uint16 counts stay uint16 on their way to a uint16 store
    convert = _chunk_converter(handle, encoding, copying=patterns is not None)

    def write(converted: Future) -> None:
        stored, chunk_energy, chunk_sums = converted.result()
        if patterns is not None:
            patterns.write(stored)
        energies.write(chunk_energy)
        sums.write(chunk_sums)

    _run_ring(source, convert, write, bar)


def _chunk_converter(
    handle: Source, encoding: FramesEncoding, *, copying: bool
) -> Callable[[int, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``convert(start, raw)``: a chunk of the source's patterns (its first pattern
    ``start``) as (stored form, Σ A², Σ A), checked (NaN, Inf, negative values; whole
    counts for a counts store)."""
    where = f"{handle.name}: key 'diffraction'"
    hint = "" if handle.intensity else " (counts? pass intensity=True)"
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

    return convert


def _run_ring(source: np.ndarray, convert: Callable, write: Callable[[Future], None], bar: tqdm) -> None:
    """``write(convert(start, chunk))`` for every row chunk of ``source``, in order.

    At most ``_RING`` chunks are in flight: this thread hands out views of a memory-mapped
    source (or fills a ring of reused buffers from any other array); worker threads
    convert and check the chunks, and one writer thread writes them in order, so reading,
    computing and writing overlap (NumPy and file writes release the GIL). A chunk's pages
    are released, or its buffer reused, once it is written.
    """
    rows = stream_rows(source)
    n_points = source.shape[0]
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
