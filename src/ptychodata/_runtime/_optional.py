"""Optional dependencies: one way to import them, one error that names the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from ptychodata.errors import MissingDependencyError

# module -> the ``pip install 'ptychodata[EXTRA]'`` extra that brings it.
EXTRAS = {
    "torch": "torch",
    "tensordict": "tensordict",
    "dask": "dask",
    "distributed": "dask",
    "ptychodus": "interop",
}


def optional_import(module: str, *, purpose: str) -> ModuleType:
    """Import ``module`` or raise ``MissingDependencyError`` saying what needs it and what to install.

    Parameters
    ----------
    module : str
        The module's import name (``"torch"``, ``"tensordict"``).
    purpose : str
        What needs it, as the user asked for it (``"layout='ptycho_torch'"``).
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.partition(".")[0]
        extra = EXTRAS.get(top)
        how = f"pip install 'ptychodata[{extra}]'" if extra else f"pip install {top}"
        raise MissingDependencyError(f"{purpose} needs {top}, which is not installed: {how}") from exc


def is_installed(module: str) -> bool:
    """Whether ``module`` can be imported (imports it if so)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True
