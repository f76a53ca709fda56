"""Iterating a loader in a background thread, a few batches ahead of the training loop."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["in_background"]


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


_DONE = object()


def in_background(iterable: Any, depth: int) -> Iterator[Any]:
    """Iterate ``iterable`` in a daemon thread, ``depth`` items ahead; its exceptions are
    raised here, and leaving early (break, error) stops the thread."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in iterable:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as error:  # handed to the consumer, raised there
            put(_Failure(error))

    thread = threading.Thread(target=produce, name="ptychodata-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
            del item  # the loop's variable holds the batch; this frame need not
    finally:
        stop.set()
        thread.join()
