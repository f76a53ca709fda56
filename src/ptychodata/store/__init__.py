"""The on-disk store: immutable builds of frames stored once and groupings as index
tables, a ``current`` pointer to the live build, memory-mapped batches."""

from ptychodata.store._batch import LAYOUTS
from ptychodata.store._prepare import default_cache_dir, prepare
from ptychodata.store._store import Store, open_store

__all__ = ["LAYOUTS", "Store", "default_cache_dir", "open_store", "prepare"]
