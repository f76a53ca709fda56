"""The package's import graph: imports go one way, through packages' front doors, with no cycle.

Layers, lowest first: runtime helpers and errors → io (readers) → scan → grouping, patches,
normalisation and the other array-level modules → store → torch and plots → cli. A module may
import from its own layer or a lower one; the graph has no cycle (function-level imports
included); nothing imports the package root; a private module (``_name``) is imported only from
inside the package that holds it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "ptychodata"

LAYERS = [
    ("ptychodata.errors", "ptychodata._runtime"),
    ("ptychodata.io",),
    ("ptychodata.scan",),
    (
        "ptychodata.coords",
        "ptychodata.grouping",
        "ptychodata.grouping_ptycho_torch",
        "ptychodata.patches",
        "ptychodata.normalize",
        "ptychodata.grouped",
        "ptychodata.simulate",
        "ptychodata.summary",
    ),
    ("ptychodata.store",),
    ("ptychodata.dataset",),
    ("ptychodata.torch", "ptychodata.plot"),
    ("ptychodata.cli",),
]


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


MODULES = _modules()


def _imports(name: str) -> set[str]:
    path = MODULES[name]
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    return _imports_in(path.read_text(), name, package)


def _imports_in(source: str, name: str, package: list[str]) -> set[str]:
    """Modules of the package that ``source`` imports anywhere in its body (resolved, relative too)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        found.update(target for target in targets if target in MODULES and target != name)
    return found


GRAPH = {name: _imports(name) for name in MODULES}


def _layer(name: str) -> int | None:
    for rank, prefixes in enumerate(LAYERS):
        if any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes):
            return rank
    return None


def test_every_module_has_a_layer():
    assert [name for name in MODULES if name != "ptychodata" and _layer(name) is None] == []


def test_imports_go_down_the_layers():
    upward = [
        f"{name} ({_layer(name)}) imports {target} ({_layer(target)})"
        for name, targets in GRAPH.items()
        if name != "ptychodata"
        for target in targets
        if _layer(target) > _layer(name)
    ]
    assert upward == []


def test_nothing_imports_the_package_root():
    assert [name for name, targets in GRAPH.items() if "ptychodata" in targets] == []


def test_private_modules_are_imported_only_from_inside_their_package():
    trespass = []
    for name, targets in GRAPH.items():
        for target in targets:
            parts = target.split(".")
            private = [i for i, part in enumerate(parts) if part.startswith("_")]
            if not private:
                continue
            owner = ".".join(parts[: private[-1]])
            if not name.startswith(owner + ".") and name != owner:
                trespass.append(f"{name} imports {target}")
    assert trespass == []


def test_the_import_graph_has_no_cycle():
    state: dict[str, int] = {}
    cycles = []

    def visit(name: str, stack: list[str]) -> None:
        state[name] = 1
        for target in sorted(GRAPH[name] - {"ptychodata"}):
            if state.get(target) == 1:
                cycles.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif target not in state:
                visit(target, stack + [target])
        state[name] = 2

    for name in sorted(MODULES):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_the_checker_finds_function_level_and_relative_imports():
    source = "class A:\n    def f(self):\n        from ptychodata.store import open_store\n        from . import _counts\n"
    found = _imports_in(source, "ptychodata.io._plan", ["ptychodata", "io"])
    assert found == {"ptychodata.store", "ptychodata.io._counts"}


@pytest.mark.parametrize("module", ["ptychodata", "ptychodata.io", "ptychodata.store", "ptychodata.summary"])
def test_importing_the_numpy_core_imports_no_torch(module):
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
