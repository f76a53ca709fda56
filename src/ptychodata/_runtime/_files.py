"""Small files written so that a reader sees the old content or the new, never a part: by an
atomic rename, or by an exclusive create that only one process can win."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["create_exclusive", "write_text_atomic"]


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` beside ``path`` under a name of this process's, fsync, then rename it over
    ``path`` (its folder is created if needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".tmp-{path.name}-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        with open(temporary, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def create_exclusive(path: Path, text: str) -> bool:
    """Create ``path`` holding ``text`` (fsync-ed) if no file is there: True for the one process
    that created it, False where it existed. Needs no lock, on local and network file systems."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(handle, text.encode())
        os.fsync(handle)
    finally:
        os.close(handle)
    return True
