"""Argument checks the torch layer's dataset, loader and resident store share."""

from __future__ import annotations

from typing import Any

from ptychodata.errors import ParameterError

__all__ = ["check_with_Y", "require_ground_truth"]


def check_with_Y(with_Y: Any) -> None:
    """``with_Y`` is True, False or ``"device"``, else ``ParameterError``."""
    if with_Y not in (True, False, "device"):
        raise ParameterError(f"with_Y={with_Y!r}; expected True, False or 'device'")


def require_ground_truth(store: Any) -> None:
    """``ParameterError`` unless ``store`` can serve ground-truth patches Y."""
    if not store.has_ground_truth:
        raise ParameterError(f"{store.path}: the store has no object or Y, so with_Y cannot be served")
