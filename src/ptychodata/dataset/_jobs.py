"""Preparing a dataset's scans from job arrays and shared lists, with no scheduler and no lock.

A worker prepares one scan (``prepare-scan --index I``) or loops over a list taking scans
through *claims*: files created exclusively, naming the host, the process and an expiry. What
it built is recorded beside the dataset; ``dataset add --built-only`` then publishes the
recorded builds without preparing anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from ptychodata._runtime import create_exclusive
from ptychodata.dataset._manifest import DatasetPaths, write_json_atomic
from ptychodata.dataset._scan_build import ScanBuild, source_path
from ptychodata.dataset._validate import check_claim, check_scan_build
from ptychodata.errors import ParameterError

__all__ = ["ARRAY_INDEX_VARIABLES", "array_index", "claim", "read_list", "read_record", "write_record"]

ARRAY_INDEX_VARIABLES = ("SLURM_ARRAY_TASK_ID", "PBS_ARRAY_INDEX", "PBS_ARRAYID")
CLAIM_EXPIRY_S = 6 * 3600


def read_list(path: str | os.PathLike) -> list[str]:
    """The scan files a list names, one a line (blank lines and ``#`` comments skipped), resolved
    against the list's folder when relative."""
    listing = Path(path)
    try:
        lines = listing.read_text().splitlines()
    except OSError as exc:
        raise ParameterError(f"{listing}: cannot read the list of scans ({exc.strerror})") from None
    names = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return [source_path(listing.parent / name) for name in names]


def array_index(given: int | None, length: int) -> int:
    """The job-array index: ``given``, else the first of ``SLURM_ARRAY_TASK_ID``,
    ``PBS_ARRAY_INDEX``, ``PBS_ARRAYID`` that is set; checked against the list's length."""
    where = "index"
    if given is None:
        for name in ARRAY_INDEX_VARIABLES:
            if os.environ.get(name, "").strip():
                where, text = name, os.environ[name].strip()
                if not text.isdigit():
                    raise ParameterError(f"{name}={text!r}; expected a non-negative integer")
                given = int(text)
                break
        else:
            raise ParameterError(f"no index given and none of {', '.join(ARRAY_INDEX_VARIABLES)} is set")
    if not 0 <= given < length:
        raise ParameterError(f"{where}={given}; the list names {length} scan(s), so expected 0 <= index < {length}")
    return given


def _key(path: str) -> str:
    return hashlib.blake2b(path.encode(), digest_size=12).hexdigest()


def write_record(paths: DatasetPaths, build: ScanBuild) -> None:
    """Record that ``build`` was made for its source, for ``dataset add --built-only``."""
    write_json_atomic(paths.root / "built" / f"{_key(build.source.path)}.json", build.to_dict())


def read_record(paths: DatasetPaths, path: str) -> ScanBuild | None:
    """The recorded build of ``path``, if there is one and the file is unchanged since."""
    try:
        values = json.loads((paths.root / "built" / f"{_key(path)}.json").read_text())
        build = ScanBuild.from_dict(check_scan_build(values))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return build if build.source.path == path and build.source.unchanged() else None


def claim(paths: DatasetPaths, path: str, *, expiry_s: float = CLAIM_EXPIRY_S) -> bool:
    """Take scan ``path`` for this process: True when no live claim of another holds it.

    A claim is created exclusively; one whose process on this host is gone, or older than
    ``expiry_s``, is taken over.
    """
    target = paths.root / "claims" / f"{_key(path)}.json"
    mine = {"path": path, "host": socket.gethostname(), "pid": os.getpid(), "time": time.time(),
            "expires": time.time() + expiry_s}
    if create_exclusive(target, json.dumps(mine)):
        return True
    if not _stale(target):
        return False
    write_json_atomic(target, mine)
    return True


def _stale(target: Path) -> bool:
    try:
        held: dict[str, Any] = check_claim(json.loads(target.read_text()))
        if time.time() > float(held["expires"]):
            return True
        if held["host"] == socket.gethostname() and int(held["pid"]) != os.getpid():
            os.kill(int(held["pid"]), 0)
        return False
    except ProcessLookupError:
        return True
    except (OSError, ValueError, KeyError, TypeError):
        return False  # unreadable (being written): leave it
