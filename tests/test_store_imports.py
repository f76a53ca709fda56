"""The import rules of the store and torch packages, read from their source.

Every import counts: module level, inside functions, and under ``TYPE_CHECKING``.
"""

import ast
from pathlib import Path

import pytest

import ptychodata

PACKAGE_ROOT = Path(ptychodata.__file__).parent
OWN = ("ptychodata.store", "ptychodata.torch")


def _module_names() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE_ROOT.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


MODULES = _module_names()


def _imports(module: str) -> set[str]:
    """The ptychodata modules ``module`` imports, anywhere in its source."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in MODULES else base)
    return {name for name in found if name in MODULES}


GRAPH = {module: _imports(module) for module in MODULES}


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in GRAPH[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(GRAPH):
        if node not in index:
            visit(node)
    return components


def test_the_scan_finds_the_store_and_torch_modules_and_their_imports():
    assert "ptychodata.store._prepare" in MODULES and "ptychodata.torch._dataset" in MODULES
    assert "ptychodata.store._store" in GRAPH["ptychodata.store._prepare"]
    assert "ptychodata.store" in GRAPH["ptychodata.torch._dataset"]


def test_no_import_cycle_passes_through_store_or_torch():
    touching = [c for c in _cycles() if any(_in(m, package) for m in c for package in OWN)]
    assert touching == []


@pytest.mark.parametrize("package", OWN)
def test_private_modules_of_other_packages_are_not_imported(package):
    """A private module (``_name``) is imported only from inside the package that holds it;
    elsewhere through that package's ``__init__``."""
    wrong = []
    for module in (m for m in MODULES if _in(m, package)):
        for target in GRAPH[module]:
            parts = target.split(".")
            for i, part in enumerate(parts):
                owner = ".".join(parts[:i])
                if part.startswith("_") and not _in(module, owner):
                    wrong.append(f"{module} imports {target}")
    assert wrong == []


def test_imports_go_one_way_store_below_torch_below_cli():
    upward = [
        f"{module} imports {target}"
        for module in MODULES
        for target in GRAPH[module]
        if (_in(module, "ptychodata.store") and (_in(target, "ptychodata.torch") or _in(target, "ptychodata.cli")))
        or (_in(module, "ptychodata.torch") and _in(target, "ptychodata.cli"))
        or (any(_in(module, p) for p in OWN) and target == "ptychodata")
    ]
    assert upward == []
