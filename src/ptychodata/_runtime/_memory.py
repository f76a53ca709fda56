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
    "available_memory", "describe_bytes",
    "CACHE_BYTES", "cgroup_cpu_quota", "is_memory_mapped", "iter_rows", "release_pages", "rows_per_chunk",
    "usable_cores",
]


# A container's "no limit" in cgroup v1 is a huge number; anything above this is no limit.
_NO_LIMIT = 1 << 60

# (v1 hierarchy, limit file, usage file) of memory in cgroup v2, then v1.
_MEMORY_FILES = ((None, "memory.max", "memory.current"), ("memory", "memory.limit_in_bytes", "memory.usage_in_bytes"))

# The page cache a cgroup's usage counts and the kernel reclaims when the cgroup needs room: its
# file pages in ``memory.stat``, v1's totals over its subtree where present, else v2's.
_FILE_PAGES = (("total_active_file", "total_inactive_file"), ("active_file", "inactive_file"))


def _own_cgroups(root: str, v1_hierarchy: str | None) -> list[str]:
    """The directories of this process's cgroup and of its ancestors, innermost first, ending
    with the mount's root: under ``root`` (cgroup v2) or, given ``v1_hierarchy`` (``"memory"``,
    ``"cpu"``), under ``root/v1_hierarchy`` for the v1 hierarchy of that controller; as
    ``/proc/self/cgroup`` names them. A batch system's job (SLURM, PBS) is a cgroup below the
    root, whose limits are in its own directory; a container with its own cgroup namespace
    sees its cgroup as the root. Directories that do not exist are included (reading them fails)."""
    path = None
    with contextlib.suppress(OSError):
        with open("/proc/self/cgroup") as handle:
            for line in handle:
                hierarchy, controllers, where = (line.rstrip("\n").split(":", 2) + ["", ""])[:3]
                if (v1_hierarchy is None and hierarchy == "0" and not controllers) or (
                    v1_hierarchy is not None and v1_hierarchy in controllers.split(",")
                ):
                    path = where
    base = root if v1_hierarchy is None else os.path.join(root, v1_hierarchy)
    parts = [part for part in (path or "").split("/") if part not in ("", ".", "..")]
    return [os.path.join(base, *parts[:depth]) for depth in range(len(parts), 0, -1)] + [base]


def available_memory(*, cgroup_root: str = "/sys/fs/cgroup") -> int | None:
    """Bytes this process could allocate now, or None where nothing is known.

    The smallest of: ``MemAvailable`` (``/proc/meminfo``), the limit less the usage other than
    page cache of its cgroup and of each cgroup above it (a batch job's, a container's; v2,
    else v1), and its address-space limit (``RLIMIT_AS``, as ``ulimit -v`` sets it) less its
    current size. Page cache counts as free, as in ``MemAvailable``: the kernel reclaims it.
    """
    found = []
    with contextlib.suppress(OSError, StopIteration, ValueError, IndexError):
        with open("/proc/meminfo") as meminfo:
            found.append(next(int(line.split()[1]) for line in meminfo if line.startswith("MemAvailable:")) * 1024)
    for hierarchy, limit_file, usage_file in _MEMORY_FILES:
        limits = [left for folder in _own_cgroups(cgroup_root, hierarchy)
                  if (left := _cgroup_memory_left(folder, limit_file, usage_file)) is not None]
        if limits:
            found.append(min(limits))
            break
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        found.append(max(0, soft - _address_space()))
    return min(found) if found else None


def _cgroup_memory_left(folder: str, limit_file: str, usage_file: str) -> int | None:
    """A cgroup's memory limit less what it uses other than page cache (its usage less its file
    pages; the limit alone where the usage cannot be read), or None where it sets no limit or
    cannot be read. Cached file pages count as free, as ``MemAvailable`` counts them: the kernel
    reclaims them when the cgroup needs the room."""
    try:
        with open(os.path.join(folder, limit_file)) as handle:
            limit = handle.read().strip()
    except OSError:
        return None
    if not limit.isdigit() or int(limit) >= _NO_LIMIT:
        return None
    usage = 0
    with contextlib.suppress(OSError, ValueError):
        with open(os.path.join(folder, usage_file)) as handle:
            usage = int(handle.read().strip())
    return min(int(limit), max(0, int(limit) - usage + _file_pages(folder)))


def _file_pages(folder: str) -> int:
    """Bytes of page cache a cgroup holds, from its ``memory.stat`` (0 where it cannot be read)."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        with open(os.path.join(folder, "memory.stat")) as handle:
            for line in handle:
                parts = line.split()
                if len(parts) == 2:
                    fields[parts[0]] = parts[1]
    for names in _FILE_PAGES:
        with contextlib.suppress(KeyError, ValueError):
            return sum(int(fields[name]) for name in names)
    return 0


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
    """Whole CPUs the CPU quotas of this process's cgroup and of those above it allow (the
    smallest, rounded up; v2 ``cpu.max``, else v1 ``cpu.cfs_quota_us``), or None where no quota
    is set or readable."""
    for hierarchy, quota_file, period_file in ((None, "cpu.max", None), ("cpu", "cpu.cfs_quota_us", "cpu.cfs_period_us")):
        quotas = [quota for folder in _own_cgroups(root, hierarchy)
                  if (quota := _cgroup_cpus(folder, quota_file, period_file)) is not None]
        if quotas:
            return min(quotas)
    return None


def _cgroup_cpus(folder: str, quota_file: str, period_file: str | None) -> int | None:
    try:
        with open(os.path.join(folder, quota_file)) as handle:
            fields = handle.read().split()
        if period_file is not None:
            with open(os.path.join(folder, period_file)) as handle:
                fields.append(handle.read().strip())
    except (OSError, ValueError):
        return None
    if len(fields) < 2 or fields[0] in ("max", "-1"):
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    if quota <= 0 or period <= 0:
        return None
    return -(-quota // period)


def describe_bytes(n: int) -> str:
    """``n`` bytes for a message: ``"3.00 GiB (3221225472 bytes)"``."""
    value, unit = float(n), "bytes"
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if value < 1024 or unit == "EiB":
            break
        value /= 1024
    return f"{n} bytes" if unit == "bytes" else f"{value:.2f} {unit} ({n} bytes)"


# A chunk that a core's cache holds while it is worked on twice (gathered, then scaled).
CACHE_BYTES = 512 << 10


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
