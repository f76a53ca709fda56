"""MkDocs hooks that generate the reference pages from the code, at every build.

- ``reference/cli.md``: the ``ptychodata`` command and each sub-command, from the argparse parser
  (``ptychodata.cli.build_parser``), so every flag, default and help text is the code's.
- ``reference/api/*.md``: one page per public module, listing every public name (the module's
  ``__all__``, or the names it defines without a leading underscore) for mkdocstrings to render
  from the docstrings. ``ptychodata`` itself gets the names of ``ptychodata.__all__``; a module's
  page leaves out the names already documented there and links to them instead.

The navigation's ``API reference`` entry is replaced by the generated pages, so a new public
module or name appears in the site without editing ``mkdocs.yml``. ``mkdocs build --strict``
fails on any name that cannot be rendered or cross-reference that cannot be resolved.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

import griffe
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "ptychodata"
API_DIR = "reference/api"
CLI_PAGE = "reference/cli.md"
API_NAV_TITLE = "API reference"
HELP_WIDTH = "100"  # columns of the argparse help shown on the CLI page, so the page does not depend on a terminal


# --------------------------------------------------------------------------- public names
def _load_package() -> griffe.Module:
    return griffe.load(PACKAGE, search_paths=[str(ROOT / "src")], resolve_aliases=False)


def _public_modules(package: griffe.Module) -> list[griffe.Module]:
    """The package and its public modules and subpackages (no ``_private`` ones), depth first."""
    found = [package]
    for name, member in sorted(package.members.items()):
        if name.startswith("_") or member.is_alias or not member.is_module:
            continue
        found.extend(_public_modules(member))
    return found


def _public_names(module: griffe.Module) -> list[str]:
    """The module's ``__all__`` (in its order), else the public names it defines itself."""
    if module.exports is not None:
        return [name if isinstance(name, str) else name.name for name in module.exports]
    return [
        name
        for name, member in module.members.items()
        if not name.startswith("_") and not member.is_alias and not member.is_module
    ]


def _target(obj: griffe.Object | griffe.Alias) -> str:
    """The path of the object a name finally refers to (its canonical path when it resolves)."""
    try:
        return obj.final_target.path if obj.is_alias else obj.path
    except (griffe.AliasResolutionError, griffe.CyclicAliasError):
        return obj.target_path


def _render(module: str | None, objects: list[str], level: int) -> list[str]:
    """mkdocstrings blocks: the module's docstring alone (no heading), then each object under its heading."""
    lines = []
    if module is not None:
        lines += [f"::: {module}", "    options:", "      members: false", "      show_root_heading: false",
                  "      show_root_toc_entry: false", ""]  # fmt: skip
    for path in objects:
        lines += [f"::: {path}", "    options:", f"      heading_level: {level}", ""]
    return lines


def _page_name(module: griffe.Module) -> str:
    return f"{API_DIR}/{module.path}.md"


def _api_pages(package: griffe.Module) -> dict[str, str]:
    """Markdown of every API page, by its path under ``docs/``."""
    modules = _public_modules(package)
    module_paths = {module.path for module in modules}
    top_names = [
        name for name in _public_names(package) if name != "__version__" and f"{PACKAGE}.{name}" not in module_paths
    ]
    on_top = {_target(package.members[name]): name for name in top_names if name in package.members}

    pages = {}
    by_source: dict[str, list[str]] = {}
    for name in top_names:
        source = _target(package.members[name]).split(".")
        by_source.setdefault(".".join(source[:2]), []).append(name)
    lines = [
        f"# `{PACKAGE}`",
        "",
        f"`import {PACKAGE}` gives these names (`{PACKAGE}.__all__`); `{PACKAGE}.__version__` is the "
        "version. Each section holds the names that come from one module, whose own page lists the rest "
        "of it.",
        "",
        *_render(PACKAGE, [], 2),
    ]
    for source, names in by_source.items():
        link = f"[`{source}`]({source}.md)" if source in module_paths and source != PACKAGE else f"`{source}`"
        lines += [f"## From {link}", "", *_render(None, [f"{PACKAGE}.{name}" for name in names], 3)]
    pages[_page_name(package)] = "\n".join(lines)

    for module in modules[1:]:
        names = _public_names(module)
        here = [name for name in names if name not in module.members or _target(module.members[name]) not in on_top]
        elsewhere = [name for name in names if name not in here]
        lines = [f"# `{module.path}`", "", *_render(module.path, [f"{module.path}.{name}" for name in here], 2)]
        if elsewhere:
            links = ", ".join(
                f"[`{name}`][{PACKAGE}.{on_top[_target(module.members[name])]}]" for name in elsewhere
            )
            lines += ["## Documented with the top-level names", "", f"Also public here: {links}.", ""]
        pages[_page_name(module)] = "\n".join(lines)

    index = [
        "# API reference",
        "",
        "Generated from the docstrings (numpydoc) of every public name, one page per public module. "
        f"Most work needs only `import {PACKAGE}` and, for PyTorch, `{PACKAGE}.torch`.",
        "",
        "| module | what it holds |",
        "|---|---|",
    ]
    for module in modules:
        summary = module.docstring.value.strip().split("\n\n")[0].replace("\n", " ") if module.docstring else ""
        summary = summary.replace("|", "\\|")
        index.append(f"| [`{module.path}`]({module.path}.md) | {summary} |")
    pages[f"{API_DIR}/index.md"] = "\n".join(index) + "\n"
    return pages


# --------------------------------------------------------------------------- the command line
def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    found = []
    for action in parser._actions:  # noqa: SLF001 - argparse keeps its sub-parsers here
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            found.extend(action.choices.items())
    return found


def _cli_page() -> str:
    from ptychodata.cli import build_parser

    lines = [
        "# Command-line reference",
        "",
        "Every command and flag of `ptychodata`, generated from its argument parser at each build "
        "(the text of `ptychodata COMMAND --help`). How to use them: [command line](../cli.md).",
        "",
    ]
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = HELP_WIDTH
    try:

        def describe(parser: argparse.ArgumentParser, name: str, level: int) -> None:
            lines.extend([f"{'#' * level} `{name}`", "", "```text", parser.format_help().rstrip(), "```", ""])
            for sub_name, sub in _subcommands(parser):
                describe(sub, f"{name} {sub_name}", min(level + 1, 4))

        describe(build_parser(), "ptychodata", 2)
    finally:
        if previous is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = previous
    return "\n".join(lines)


# --------------------------------------------------------------------------- the error hierarchy
ERRORS_MARKER = "<!-- generated: error hierarchy -->"


def _error_tree() -> str:
    """``ptychodata.errors``' classes as a tree, each with the built-ins it also derives from."""
    from ptychodata import errors

    classes = [getattr(errors, name) for name in errors.__all__]
    lines = ["```text"]

    def walk(cls: type, prefix: str, last: bool, root: bool) -> None:
        builtins = [base.__name__ for base in cls.__bases__ if base.__module__ == "builtins" and base is not Exception]
        label = cls.__name__ + (f" ({', '.join(builtins)})" if builtins else "")
        text = label if root else f"{prefix}{'└── ' if last else '├── '}{label}"
        paragraph = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())
        summary = _ROLE.sub(_role_text, paragraph).split(". ")[0].split(": ")[0].rstrip(".;")
        lines.append(f"{text:<48} {summary}".rstrip())
        children = [c for c in classes if cls in c.__bases__ and c is not cls]
        for i, child in enumerate(children):
            walk(child, "" if root else prefix + ("    " if last else "│   "), i == len(children) - 1, False)

    walk(errors.PtychodataError, "", True, True)
    lines.append("```")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the benchmark logs
RESULTS_MARKER = "<!-- generated: results logs -->"
_LOG_NAME = re.compile(r"^(?:(?P<part>.+?)-)?(?P<machine>amd-vm-2cores(?:-loaded)?|xeon\d+(?:-2cores)?|h\d00(?:x\d)?)"
                       r"(?:-(?P<condition>loaded))?-(?P<date>\d{4}-\d{2}-\d{2})$")  # fmt: skip


def _results_table() -> str:
    """One row per log in benchmarks/results: benchmark, part, machine, date and the log's first line."""
    rows = ["| benchmark | part | machine | date | log: first line |", "|---|---|---|---|---|"]
    for log in sorted((ROOT / "benchmarks" / "results").glob("*/*.log")):
        match = _LOG_NAME.match(log.stem)
        part, machine, date = (match["part"] or "", match["machine"], match["date"]) if match else ("", "", "")
        first = next((line for line in log.read_text(errors="replace").splitlines() if line.strip()), "")
        first = first.lstrip("# ").replace("|", "\\|")
        first = first if len(first) <= 160 else first[:157] + "..."
        rows.append(f"| `{log.parent.name}` | {part} | {machine} | {date} | `{log.name}`: {first} |")
    return "\n".join(rows)


# --------------------------------------------------------------------------- the hooks
_generated: dict[str, str] = {}


def on_config(config):
    _generated.clear()
    _generated.update(_api_pages(_load_package()))
    _generated[CLI_PAGE] = _cli_page()
    api_nav = [{"Overview": f"{API_DIR}/index.md"}] + [
        {path.removeprefix(f"{API_DIR}/").removesuffix(".md"): path}
        for path in _generated
        if path.startswith(API_DIR) and not path.endswith("index.md")
    ]
    config["nav"] = _replace_api_entry(config["nav"], api_nav)
    return config


def _replace_api_entry(nav, api_nav):
    replaced = []
    for entry in nav:
        if isinstance(entry, dict):
            (title, value), = entry.items()
            if title == API_NAV_TITLE:
                replaced.append({title: api_nav})
                continue
            if isinstance(value, list):
                replaced.append({title: _replace_api_entry(value, api_nav)})
                continue
        replaced.append(entry)
    return replaced


def on_page_markdown(markdown, page, config, files):
    if ERRORS_MARKER in markdown:
        markdown = markdown.replace(ERRORS_MARKER, _error_tree())
    if RESULTS_MARKER in markdown:
        markdown = markdown.replace(RESULTS_MARKER, _results_table())
    return markdown


def on_files(files, config):
    for path, content in _generated.items():
        files.append(File.generated(config, path, content=content))
    return files


# The docstrings use Sphinx roles (:class:`~a.b.C`, :func:`f`, :meth:`X.y <a.X.y>`); shown as code.
_ROLE = re.compile(r":(?:class|func|meth|attr|mod|data|exc|obj):`(~?)([^`<]+?)(?:\s*<[^>]+>)?`")


def _role_text(match: re.Match) -> str:
    tilde, name = match.groups()
    return f"`{name.split('.')[-1] if tilde else name}`"


class SphinxRoles(griffe.Extension):
    """Griffe extension: Sphinx cross-reference roles in docstrings become code spans."""

    def on_object(self, *, obj, **kwargs) -> None:  # noqa: ARG002
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(_role_text, obj.docstring.value)
