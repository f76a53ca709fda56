"""The one home of what an identifier read from a store may look like: build ids, slot keys and
file names. Anything read from a manifest, a pointer or a record passes through here before it
becomes part of a path, so that no edited or foreign file can name a place outside the cache.

Build ids are 32 lowercase hex digits (a 128-bit BLAKE2b digest), slot keys 20 (an 80-bit one);
a store file name is a known stem plus ``.npy``.
"""

from __future__ import annotations

import os
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
    "is_build_id",
    "is_key",
    "not_a_link",
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


def not_a_link(path: Path, where: str) -> Path:
    """``path`` if neither it nor its parent is a symbolic link (a build directory and the
    ``builds`` directory holding it are always real directories in a store), else
    ``StoreCorruptError``: a link would lead out of the store."""
    for part in (Path(path), Path(path).parent):
        if part.is_symlink():
            raise StoreCorruptError(f"{where}: {part} is a symbolic link (to {os.readlink(part)}); a store's builds "
                                    f"never are, so it would lead out of the store; {REPAIR}")
    return Path(path)
