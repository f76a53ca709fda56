"""Frames builds: a store's patterns (copied in the build's encoding, or referenced in
place), their energies and amplitude sums, positions, probes, masks and objects.

Patterns are streamed in chunks (bounded memory): read, converted and checked on worker
threads, written in order by a writer thread. The energies and amplitude sums recorded
here give every later grouping its §5 scales without reading a pattern again.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ptychodata._runtime import iter_rows, jsonable, release_pages, usable_cores
from ptychodata.errors import ParameterError, ScanDataError, SourceChangedError
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
from ptychodata.store._source_file import SourceFile
from ptychodata.store._sources import Source

__all__ = ["build_frames", "frames_bytes"]

# Threads converting and checking chunks (NumPy releases the GIL): 2, up to 4 where there
# are the cores (a zero-copy build, which only reads, then keeps pace with a read of the file).
_WORKERS = max(2, min(4, usable_cores()))
_RING = _WORKERS + 2  # pattern chunks in flight while streaming (read, converted, written)


def frames_bytes(handles: list[Source], options: BuildOptions) -> int:
    """About the bytes a frames build of ``handles`` writes: the copied patterns, the stored
    patches, the objects and the per-pattern columns (for the free-space check before it)."""
    N, n_total = _pattern_shape(handles)
    scans = [handle.scan for handle in handles]
    total = n_total * 10 * 8  # energies, sums, positions, scan index, experiment
    if options.copy:
        total += n_total * N * N * FramesEncoding.for_copy(options.frames_dtype, bool(options.intensity)).storage.itemsize
    if all(scan.Y is not None for scan in scans):
        total += n_total * N * N * 8
    total += sum(scan.object.size * 8 for scan in scans if scan.object is not None)
    return total + len(scans) * N * N * 9


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
    manifest last, with the SHA-256 of every file computed as it was written.

    A file source is held open and checked while it is read (:mod:`~ptychodata.store._source_file`):
    one that is rewritten, replaced or truncated meanwhile raises ``SourceChangedError``.
    """
    with contextlib.ExitStack() as stack:
        files = [
            None if handle.path is None else stack.enter_context(SourceFile.open(handle.path, handle.file_state))
            for handle in handles
        ]
        try:
            _build_frames(directory, key, build_id, handles, options, files)
            for file in files:
                if file is not None:
                    file.check("after the last read")
        except SourceChangedError:
            raise
        except Exception as exc:  # a reader failing on a file that changed under it: that change is the cause
            for file in files:
                if file is not None:
                    file.check(f"when reading it failed ({type(exc).__name__}: {' '.join(str(exc).split())[:120]})")
            raise


def _build_frames(
    directory: Path,
    key: str,
    build_id: str,
    handles: list[Source],
    options: BuildOptions,
    files: list[SourceFile | None],
) -> None:
    N, n_total = _pattern_shape(handles)
    if options.copy:
        encoding, reference = FramesEncoding.for_copy(options.frames_dtype, bool(options.intensity)), None
    else:
        encoding, reference = _zero_copy_reference(handles[0], bool(options.intensity), options.frames_dtype)
    digests: dict[str, str] = {}
    experiments = _stream_sources(
        directory, handles, files, options, encoding, copying=reference is None, shape=(n_total, N), digests=digests
    )
    for file in files:
        if file is not None:
            file.check("before its positions, probe and mask were read")
    scans = [handle.scan for handle in handles]
    _write_positions(directory, scans, digests)
    if all(scan.probe is not None for scan in scans):
        write_npy(directory / npy_name(FrameFile.PROBES), np.stack([s.probe for s in scans]), digests=digests)
    if any(scan.mask is not None for scan in scans):
        masks = [np.ones((N, N), bool) if s.mask is None else s.mask for s in scans]
        write_npy(directory / npy_name(FrameFile.MASKS), np.stack(masks), digests=digests)
    if all(scan.Y is not None for scan in scans):
        _write_patches(directory, scans, files, (n_total, N), options.direct_io, digests)
    file, offset = reference if reference is not None else (None, 0)
    write_manifest_last(
        directory,
        FrameManifest,
        digests=digests,
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
    files: list[SourceFile | None],
    options: BuildOptions,
    encoding: FramesEncoding,
    *,
    copying: bool,
    shape: tuple[int, int],
    digests: dict[str, str],
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
        _Progress(options.progress, n_total, desc) as bar,
        NpyWriter(directory / npy_name(FrameFile.ENERGIES), (n_total,), np.float64, digests=digests) as energies,
        NpyWriter(directory / npy_name(FrameFile.AMPLITUDE_SUMS), (n_total,), np.float64, digests=digests) as sums,
        (
            NpyWriter(directory / npy_name(FrameFile.PATTERNS), (n_total, N, N), encoding.storage, direct=direct,
                      digests=digests)
            if copying
            else contextlib.nullcontext()
        ) as patterns,
    ):
        for experiment_id, (handle, file) in enumerate(zip(handles, files)):
            # A file is identified by its bytes on disk (hashed beside the stream, compressed
            # bytes too), an in-memory scan by the hash of its arrays (computed on opening).
            digesting = handle.path is not None and (copying or options.verify)
            with ThreadPoolExecutor(max_workers=1) as hashing:
                on_disk = hashing.submit(file_digest, handle.path) if digesting else None
                _stream_patterns(handle, file, encoding, bar, patterns, energies, sums)
                digest = on_disk.result() if on_disk is not None else handle.known_hash
            if file is not None and handle.sha256 is not None and digest != handle.sha256:
                raise SourceChangedError(
                    f"{handle.path}: the source changed while it was prepared (its SHA-256 before the build was "
                    f"{handle.sha256[:16]}..., while its patterns were read {digest[:16]}...); nothing was "
                    "published; prepare again once the file is complete"
                )
            experiments.append(_experiment_entry(experiment_id, handle, start, digest))
            if handle.scan.object is not None:
                _write_rows(directory / npy_name(object_stem(experiment_id)), handle.scan.object, file, digests)
            start += handle.scan.n_points
    return experiments


class _Progress:
    """The patterns streamed so far: a tqdm bar (``progress=True``), and/or a callable
    ``progress(done, total)`` called on the preparing thread after each chunk is read."""

    def __init__(self, progress, total: int, desc: str):
        self.total, self.done = total, 0
        self.call = progress if callable(progress) else None
        self.bar = tqdm(total=total, disable=progress is not True, desc=desc, unit="pattern", unit_scale=True)

    def __enter__(self) -> _Progress:  # noqa: PYI034 - Self needs Python 3.11
        return self

    def __exit__(self, *exc_info) -> None:
        self.bar.close()

    def update(self, n: int) -> None:
        self.done += n
        self.bar.update(n)
        if self.call is not None:
            self.call(self.done, self.total)


def _write_rows(path: Path, array: np.ndarray, file: SourceFile | None, digests: dict[str, str]) -> None:
    """Write a source's array (an object, patches) as ``.npy`` row chunk by row chunk, read
    through ``file`` when it is one of a source file (no page of a shrinking file mapped)."""
    if file is None:
        write_npy(path, array, digests=digests)
        return
    with NpyWriter(path, array.shape, array.dtype, digests=digests) as writer:
        for chunk in file.rows(array, stream_rows(array)):
            writer.write(chunk)


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


def _write_positions(directory: Path, scans: list, digests: dict[str, str]) -> None:
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
        write_npy(directory / npy_name(stem), np.concatenate(parts), digests=digests)


def _write_patches(
    directory: Path,
    scans: list,
    files: list[SourceFile | None],
    shape: tuple[int, int],
    direct_io: bool | None,
    digests: dict[str, str],
) -> None:
    """The sources' ground-truth patches Y, streamed in row chunks. ``shape``: (patterns, N)."""
    n_total, N = shape
    direct = use_direct_io(direct_io, n_total * N * N * 8)
    with NpyWriter(directory / npy_name(FrameFile.Y), (n_total, N, N), np.complex64, direct=direct,
                   digests=digests) as writer:
        for scan, file in zip(scans, files):
            chunks = (chunk for _, chunk in iter_rows(scan.Y, stream_rows(scan.Y))) if file is None else (
                file.rows(scan.Y, stream_rows(scan.Y))
            )
            for chunk in chunks:
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
    """Row ranges of a pattern array into the caller's buffers, without growing this
    process's resident memory and without touching a map of a source file.

    A whole memory map of the source file being built is read with ``pread`` through its
    :class:`SourceFile` (a file that shrinks is then an error, not a ``SIGBUS``); any other
    array is copied into the buffer (a memmap's pages released after each copy), the source
    file checked first.
    """

    def __init__(self, array: np.ndarray, file: SourceFile | None):
        self.array = array
        self.file = file
        self._preads = file is not None and file.covers(array)

    @property
    def fresh(self) -> bool:
        """Reads return new arrays that nothing else holds (a lazy, prepared source): use
        them as they are, no copy into a ring buffer."""
        return bool(getattr(self.array, "returns_fresh_arrays", False))

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of a :attr:`fresh` source."""
        if self.file is not None:
            self.file.check(f"before pattern {start}")
        return np.asarray(self.array[start:stop])

    def read(self, start: int, out: np.ndarray) -> None:
        if self.file is not None:
            self.file.check(f"before pattern {start}")
        if self._preads:
            self.file.read_rows(self.array, start, out)
            return
        np.copyto(out, self.array[start : start + len(out)])
        release_pages(self.array)


def _stream_patterns(
    handle: Source,
    file: SourceFile | None,
    encoding: FramesEncoding,
    bar: _Progress,
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

    _run_ring(_RowReader(source, file), convert, write, bar)


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


def _run_ring(reader: _RowReader, convert: Callable, write: Callable[[Future], None], bar: _Progress) -> None:
    """``write(convert(start, chunk))`` for every row chunk of the reader's array, in order.

    At most ``_RING`` chunks are in flight: this thread reads chunks into a ring of reused
    buffers (or takes the fresh arrays of a lazy source); worker threads convert and check
    the chunks, and one writer thread writes them in order, so reading, computing and
    writing overlap (NumPy, ``pread`` and file writes release the GIL). A chunk's buffer is
    reused once it is written.
    """
    source = reader.array
    rows = stream_rows(source)
    n_points = source.shape[0]
    buffers: list[np.ndarray] = []
    with ThreadPoolExecutor(max_workers=_WORKERS) as workers, ThreadPoolExecutor(max_workers=1) as writer:
        in_flight: deque = deque()
        try:
            for k, start in enumerate(range(0, n_points, rows)):
                if len(in_flight) == _RING:
                    in_flight.popleft().result()
                stop = min(start + rows, n_points)
                if reader.fresh:
                    raw = reader.rows(start, stop)
                else:
                    if len(buffers) < _RING:
                        buffers.append(np.empty((rows, *source.shape[1:]), source.dtype))
                    raw = buffers[k % _RING][: stop - start]
                    reader.read(start, raw)
                converted = workers.submit(convert, start, raw)
                in_flight.append(writer.submit(write, converted))
                bar.update(len(raw))
            while in_flight:
                in_flight.popleft().result()
        finally:
            for pending in in_flight:  # a failure: let what is in flight end before the buffers go
                pending.cancel()
            for pending in in_flight:
                with contextlib.suppress(BaseException):
                    pending.result()
