"""The on-disk store: immutable builds of frames stored once and groupings as index
tables, a ``current`` pointer to the live build, memory-mapped batches.

Modules, by job:

- ``_prepare``: :func:`prepare` (what is reused, what is built); ``_build_options`` and
  ``_sources``: its arguments and its source scans; ``_frames_build`` and
  ``_grouping_build``: the two kinds of build; ``_frames``: how patterns are stored;
  ``_hashing``, ``_manifest``, ``_files``: identities, records and files of a build;
  ``_ids`` and ``_schema``: what an id, a file name and each manifest field may be (anything
  read from a store is checked before it is used); ``_source_file``: a source held open and
  checked while a build reads it.
- ``_cache_paths``: the cache's directory structure and locks; ``_cache``: listing,
  verifying, pruning and removing stores.
- ``_open_store``: :func:`open_store`; ``_open_build``: a build's files mapped and locked;
  ``_store``: the :class:`Store`; ``_split``: leak-free train/validation splits.
- ``_batch_schema``: the keys, shapes and dtypes of a batch per layout; ``_batch`` and
  ``_buffers``: the host gather and its recycled buffers; ``_threads``: the threads a gather
  shares and the one that reads a store ahead; ``_ptycho_torch``: the ptycho_torch adapter (its
  constants and batch).
"""

from ptychodata.store._batch import check_batch_indices
from ptychodata.store._batch_schema import (
    DEFAULT_SCHEMA,
    LAYOUTS,
    PTYCHO_TORCH_SCHEMA,
    BatchField,
    BatchSchema,
    Layout,
    batch_schema,
)
from ptychodata.store._buffers import BufferPool
from ptychodata.store._cache import CachedStore, list_stores, prune_cache, remove_store, verify_store
from ptychodata.store._cache_paths import write_pins
from ptychodata.store._files import file_digest
from ptychodata.store._frames import FramesEncoding, canonical_frames_dtype, decode_into
from ptychodata.store._ids import check_build_id, check_key, is_build_id, is_key
from ptychodata.store._open_store import open_store
from ptychodata.store._prepare import default_cache_dir, prepare
from ptychodata.store._ptycho_torch import PtychoTorchConstants
from ptychodata.store._store import Store, require_ground_truth
from ptychodata.store._threads import GatherThreads, ReadAheadThread, default_threads

__all__ = [
    "DEFAULT_SCHEMA",
    "LAYOUTS",
    "Layout",
    "PTYCHO_TORCH_SCHEMA",
    "BatchField",
    "BatchSchema",
    "BufferPool",
    "CachedStore",
    "FramesEncoding",
    "GatherThreads",
    "PtychoTorchConstants",
    "ReadAheadThread",
    "Store",
    "batch_schema",
    "canonical_frames_dtype",
    "check_batch_indices",
    "check_build_id",
    "check_key",
    "decode_into",
    "default_cache_dir",
    "default_threads",
    "file_digest",
    "is_build_id",
    "is_key",
    "list_stores",
    "open_store",
    "prepare",
    "prune_cache",
    "remove_store",
    "require_ground_truth",
    "verify_store",
    "write_pins",
]
