"""The group keys of scans of given sizes, as a dataset makes them: for the order tests."""

from __future__ import annotations

import numpy as np

from ptychodata.dataset import GroupKeys, Weights


def keys_of(sizes: dict[str, int], fingerprint: str = "f", weights: Weights | None = None,
            tags: dict[str, dict[str, str]] | None = None) -> GroupKeys:
    """Keys of scans ``sizes`` (uid: groups; in uid order), weighted by ``weights`` over the
    scans' ``tags`` where given."""
    uids = sorted(sizes)
    scan = np.concatenate([np.full(sizes[u], k) for k, u in enumerate(uids)])
    local = np.concatenate([np.arange(sizes[u]) for u in uids])
    mixing = None
    if weights is not None:
        mixing = weights.plan(uids, [(tags or {}).get(u, {}) for u in uids], [sizes[u] for u in uids]).check()
    return GroupKeys.of(uids, scan, local, fingerprint, mixing=mixing)
