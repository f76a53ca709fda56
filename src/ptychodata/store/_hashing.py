"""Content hashes of sources: what identifies an in-memory scan (and its load options) in a
store's key.

Large arrays are hashed as SHA-256 digests of fixed row chunks (on two threads), fed in
order to one BLAKE2b hasher with the names, shapes, dtypes and metadata. A file source is
identified by its path and, with ``verify=True``, by :func:`~ptychodata.store._files.file_digest`
of its bytes on disk instead.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tqdm.auto import tqdm

from ptychodata._runtime import canonical_json, is_memory_mapped, iter_rows
from ptychodata.scan import ScanData
from ptychodata.store._files import STREAM_CHUNK_BYTES, new_hasher, stream_rows

__all__ = ["content_hash"]

_WORKERS = 2  # threads hashing chunks (hashlib releases the GIL)


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
    """SHA-256 of a chunk's bytes (CPUs with SHA extensions hash it faster than BLAKE2b)."""
    return hashlib.sha256(memoryview(np.ascontiguousarray(chunk)).cast("B")).digest()


def _row_digests(array: np.ndarray) -> Iterator[bytes]:
    """SHA-256 digests of ``array``'s row chunks, in order, computed by two threads (a
    memmap is read chunk by chunk and its pages released, so RSS stays at a few chunks)."""
    if array.ndim == 0:
        yield _chunk_digest(array.reshape(1))
        return
    if array.nbytes <= STREAM_CHUNK_BYTES:
        yield _chunk_digest(array)
        return
    rows = stream_rows(array)
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
    hasher.update(canonical_json(dict(scan.metadata)).encode())
    return hasher
