"""The sources of a frames build: file paths or in-memory scans, identified cheaply and
opened only when a build or a content check needs their arrays."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ptychodata.errors import ParameterError, ScanFileNotFoundError
from ptychodata.io import regular_file
from ptychodata.scan import ScanData
from ptychodata.store._files import file_digest
from ptychodata.store._hashing import content_hash
from ptychodata.store._source_file import FileState

__all__ = ["Source", "open_sources"]

SourceLike = str | os.PathLike | ScanData


def open_sources(
    sources: SourceLike | Sequence[SourceLike],
    intensity: bool | None,
    load_options: dict[str, Any],
    *,
    copy: bool,
    counts_stored: bool,
) -> list[Source]:
    """One :class:`Source` per experiment of ``sources`` (a path, a scan, or a list of them).

    Raises ``ParameterError`` for an empty list and, with ``copy=False``, for anything but
    one file source; ``ScanDataError`` for a file that does not exist.
    """
    listed = _as_list(sources)
    if not copy:
        _check_zero_copy_sources(listed)
    return [Source.open(source, intensity, load_options, counts_stored=counts_stored) for source in listed]


def _as_list(sources: Any) -> list[Any]:
    if isinstance(sources, (str, os.PathLike, ScanData)):
        return [sources]
    sources = list(sources)
    if not sources:
        raise ParameterError("prepare() needs at least one source; got an empty list")
    return sources


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


class Source:
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
        self.file_state: FileState | None = None  # the file as first seen: a build checks it is unchanged
        self.sha256: str | None = None  # the file's SHA-256 before the build, when one was computed
        self.intensity = intensity
        self.options = options or {}
        # The stream takes the square root itself: an in-memory scan of counts, or a file
        # whose counts are stored as counts (read raw, not converted at load).
        self.stream_counts = bool(intensity) and (path is None or counts_stored)
        self._scan = scan
        self.known_hash = None if scan is None else content_hash(scan)

    @classmethod
    def open(cls, source: Any, intensity: bool | None, options: dict[str, Any], *, counts_stored: bool) -> Source:
        if isinstance(source, ScanData):
            return cls(None, None, None, source, intensity=intensity)
        given = regular_file(Path(source).expanduser(), "a scan file")  # a FIFO, device, link loop: refused by name
        path = given.resolve()
        stat = _stat_source(path)
        handle = cls(
            str(path), stat.st_size, stat.st_mtime_ns, intensity=intensity, options=options, counts_stored=counts_stored
        )
        handle.file_state = FileState.of(stat)
        return handle

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

    def state(self, *, digest: bool = False) -> dict[str, Any]:
        """What a build made from this source now depends on: the file's path, size and
        modification time (and with ``digest``, the SHA-256 of its bytes), or an in-memory
        scan's content hash."""
        if self.path is None:
            return {"content_hash": self.known_hash}
        state: dict[str, Any] = {"path": self.path, "size": self.size, "mtime_ns": self.mtime_ns}
        if digest:
            self.sha256 = state["sha256"] = file_digest(self.path)
        return state

    def identity(self) -> dict[str, Any]:
        return {"path": self.path} if self.path is not None else {"content_hash": self.known_hash}

    @property
    def name(self) -> str:
        return self.path or "in-memory scan"


def _stat_source(path: Path) -> os.stat_result:
    try:
        return path.stat()
    except FileNotFoundError:
        raise ScanFileNotFoundError(f"{path}: no such file") from None
