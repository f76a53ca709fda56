"""A source file held open while a build reads it: its identity checked, its memory-mapped arrays
read with ``pread``.

A file that is rewritten, replaced or truncated while it is prepared must not give a store of
old and new bytes mixed, nor kill the process: a memory map of a file that shrinks raises
``SIGBUS`` on the first page past the new end, which no Python code can catch. So a build
records the file's identity (device, inode, size, modification and change times) when the
source is opened, reads the large arrays of a memory-mapped source with ``pread`` from a
descriptor of its own (a short read is the file shrinking: :class:`SourceChangedError`),
checks the identity before each chunk and once more after the last read, and publishes
nothing when anything differs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ptychodata._runtime import release_pages
from ptychodata.errors import SourceChangedError
from ptychodata.store._frames import file_extent

__all__ = ["FileState", "SourceFile"]

_AGAIN = "nothing was published; prepare again once the file is complete"


@dataclass(frozen=True)
class FileState:
    """What identifies a file's content without reading it: which file (device, inode), its
    size, and when its data (mtime) or inode (ctime, which no one can set back) last changed."""

    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, info: os.stat_result) -> FileState:
        return cls(info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)

    def change(self, now: FileState) -> str | None:
        """How ``now`` differs from this state, in words, or None."""
        if (now.device, now.inode) != (self.device, self.inode):
            return "it was replaced by another file"
        if now.size != self.size:
            return f"its size changed from {self.size} to {now.size} bytes"
        if now.mtime_ns != self.mtime_ns:
            return "it was rewritten (its modification time changed)"
        if now.ctime_ns != self.ctime_ns:
            return "it was changed (its inode change time moved)"
        return None


class SourceFile:
    """A source file opened for a build, checked against the :class:`FileState` recorded
    when the source was first opened.

    Raises :class:`SourceChangedError` (naming the file, what changed and when it was seen)
    from :meth:`open`, :meth:`check` and the reads whenever the file is not the one recorded.
    """

    def __init__(self, path: str, recorded: FileState, fd: int):
        self.path, self.recorded, self._fd = path, recorded, fd

    @classmethod
    def open(cls, path: str, recorded: FileState) -> SourceFile:
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise SourceChangedError(f"{path}: the file was removed while it was prepared; {_AGAIN}") from None
        source = cls(path, recorded, fd)
        try:
            source.check("when its patterns were about to be read")
        except BaseException:
            source.close()
            raise
        return source

    def __enter__(self) -> SourceFile:  # noqa: PYI034 - Self needs Python 3.11
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def check(self, when: str) -> None:
        """``SourceChangedError`` unless the open file and the file at the path are both the file
        recorded, unchanged. ``when``: the moment, for the message ("after the last pattern was read")."""
        try:
            problem = self.recorded.change(FileState.of(os.stat(self.path)))
        except FileNotFoundError:
            problem = "it was removed"
        if problem is None:
            problem = self.recorded.change(FileState.of(os.fstat(self._fd)))
        if problem is not None:
            raise SourceChangedError(f"{self.path}: the source changed while it was prepared ({problem}, seen {when}); {_AGAIN}")

    def covers(self, array: np.ndarray) -> bool:
        """Whether ``array`` is a whole, C-ordered memory map of this file (read by :meth:`read_rows`)."""
        extent = file_extent(array)
        return extent is not None and array.flags.c_contiguous and str(Path(extent[0]).resolve()) == self.path

    def read_rows(self, array: np.ndarray, start: int, out: np.ndarray) -> None:
        """Rows ``[start, start + len(out))`` of ``array`` (a memory map this file :meth:`covers`)
        into ``out`` (C-contiguous, same dtype), read with ``pread``: the map itself is never
        touched, so the file shrinking is a :class:`SourceChangedError`, not a ``SIGBUS``."""
        row_bytes = int(np.prod(array.shape[1:], dtype=np.int64)) * array.dtype.itemsize
        offset = int(array.offset) + start * row_bytes
        view = memoryview(out).cast("B")
        done = 0
        while done < len(view):
            n = os.preadv(self._fd, [view[done:]], offset + done)
            if n == 0:
                size = os.fstat(self._fd).st_size
                raise SourceChangedError(
                    f"{self.path}: the source changed while it was prepared (it shrank to {size} bytes; rows "
                    f"{start}..{start + len(out) - 1} of {array.shape[0]} need bytes up to {offset + len(view)}); {_AGAIN}"
                )
            done += n

    def rows(self, array: np.ndarray, rows: int) -> Iterator[np.ndarray]:
        """``array`` in chunks of ``rows`` rows: read with :meth:`read_rows` where this file
        covers it, else copied after a :meth:`check` (and a memmap's pages released)."""
        covered = self.covers(array)
        for start in range(0, array.shape[0], rows):
            stop = min(start + rows, array.shape[0])
            if covered:
                chunk = np.empty((stop - start, *array.shape[1:]), array.dtype)
                self.read_rows(array, start, chunk)
            else:
                self.check("while it was read")
                chunk = np.array(array[start:stop])
                release_pages(array)
            yield chunk
