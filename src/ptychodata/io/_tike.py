"""tike's ``.npz`` (also bz2-compressed, as tike's own test data): unshifted counts, corner positions.

``data`` (1, M, N, N) or (M, N, N): photon counts with zero frequency in the array corners;
``scan`` (1, M, 2) or (M, 2): (row, col) in object pixels of each probe window's minimum
corner, so the centre is x = col + N/2, y = row + N/2; ``probe`` (1, 1, 1, 1, N, N)
[view, position, OPR mode, incoherent mode, N, N] (first mode by default).
"""

from __future__ import annotations

from typing import Any

from ptychodata.io._raw import RawScan, positions_from_columns, squeeze_frames

NAME = "tike"


def can_read(container: Any) -> bool:
    return container.kind == "npz" and "data" in container and "scan" in container


def read(container: Any, options: Any) -> RawScan:
    path = container.path
    patterns = squeeze_frames(container.raw("data"), "data", path, pattern_axis=options.pattern_axis)
    x, y = positions_from_columns(container.read("scan"), "yx", "scan", path)
    probe = container.get("probe")
    return RawScan(
        format=NAME,
        path=path,
        patterns=patterns,
        patterns_key="data",
        positions_keys=("scan", "scan"),
        x=x,
        y=y,
        position_unit="px",
        position_origin="corner",
        probe=probe,
        counts=True,
        counts_reason="tike stores measured intensities (counts)",
        shifted=False,
        shifted_reason="tike stores patterns unshifted (zero frequency in the corners)",
        extras={key: container.read(key) for key in container if key not in ("data", "scan", "probe")},
        notes=["positions: tike's (row, col) window corners, centre x = col + N/2, y = row + N/2"],
    )
