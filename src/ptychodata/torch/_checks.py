"""The check of ``with_Y`` that the dataset and the loader share."""

from __future__ import annotations

from typing import Any

from ptychodata.errors import ParameterError

__all__ = ["check_with_Y"]


def check_with_Y(with_Y: Any) -> None:
    """``with_Y`` is True, False or ``"device"``, else ``ParameterError``."""
    if with_Y not in (True, False, "device"):
        raise ParameterError(f"with_Y={with_Y!r}; expected True, False or 'device'")

