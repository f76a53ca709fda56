"""``open_store``: from a path the user has (a grouping, one of its builds, or a frames store
with one grouping) to an opened :class:`~ptychodata.store.Store`."""

from __future__ import annotations

import os
from pathlib import Path

from ptychodata.errors import StoreError, StoreNotFoundError
from ptychodata.store._cache_paths import BUILDS, CURRENT, GROUPINGS, MANIFEST
from ptychodata.store._store import Store

__all__ = ["open_store"]


def open_store(path: str | os.PathLike, *, sorted_reads: bool = False, threads: int | None = None) -> Store:
    """Open a prepared store's live build.

    ``path`` is what :func:`~ptychodata.store.prepare` returned as ``store.path`` (a
    grouping), one build of it (``.../builds/<id>``), or a frames store holding exactly one
    grouping.

    ``sorted_reads=True`` makes batches read patterns in ascending file order (then put
    them back in the requested order): better on spinning disks and network file systems,
    slower from the page cache, where the plain gather is at the in-RAM bound.
    ``threads`` (default: the usable cores, at most 4) share each batch's gather.
    """
    path = Path(path).expanduser().resolve()
    options = {"sorted_reads": sorted_reads, "threads": threads}
    if (path / MANIFEST).is_file() and path.parent.name == BUILDS:  # one build
        return Store.open_build(path.parent.parent, path.name, **options)
    if (path / GROUPINGS).is_dir():  # a frames store
        candidates = sorted(p for p in (path / GROUPINGS).iterdir() if (p / CURRENT).is_file())
        if len(candidates) != 1:
            names = ", ".join(p.name for p in candidates) or "none"
            raise StoreError(f"{path}: a frames store with {len(candidates)} groupings ({names}); open one of them")
        path = candidates[0]
    if not (path / CURRENT).is_file():
        raise StoreNotFoundError(
            f"{path}: not a prepared store (expected a grouping directory with a '{CURRENT}' file, "
            "as printed by 'ptychodata prepare' or returned as store.path)"
        )
    return Store(path, **options)
