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


def mix64(values: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser over a uint64 array: a bijection that scatters nearby values."""
    z = np.asarray(values, np.uint64) + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


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
        return mix64(self.identities ^ salt[0])

    def order(self, seed: int, epoch: int) -> np.ndarray:
        """(B,) int64: the groups in key order (ties, which are rare, by position)."""
        return np.argsort(self.keys(seed, epoch), kind="stable").astype(np.int64)
