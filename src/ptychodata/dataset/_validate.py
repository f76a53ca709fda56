"""What a dataset reads from files it did not just write (its manifests' scan records, the build
records of job arrays, claims), checked before any of it becomes a path or a process id.

A scan record names builds in the cache: its grouping path must be exactly
``frames-<key>/groupings/<key>`` and its build ids exactly build ids (the store's one pattern,
:func:`ptychodata.store.check_build_id`), so no record, edited or foreign, can make a dataset
read, pin or open anything outside the cache.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

from ptychodata.errors import StoreCorruptError
from ptychodata.store import check_build_id, check_key

__all__ = ["check_claim", "check_scan_build"]

_HEX = frozenset("0123456789abcdef")
_INTS = ("seed", "n_patterns", "n_groups", "N", "C", "bytes")
_FLAGS = ("has_probe", "has_Y", "has_mask")


def _fail(where: str, key: str, found: Any, expected: str) -> StoreCorruptError:
    text = repr(found)
    text = text if len(text) <= 80 else text[:77] + "..."
    return StoreCorruptError(
        f"{where}: key {key!r}: found {text} ({type(found).__name__}); expected {expected}; the record was edited "
        "or damaged (add the scan to the dataset again to rewrite it)"
    )


def _hex(value: Any, digits: int) -> bool:
    return isinstance(value, str) and len(value) == digits and set(value) <= _HEX


def _integer(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def check_scan_build(values: Any, where: str = "scan record") -> Any:
    """``values`` (a scan build record as JSON holds it) if every field that names a place or
    a size is what :func:`~ptychodata.dataset.prepare_scan` writes; else ``StoreCorruptError``
    naming the key, what was found and what was expected."""
    if not isinstance(values, Mapping):
        raise _fail(where, "build", values, "a JSON object")
    source = values.get("source")
    if not isinstance(source, Mapping):
        raise _fail(where, "source", source, "a JSON object")
    path = source.get("path")
    if not isinstance(path, str) or not os.path.isabs(path):
        raise _fail(where, "source.path", path, "an absolute path")
    for key in ("size", "mtime_ns"):
        if not _integer(source.get(key), 0 if key == "size" else -(2**63)):
            raise _fail(where, f"source.{key}", source.get(key), "an integer")
    if not _hex(source.get("sha256"), 64):
        raise _fail(where, "source.sha256", source.get("sha256"), "64 hex digits")
    uid = values.get("uid")
    if not isinstance(uid, str) or not source["sha256"].startswith(uid) or not 8 <= len(uid) <= 64:
        raise _fail(where, "uid", uid, f"the first hex digits of source.sha256 ({source['sha256'][:20]}...)")
    name = values.get("name")
    if not isinstance(name, str) or not name or "/" in name or "\0" in name or name in (".", ".."):
        raise _fail(where, "name", name, "a file name (no '/')")
    frames_key = check_key(values.get("frames_key"), f"{where}: key 'frames_key'")
    check_build_id(values.get("frames_build_id"), f"{where}: key 'frames_build_id'")
    check_build_id(values.get("grouping_build_id"), f"{where}: key 'grouping_build_id'")
    grouping_path = values.get("grouping_path")
    parts = grouping_path.split("/") if isinstance(grouping_path, str) else []
    if len(parts) != 3 or parts[:2] != [f"frames-{frames_key}", "groupings"]:
        raise _fail(where, "grouping_path", grouping_path, f"'frames-{frames_key}/groupings/<key>'")
    check_key(parts[2], f"{where}: key 'grouping_path'")
    for key in _INTS:
        if not _integer(values.get(key), 0):
            raise _fail(where, key, values.get(key), "a non-negative integer")
    for key in _FLAGS:
        if not isinstance(values.get(key), bool):
            raise _fail(where, key, values.get(key), "true or false")
    for key in ("x_scale", "intensity_scale", "nphotons", "seconds"):
        value = values.get(key)
        if value is None and key in ("intensity_scale", "nphotons"):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise _fail(where, key, value, "a finite number >= 0")
    return values


def check_claim(values: Any, where: str = "claim") -> Any:
    """``values`` (a claim file's JSON) if it names a path, a host, a process id > 0 and finite
    times; else ``StoreCorruptError`` (a claim is never trusted to name process 0 or -1)."""
    if not isinstance(values, Mapping):
        raise _fail(where, "claim", values, "a JSON object")
    if not isinstance(values.get("path"), str) or not isinstance(values.get("host"), str):
        raise _fail(where, "path/host", (values.get("path"), values.get("host")), "strings")
    if not _integer(values.get("pid"), 1):
        raise _fail(where, "pid", values.get("pid"), "a process id > 0")
    for key in ("time", "expires"):
        value = values.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _fail(where, key, value, "a finite number (seconds since the epoch)")
    return values
