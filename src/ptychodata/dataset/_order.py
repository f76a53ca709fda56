"""Epoch orders that stay put when a dataset changes.

Each group of a dataset has an identity made of its scan's uid and its index in that scan;
an epoch's order sorts the groups by a 64-bit key mixed from (seed, epoch, identity). Adding
a scan inserts its groups among the others without moving them relative to each other, and a
run resumed after a change can tell, by key, which groups it has served.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

__all__ = ["GroupKeys", "mix64"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def mix64(values: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
    """splitmix64's finaliser over a uint64 array: a bijection that scatters nearby values.

    With ``out`` (a uint64 array of the same shape, ``values`` itself allowed) the work is done
    there, with one temporary of the array's size.
    """
    z = np.add(np.asarray(values, np.uint64), _GOLDEN, out=out)
    shifted = np.empty_like(z)
    for shift, factor in ((30, _M1), (27, _M2)):
        np.right_shift(z, np.uint64(shift), out=shifted)
        np.bitwise_xor(z, shifted, out=z)
        np.multiply(z, factor, out=z)
    np.right_shift(z, np.uint64(31), out=shifted)
    return np.bitwise_xor(z, shifted, out=z)


def _uid64(uid: str) -> np.uint64:
    return np.uint64(int.from_bytes(hashlib.blake2b(uid.encode(), digest_size=8).digest(), "little"))


@dataclass(frozen=True, eq=False)
class GroupKeys:
    """The identities of a dataset's groups (in its order) and what it is.

    Attributes
    ----------
    identities : ndarray of shape (B,), uint64
        One per group: mixed from its scan's uid and its index in the scan.
    fingerprint : str
        The dataset build's id.
    uids : tuple of str
        The dataset's scans.
    """

    identities: np.ndarray = field(repr=False)
    fingerprint: str
    uids: tuple[str, ...]

    @classmethod
    def of(cls, uids: list[str], scan: np.ndarray, local: np.ndarray, fingerprint: str) -> GroupKeys:
        """Keys of the groups ``local[i]`` of scans ``uids[scan[i]]``."""
        uid64 = np.array([_uid64(uid) for uid in uids], np.uint64)
        identities = mix64(np.asarray(local, np.int64).astype(np.uint64) ^ uid64[np.asarray(scan, np.int64)])
        return cls(identities, fingerprint, tuple(uids))

    def keys(self, seed: int, epoch: int) -> np.ndarray:
        """(B,) uint64: each group's place in epoch ``epoch`` of a run seeded ``seed``."""
        salt = mix64(np.array([int(seed) & (2**64 - 1)], np.uint64) ^ mix64(np.array([int(epoch)], np.uint64)))
        keys = np.bitwise_xor(self.identities, salt[0])
        return mix64(keys, out=keys)

    def order(self, seed: int, epoch: int) -> np.ndarray:
        """(B,) int64: the groups in key order (keys of distinct identities differ: the mix is a bijection)."""
        return np.argsort(self.keys(seed, epoch))
