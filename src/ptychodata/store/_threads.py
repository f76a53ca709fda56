"""The few threads a batch gather is shared among (NumPy copies run without the GIL), and the
one that reads a store's rows ahead (and drops them from memory once served)."""

from __future__ import annotations

import contextlib
import mmap
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from ptychodata._runtime import usable_cores

__all__ = ["GatherThreads", "ReadAheadThread", "default_threads"]

_READ_AHEAD_PIECE = 8 << 20  # bytes of one read ahead: a sequential read at the disk's rate

_MIN_THREAD_BYTES = 1 << 20  # less per thread and the hand-off costs what the thread saves


def default_threads() -> int:
    """Usable cores, at most 4."""
    return max(1, min(4, usable_cores()))


class GatherThreads:
    """Runs ``fill(first, stop)`` over the rows [0, B) of a batch, in runs of ``step`` rows
    split among up to ``threads`` threads (the calling thread takes the first run) when the
    batch is large enough to pay for the hand-off. The threads are made again in a forked
    child (threads do not survive fork)."""

    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = None
        self._key = (0, 0)  # (process id, threads) the executor was made for
        self._lock = threading.Lock()

    def share(self, fill: Callable[[int, int], None], B: int, step: int, nbytes: int, threads: int) -> None:
        parts = min(threads, -(-B // step), max(1, nbytes // _MIN_THREAD_BYTES))
        if parts <= 1:
            fill(0, B)
            return
        bounds = [round(B * part / parts / step) * step for part in range(parts)] + [B]
        executor = self._pool(parts - 1)
        pending = [executor.submit(fill, bounds[part], bounds[part + 1]) for part in range(1, parts)]
        fill(bounds[0], bounds[1])
        for future in pending:
            future.result()

    def _pool(self, workers: int) -> ThreadPoolExecutor:
        """A pool too small for ``workers`` is replaced, never shut down: another thread may
        be submitting to it at this moment; its idle threads end when it is collected."""
        with self._lock:
            pid, size = self._key
            if self._executor is None or pid != os.getpid() or size < workers:
                self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ptychodata-gather")
                self._key = (os.getpid(), workers)
            return self._executor

    def close(self) -> None:
        with self._lock:
            if self._executor is not None and self._key[0] == os.getpid():
                self._executor.shutdown(wait=True)
            self._executor = None


class ReadAheadThread:
    """One thread that reads byte ranges of a file into the page cache, in order, in large
    sequential reads (the pattern a disk serves at its full rate), while the caller goes on;
    and drops ranges already served from memory, in the same order.

    A hint to the kernel (``MADV_WILLNEED``) is not enough: it returns only once the reads of
    its range are queued, and pages touched meanwhile are read at random, one small read
    around each. Here the bytes are read for real, into a small buffer that is then reused,
    so the file's pages are cached when the reads end. Made again in a forked child.
    """

    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, path: str, ranges: list[tuple[int, int]]) -> Future:
        """Read ``(offset, nbytes)`` of ``ranges`` of file ``path``; returns at once a future
        that is done when they are read (or could not be: nothing is raised, it is a hint)."""
        return self._queue(self._read, path, ranges)

    def forget(self, path: str, ranges: list[tuple[int, int]], mapping: tuple[mmap.mmap, int] | None,
               page_cache: bool = True) -> Future:
        """Drop ``(offset, nbytes)`` of ``ranges`` of file ``path`` from memory once what was
        queued before is done: the whole pages among them are unmapped from ``mapping`` (the
        ``mmap`` of the file and the file offset it starts at; ``MADV_DONTNEED``, a later read
        maps them again from the file) and, with ``page_cache``, dropped from the page cache
        (``POSIX_FADV_DONTNEED``, which leaves pages some process still maps). For data read
        once per pass and larger than memory: pages already served make room for the next ones
        instead of being reclaimed among them. A hint: a future that is done when dropped;
        nothing is raised."""
        return self._queue(self._forget, path, ranges, mapping, page_cache)

    def _queue(self, job: Callable[..., None], *args: object) -> Future:
        with self._lock:
            if self._closed:
                done: Future = Future()
                done.set_result(None)
                return done
            if self._executor is None or self._pid != os.getpid():
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ptychodata-read-ahead")
                self._pid = os.getpid()
            return self._executor.submit(job, *args)

    @staticmethod
    def _forget(path: str, ranges: list[tuple[int, int]], mapping: tuple[mmap.mmap, int] | None,
                page_cache: bool) -> None:
        if mapping is not None and hasattr(mmap, "MADV_DONTNEED"):
            mapped, start = mapping
            for offset, nbytes in ranges:
                first = -(-(offset - start) // mmap.PAGESIZE) * mmap.PAGESIZE  # whole pages only
                stop = (offset + nbytes - start) // mmap.PAGESIZE * mmap.PAGESIZE
                if stop > first:
                    with contextlib.suppress(OSError, ValueError):  # ValueError: the map is closed
                        mapped.madvise(mmap.MADV_DONTNEED, first, stop - first)
        if not page_cache or not hasattr(os, "posix_fadvise"):
            return
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            return
        try:
            for offset, nbytes in ranges:
                os.posix_fadvise(fd, offset, nbytes, os.POSIX_FADV_DONTNEED)
        except OSError:
            return
        finally:
            os.close(fd)

    def _read(self, path: str, ranges: list[tuple[int, int]]) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            return
        try:
            buffer = bytearray(min(_READ_AHEAD_PIECE, max((n for _, n in ranges), default=0)))
            view = memoryview(buffer)
            for offset, nbytes in ranges:
                for at in range(offset, offset + nbytes, len(buffer)):
                    if self._closed or os.preadv(fd, [view[: min(len(buffer), offset + nbytes - at)]], at) <= 0:
                        return
        except OSError:
            return
        finally:
            os.close(fd)

    def close(self) -> None:
        """Drop what is not yet read and wait for the piece being read."""
        with self._lock:
            self._closed = True
            executor, self._executor = self._executor, None
        if executor is not None and self._pid == os.getpid():
            executor.shutdown(wait=True, cancel_futures=True)
