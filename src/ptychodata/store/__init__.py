"""The on-disk store: frames stored once, groupings as index tables, memory-mapped batches."""

from ptychodata.store._prepare import default_cache_dir, prepare
from ptychodata.store._split import StoreView
from ptychodata.store._store import Store, open_store

__all__ = ["Store", "StoreView", "default_cache_dir", "open_store", "prepare"]
