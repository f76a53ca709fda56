"""Reading memory-mapped arrays without letting them fill this process's resident memory, and
the machine budgets that size chunks and thread pools."""

from __future__ import annotations

import contextlib
import mmap
import os
import resource
from collections.abc import Iterator

import numpy as np

__all__ = [
    "available_memory",
    "cgroup_cpu_quota", "is_memory_mapped", "iter_rows", "release_pages", "rows_per_chunk",
    "usable_cores",
]


# A container's "no limit" in cgroup v1 is a huge number; anything above this is no limit.
_NO_LIMIT = 1 << 60

_CGROUP_FILES = (
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
    ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
)

def available_memory() -> int | None:
    """Bytes this process could allocate now, or None where nothing is known.

    The smallest of: ``MemAvailable`` (``/proc/meminfo``), its cgroup's limit less its usage,
    and its address-space limit (``RLIMIT_AS``, as ``ulimit -v`` sets it) less its current size.
    """
    found = []
    with contextlib.suppress(OSError, StopIteration, ValueError, IndexError):
        with open("/proc/meminfo") as meminfo:
            found.append(next(int(line.split()[1]) for line in meminfo if line.startswith("MemAvailable:")) * 1024)
    for limit_file, usage_file in _CGROUP_FILES:
        try:
            with open(limit_file) as handle:
                limit = handle.read().strip()
        except OSError:
            continue
        usage = 0  # where the usage cannot be read, the limit alone
        with contextlib.suppress(OSError, ValueError):
            with open(usage_file) as handle:
                usage = int(handle.read().strip())
        if limit.isdigit() and int(limit) < _NO_LIMIT:
            found.append(max(0, int(limit) - usage))
        break
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        found.append(max(0, soft - _address_space()))
    return min(found) if found else None


def _address_space() -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    return 0


def usable_cores(*, cgroup_root: str = "/sys/fs/cgroup") -> int:
    """Cores this process may keep busy: its CPU affinity (what a SLURM cpuset or ``taskset``
    gives), capped by a cgroup CPU quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``) rounded up."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpu_quota(cgroup_root)
    return max(1, min(cores, quota)) if quota is not None else max(1, cores)


def cgroup_cpu_quota(root: str = "/sys/fs/cgroup") -> int | None:
    """Whole CPUs a cgroup quota allows (rounded up), or None where no quota is set or readable."""
    for quota_file, period_file in (("cpu.max", None), ("cpu/cpu.cfs_quota_us", "cpu/cpu.cfs_period_us")):
        try:
            with open(os.path.join(root, quota_file)) as handle:
                fields = handle.read().split()
            if period_file is not None:
                with open(os.path.join(root, period_file)) as handle:
                    fields.append(handle.read().strip())
        except (OSError, ValueError):
            continue
        if len(fields) < 2 or fields[0] in ("max", "-1"):
            return None
        try:
            quota, period = int(fields[0]), int(fields[1])
        except ValueError:
            return None
        if quota <= 0 or period <= 0:
            return None
        return -(-quota // period)
    return None


def rows_per_chunk(row_bytes: int, budget_bytes: int) -> int:
    """How many rows of ``row_bytes`` each fit in ``budget_bytes`` (at least one)."""
    return max(1, int(budget_bytes) // max(1, int(row_bytes)))


def iter_rows(array: np.ndarray, rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start, copy of array[start:start + rows])`` along the first axis.

    Sources marked ``returns_copies`` (lazy pattern sources, whose every read is a new
    array) are not copied again.

    For a memmap, the pages just read are dropped from this process's mapping after
    each copy (see :func:`release_pages`), so reading a file of any size through a
    memmap leaves resident memory at about one chunk.
    """
    fresh = getattr(array, "returns_copies", False)  # a lazy source hands out new arrays: no second copy
    for start in range(0, array.shape[0], rows):
        chunk = array[start : start + rows]
        yield start, chunk if fresh else np.array(chunk)
        release_pages(array)


def release_pages(array: np.ndarray) -> None:
    """Drop a memmap's pages from this process's resident set (``MADV_DONTNEED``).

    The data stays in the OS page cache, so the next read is still fast; only this
    process's RSS shrinks. A no-op for arrays that are not memory-mapped.
    """
    mapping = _backing_mmap(array)
    if mapping is not None:
        with contextlib.suppress(ValueError, OSError):
            mapping.madvise(mmap.MADV_DONTNEED)


def is_memory_mapped(array: np.ndarray) -> bool:
    """Whether ``array`` (or the array it is a view of) reads a memory-mapped file."""
    return _backing_mmap(array) is not None


def _backing_mmap(array: np.ndarray) -> mmap.mmap | None:
    base = array
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "_mmap", None) or getattr(base, "base", None)
    return base
