"""Every code block of the README, CONTRIBUTING and the documentation pages runs as written.

What runs, by the fence's language:

- ``python``: executed, in page order, in one namespace per page;
- ``bash``: each command (a trailing backslash continues a line; ``#`` starts a comment) must be a
  ``ptychodata ...`` command; it runs in this process through ``ptychodata.cli.main`` and must exit 0,
  or with the status its comment states (``# exits 1: ...``).

A page's blocks run in a fresh folder that holds ``tests/data`` (a link to the repository's), so a
page reads the shipped samples by the paths a reader at the repository's root would type;
``PTYCHODATA_CACHE`` points inside that folder. Blocks fenced ``py`` or ``sh`` are shown only, and
start with a ``#`` comment that says why they cannot run here (a GPU, torchrun, a cluster,
another package, installing); ``text`` and ``mermaid`` blocks are output, trees and figures.
"""

import re
import shlex
from pathlib import Path

import pytest

from ptychodata.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted([*DOCS.rglob("*.md"), ROOT / "README.md", ROOT / "CONTRIBUTING.md"])
RUN = {"python", "bash"}
SHOWN_WITH_REASON = {"py", "sh"}
SHOWN = {"text", "mermaid"}
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)


def _blocks(page: Path) -> list[tuple[str, str]]:
    return [(match["lang"], match["body"]) for match in FENCE.finditer(page.read_text())]


def _commands(block: str) -> list[tuple[list[str], int]]:
    """Each command of a ``bash`` block, with the exit status expected of it."""
    joined = re.sub(r"\\\n", " ", block)
    commands = []
    for line in joined.splitlines():
        if words := shlex.split(line, comments=True):
            expected = re.search(r"#.*\bexits (\d+)\b", line)
            commands.append((words, int(expected[1]) if expected else 0))
    return commands


def _name(page: Path) -> str:
    return str(page.relative_to(ROOT))


RUNNABLE = [page for page in PAGES if any(lang in RUN for lang, _ in _blocks(page))]


def test_the_pages_with_code_are_found():
    assert {DOCS / "datasets.md", DOCS / "getting-started.md", ROOT / "README.md"} <= set(RUNNABLE)


@pytest.mark.parametrize("page", PAGES, ids=[_name(page) for page in PAGES])
def test_every_block_says_what_it_is(page):
    for number, (lang, body) in enumerate(_blocks(page), 1):
        where = f"{_name(page)}, block {number}"
        assert lang in RUN | SHOWN_WITH_REASON | SHOWN, f"{where}: fence language {lang!r}; expected one of " \
            f"{sorted(RUN | SHOWN_WITH_REASON | SHOWN)}"  # fmt: skip
        if lang in SHOWN_WITH_REASON:
            assert body.lstrip().startswith("#"), f"{where}: a ```{lang} block is not run; start it with a # " \
                "comment that says why"  # fmt: skip
        if lang == "bash":
            for words, _status in _commands(body):
                assert words[0] == "ptychodata", f"{where}: {shlex.join(words)!r} is not a ptychodata command"
                assert not {"|", "&&", ";", ">", "<"} & set(words), f"{where}: {shlex.join(words)!r}: one command a line"


@pytest.mark.parametrize("page", RUNNABLE, ids=[_name(page) for page in RUNNABLE])
def test_blocks_run(page, tmp_path, monkeypatch):
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "data").symlink_to(ROOT / "tests" / "data")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PTYCHODATA_CACHE", str(tmp_path / "default-cache"))
    namespace: dict = {"__name__": "__docs__"}
    for number, (lang, body) in enumerate(_blocks(page), 1):
        where = f"{_name(page)}, block {number}"
        if lang == "python":
            try:
                exec(compile(body, where, "exec"), namespace)
            except Exception as exc:  # noqa: BLE001 - reported with the block that failed
                pytest.fail(f"{where}: {type(exc).__name__}: {exc}")
        elif lang == "bash":
            for words, expected in _commands(body):
                status = cli_main(words[1:])
                assert status == expected, f"{where}: {shlex.join(words)!r} exited with status {status}, " \
                    f"expected {expected}"  # fmt: skip


def _hooks():
    pytest.importorskip("mkdocs")
    pytest.importorskip("griffe")
    import importlib.util

    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "tools" / "docs_hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_api_reference_lists_every_public_name():
    import ptychodata
    import ptychodata.dataset
    import ptychodata.errors
    import ptychodata.io
    import ptychodata.store

    hooks = _hooks()
    pages = hooks._api_pages(hooks._load_package())
    text = "\n".join(pages.values())
    modules = [ptychodata, ptychodata.dataset, ptychodata.errors, ptychodata.io, ptychodata.store]
    try:
        import ptychodata.torch
    except ImportError:  # without torch the torch page is still generated (statically); not checked here
        pass
    else:
        modules.append(ptychodata.torch)
    for module in modules:
        for name in module.__all__:
            if name == "__version__" or f"reference/api/{module.__name__}.{name}.md" in pages:
                continue  # the version is stated; a name that is also a module has its own page
            assert f"::: {module.__name__}.{name}\n" in text or f"[`{name}`][ptychodata." in text, \
                f"{module.__name__}.{name} is not in the API reference"  # fmt: skip


def test_the_command_line_reference_has_every_command():
    from ptychodata.cli import build_parser

    page = _hooks()._cli_page()
    for action in build_parser()._actions:
        for name in getattr(action, "choices", None) or ():
            assert f"## `ptychodata {name}`" in page
