"""Group centres and relative offsets (contract §3).

Coordinates are in object pixels, x = column, y = row, laid out PtychoPINN-style as
(B, 1, 2, C) with axis 2 holding (x, y).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["GroupCoords", "group_coords", "grouped_coords", "stored_group_coords"]


@dataclass(frozen=True)
class GroupCoords:
    """Member positions of each group, their centre, and the offsets to it.

    Attributes
    ----------
    nn : ndarray of shape (B, 1, 2, C), float64
        ``nn[b, 0, :, c]`` = (x_c, y_c) of member c.
    offsets : ndarray of shape (B, 1, 2, 1), float64
        Group centre, the mean member position.
    relative : ndarray of shape (B, 1, 2, C), float64
        −(p_c − centre): the shift that brings member c's content to the centre
        (PtychoPINN's ``local_offset_sign = -1``).
    """

    nn: np.ndarray
    offsets: np.ndarray
    relative: np.ndarray


def group_coords(x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> GroupCoords:
    """Coordinates of groups (§3).

    Parameters
    ----------
    x, y : ndarray of shape (M,)
        Scan positions (columns, rows) in object pixels.
    groups : ndarray of shape (B, C), int
        Member indices into x and y.
    """
    nn = _member_positions(x, y, groups)
    offsets = nn.mean(axis=3, keepdims=True)
    relative = -(nn - offsets)
    return GroupCoords(nn=nn, offsets=offsets, relative=relative)


def stored_group_coords(
    x: np.ndarray, y: np.ndarray, groups: np.ndarray, centres: np.ndarray, relative: np.ndarray
) -> GroupCoords:
    """:class:`GroupCoords` from a store's tables instead of recomputing them.

    Parameters
    ----------
    x, y : ndarray of shape (M,)
    groups : ndarray of shape (B, C), int
    centres : ndarray of shape (B, 2), float64
        Group centres (x, y), as :func:`group_coords` computed them.
    relative : ndarray of shape (B, C, 2), float64
        Offsets of each member, last axis (x, y).
    """
    return GroupCoords(
        nn=_member_positions(x, y, groups),
        offsets=np.asarray(centres, np.float64)[:, None, :, None],
        relative=np.ascontiguousarray(np.asarray(relative, np.float64).transpose(0, 2, 1))[:, None],
    )


def _member_positions(x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """(B, 1, 2, C) float64 positions of each group's members."""
    return np.stack([np.asarray(x, np.float64)[groups], np.asarray(y, np.float64)[groups]], axis=1)[:, None]


def grouped_coords(
    x: np.ndarray,
    y: np.ndarray,
    x_start: np.ndarray,
    y_start: np.ndarray,
    groups: np.ndarray,
    *,
    stored: tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
) -> dict[str, np.ndarray]:
    """The six coordinate keys of the §6 grouped dict: ``coords_{nn,offsets,relative}`` from
    the positions and ``coords_start_*`` from the nominal (start) positions.

    ``stored`` = ((centres, start centres), (relative, start relative)) takes the centres
    and offsets from a store (see :func:`stored_group_coords`) instead of computing them.
    """
    if stored is None:
        measured = group_coords(x, y, groups)
        nominal = group_coords(x_start, y_start, groups)
    else:
        (centres, centres_start), (relative, relative_start) = stored
        measured = stored_group_coords(x, y, groups, centres, relative)
        nominal = stored_group_coords(x_start, y_start, groups, centres_start, relative_start)
    return {
        "coords_nn": measured.nn,
        "coords_offsets": measured.offsets,
        "coords_relative": measured.relative,
        "coords_start_nn": nominal.nn,
        "coords_start_offsets": nominal.offsets,
        "coords_start_relative": nominal.relative,
    }
