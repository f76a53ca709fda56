"""A file's ``_metadata`` record: JSON, and the photon count it may state."""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np

from ptychodata.errors import ScanDataError

__all__ = ["metadata_nphotons", "parse_metadata"]


def parse_metadata(value: np.ndarray | None, where: str) -> dict[str, Any]:
    """The ``_metadata`` JSON object: a 0-d str array (ours) or a 0-d object array holding a
    str (PtychoPINN's metadata manager; read by the NPZ reader without free unpickling)."""
    if value is None:
        return {}
    if isinstance(value, np.ndarray) and value.size != 1:
        raise ScanDataError(
            f"{where}key '_metadata': shape {value.shape}, dtype {value.dtype}; expected a 0-d array holding "
            "a JSON string"
        )
    text = value.item() if isinstance(value, np.ndarray) else value
    try:
        if isinstance(text, bytes):
            text = text.decode()
        metadata = json.loads(str(text))
    except UnicodeDecodeError as exc:
        raise ScanDataError(f"{where}key '_metadata': not UTF-8 text ({exc})") from exc
    except json.JSONDecodeError as exc:
        raise ScanDataError(f"{where}key '_metadata': not valid JSON ({exc})") from exc
    except RecursionError as exc:
        raise ScanDataError(f"{where}key '_metadata': JSON nested too deeply to read") from exc
    if not isinstance(metadata, dict):
        raise ScanDataError(f"{where}key '_metadata': JSON {type(metadata).__name__}; expected an object")
    return metadata


def metadata_nphotons(metadata: Mapping[str, Any], where: str) -> float | None:
    """``nphotons`` from the top level or ``physics_parameters`` (PtychoPINN); None if neither."""
    physics = metadata.get("physics_parameters")
    if physics is not None and not isinstance(physics, Mapping):
        raise ScanDataError(
            f"{where}key '_metadata': physics_parameters is a {type(physics).__name__}; "
            "expected a JSON object"
        )
    found = {
        name: value
        for name, value in (("nphotons", metadata.get("nphotons")),
                            ("physics_parameters.nphotons", (physics or {}).get("nphotons")))
        if value is not None
    }
    photons: dict[str, float] = {}
    for name, value in found.items():
        number = value if isinstance(value, numbers.Real) and not isinstance(value, bool) else None
        if number is None or not (math.isfinite(number) and number > 0):
            raise ScanDataError(
                f"{where}key '_metadata': {name} = {value!r}; expected a positive finite number of photons"
            )
        photons[name] = float(number)
    if len(set(photons.values())) > 1:
        raise ScanDataError(
            f"{where}key '_metadata': nphotons = {photons['nphotons']!r} but physics_parameters.nphotons = "
            f"{photons['physics_parameters.nphotons']!r}; expected one value (or only one of the two keys)"
        )
    return next(iter(photons.values()), None)
