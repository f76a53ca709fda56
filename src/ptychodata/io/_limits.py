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

import errno
import os
import stat
from pathlib import Path

from ptychodata._runtime import available_memory, describe_bytes
from ptychodata.errors import ScanDataError, ScanFileNotFoundError, ScanTooLargeError

__all__ = ["available_memory", "check_fits", "memory_budget", "regular_file"]

# The part of the available memory one array (or one decompressed stream) may take: the rest is for
# the copies that preparing it makes (counts to float32 amplitudes, crop, bin).
BUDGET_FRACTION = 0.5

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def memory_budget() -> int | None:
    """Bytes one array read from a file may take: :data:`BUDGET_FRACTION` of :func:`available_memory`."""
    available = available_memory()
    return None if available is None else int(available * BUDGET_FRACTION)


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
