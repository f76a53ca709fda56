"""The one home of what an identifier read from a store may look like: build ids, slot keys and
file names. Anything read from a manifest, a pointer or a record passes through here before it
becomes part of a path, so that no edited or foreign file can name a place outside the cache.

Build ids are 32 lowercase hex digits (a 128-bit BLAKE2b digest), slot keys 20 (an 80-bit one);
a store file name is a known stem plus ``.npy``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ptychodata.errors import StoreCorruptError

__all__ = [
    "BUILD_ID_DIGITS",
    "KEY_DIGITS",
    "check_build_id",
    "check_key",
    "check_store_file_name",
    "inside",
    "is_build_id",
    "is_key",
]

BUILD_ID_DIGITS = 32
KEY_DIGITS = 20
_BUILD_ID = re.compile(rf"[0-9a-f]{{{BUILD_ID_DIGITS}}}")
_KEY = re.compile(rf"[0-9a-f]{{{KEY_DIGITS}}}")
_FILE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}\.npy")
REPAIR = (
    "the store was edited or damaged: 'ptychodata cache verify' lists what is wrong; remove it "
    "('ptychodata cache remove KEY', KEY the frames-<KEY> directory) and prepare it again"
)


def is_build_id(value: Any) -> bool:
    """Whether ``value`` is a build id: a str of exactly 32 lowercase hex digits."""
    return isinstance(value, str) and _BUILD_ID.fullmatch(value) is not None


def is_key(value: Any) -> bool:
    """Whether ``value`` is a slot key (frames or grouping): a str of exactly 20 lowercase hex digits."""
    return isinstance(value, str) and _KEY.fullmatch(value) is not None


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_build_id(value: Any, where: str) -> str:
    """``value`` if it is a build id, else ``StoreCorruptError`` naming ``where`` it was read
    (a file, and the field) and what was found."""
    if not is_build_id(value):
        raise StoreCorruptError(
            f"{where}: {_shown(value)} is not a build id (expected {BUILD_ID_DIGITS} lowercase hex digits); {REPAIR}"
        )
    return value


def check_key(value: Any, where: str) -> str:
    """``value`` if it is a slot key, else ``StoreCorruptError`` naming ``where`` it was read."""
    if not is_key(value):
        raise StoreCorruptError(
            f"{where}: {_shown(value)} is not a store key (expected {KEY_DIGITS} lowercase hex digits); {REPAIR}"
        )
    return value


def check_store_file_name(value: Any, where: str) -> str:
    """``value`` if it is the name of a store file (a letter, then letters, digits or ``_``,
    then ``.npy``: no separator, no ``..``, never absolute), else ``StoreCorruptError``."""
    if not isinstance(value, str) or _FILE_NAME.fullmatch(value) is None:
        raise StoreCorruptError(
            f"{where}: file name {_shown(value)}; expected a plain name such as 'patterns.npy' "
            f"(letters, digits and '_', then '.npy'); {REPAIR}"
        )
    return value


def inside(path: Path, root: Path, where: str) -> Path:
    """``path`` resolved (symbolic links followed), if that lies under ``root`` resolved;
    else ``StoreCorruptError``: a link or name that leads out of the store."""
    resolved, base = Path(path).resolve(), Path(root).resolve()
    if resolved != base and base not in resolved.parents:
        raise StoreCorruptError(f"{where}: {path} leads to {resolved}, outside {base}; {REPAIR}")
    return resolved
