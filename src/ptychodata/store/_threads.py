"""The few threads a batch gather is shared among (NumPy copies run without the GIL), and the
one that reads a store's rows ahead."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ptychodata._runtime import read_ahead, usable_cores

__all__ = ["GatherThreads", "ReadAheadThread", "default_threads"]

_READ_AHEAD_PIECE = 32 << 20  # bytes asked for at a time: a close is never behind more than this

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
    """One thread that asks the OS to read runs of a memory map's rows into the page cache,
    in pieces, in the order given.

    ``MADV_WILLNEED`` returns only once the kernel has queued the reads of its range, which for
    a large range on a busy disk is most of the time the reads take; on this thread the caller
    (a loader between two batches) never waits for it. Made again in a forked child."""

    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, array: np.ndarray, runs: list[tuple[int, int]]) -> None:
        """Read rows ``[start, stop)`` of ``array`` ahead for each ``(start, stop)`` of ``runs``; returns at once."""
        with self._lock:
            if self._closed:
                return
            if self._executor is None or self._pid != os.getpid():
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ptychodata-read-ahead")
                self._pid = os.getpid()
            self._executor.submit(self._read, array, runs)

    def _read(self, array: np.ndarray, runs: list[tuple[int, int]]) -> None:
        piece = max(1, _READ_AHEAD_PIECE // max(1, array[:1].nbytes))
        for start, stop in runs:
            for first in range(start, stop, piece):
                if self._closed:
                    return
                read_ahead(array, first, min(stop, first + piece))

    def close(self) -> None:
        """Drop what is not yet read ahead and wait for the piece being read (the maps stay valid)."""
        with self._lock:
            self._closed = True
            executor, self._executor = self._executor, None
        if executor is not None and self._pid == os.getpid():
            executor.shutdown(wait=True, cancel_futures=True)
