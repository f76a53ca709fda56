"""Runtime helpers at the bottom of the import graph: version, memory budgets, array helpers, JSON,
argument checks, optional imports. They import nothing from the rest of the package except
:mod:`ptychodata.errors`.
"""

from ptychodata._runtime._arrays import sorted_unique, take_into
from ptychodata._runtime._checks import check_int
from ptychodata._runtime._files import create_exclusive, write_text_atomic
from ptychodata._runtime._json import canonical_json, jsonable
from ptychodata._runtime._memory import (
    CACHE_BYTES,
    available_memory,
    cgroup_cpu_quota,
    describe_bytes,
    is_memory_mapped,
    iter_rows,
    release_pages,
    rows_per_chunk,
    usable_cores,
)
from ptychodata._runtime._optional import is_installed, optional_import
from ptychodata._runtime._version import __version__

__all__ = [
    "CACHE_BYTES",
    "__version__",
    "available_memory",
    "canonical_json",
    "cgroup_cpu_quota",
    "describe_bytes",
    "check_int",
    "create_exclusive",
    "is_installed",
    "is_memory_mapped",
    "iter_rows",
    "jsonable",
    "optional_import",
    "release_pages",
    "rows_per_chunk",
    "sorted_unique",
    "take_into",
    "usable_cores",
    "write_text_atomic",
]
