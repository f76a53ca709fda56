"""What a file may make this process allocate, and which paths may be opened as scan files.

Sizes a file declares (an ``.npy`` header, a zip entry, an HDF5 dataset's shape or chunks, a
compressed stream) are checked here before anything is allocated: against the memory this process
can still use (the smallest of the machine's available memory, its container's limit and its own
address-space limit) and, where the data must be in the file, against the file. A path is opened as
a scan file only when it is a regular file: a FIFO (which would block the reader), a socket, a
device (``/dev/zero`` would never end), a directory or a loop of symbolic links is refused by name,
from ``stat`` alone.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import stat
from pathlib import Path

from ptychodata.errors import ScanDataError, ScanFileNotFoundError, ScanTooLargeError

__all__ = ["available_memory", "check_fits", "describe_bytes", "memory_budget", "regular_file"]

# The part of the available memory one array (or one decompressed stream) may take: the rest is for
# the copies that preparing it makes (counts to float32 amplitudes, crop, bin).
BUDGET_FRACTION = 0.5

# A container's "no limit" in cgroup v1 is a huge number; anything above this is no limit.
_NO_LIMIT = 1 << 60

_CGROUP_FILES = (
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
    ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
)

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
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
            with open(usage_file) as handle:
                usage = int(handle.read().strip())
        except (OSError, ValueError):
            continue
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


def memory_budget() -> int | None:
    """Bytes one array read from a file may take: :data:`BUDGET_FRACTION` of :func:`available_memory`."""
    available = available_memory()
    return None if available is None else int(available * BUDGET_FRACTION)


def describe_bytes(n: int) -> str:
    """``n`` bytes for a message: ``"3.00 GiB (3221225472 bytes)"``."""
    value, unit = float(n), "bytes"
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if value < 1024 or unit == "EiB":
            break
        value /= 1024
    return f"{n} bytes" if unit == "bytes" else f"{value:.2f} {unit} ({n} bytes)"


def check_fits(nbytes: int, where: str, what: str) -> None:
    """Raise ``ScanTooLargeError`` when ``nbytes`` exceed :func:`memory_budget`.

    ``where`` names the file and key (``"scan.h5: dataset '/x': "``), ``what`` the thing that
    needs the memory (``"shape (10000000000,) float64"``).
    """
    budget = memory_budget()
    if budget is not None and nbytes > budget:
        raise ScanTooLargeError(
            f"{where}{what} needs {describe_bytes(nbytes)} in memory, more than the {describe_bytes(budget)} "
            f"this process can take now (half the memory available); the file declares more than fits"
            " (forged or damaged), or needs a machine with more memory"
        )


def regular_file(path: str | os.PathLike, expected: str) -> Path:
    """``path`` as a Path when it names a regular file (links followed), else a named error.

    Decided by ``stat`` alone, nothing is opened: ``ScanFileNotFoundError`` when nothing is there
    (also a link to nothing), ``ScanDataError`` for a directory, FIFO, socket, device or a loop of
    symbolic links, saying what it is and that ``expected`` was expected.
    """
    path = Path(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise ScanFileNotFoundError(
                f"{path}: no such file (a symbolic link to {os.readlink(path)!r}, which does not exist)"
            ) from None
        raise ScanFileNotFoundError(f"{path}: no such file") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ScanDataError(f"{path}: a loop of symbolic links, not a file; expected {expected}") from None
        if exc.errno == errno.ENOTDIR:
            raise ScanFileNotFoundError(f"{path}: no such file (a part of the path is not a directory)") from None
        raise ScanDataError(f"{path}: cannot be read ({exc.strerror}); expected {expected}") from None
    if not stat.S_ISREG(info.st_mode):
        kind = next((name for test, name in _KINDS if test(info.st_mode)), "not a regular file")
        via = f" (through the symbolic link to {os.path.realpath(path)!r})" if os.path.islink(path) else ""
        raise ScanDataError(f"{path}: is {kind}{via}, not a regular file; expected {expected}")
    return path
