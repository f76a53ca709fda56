"""Every ``python`` block of the documentation pages (and the README) runs as written, in order, in a fresh
folder. Blocks fenced ``py`` are excerpts that need context a page does not build (another package, a GPU,
a file from elsewhere) and are not run."""

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
README = DOCS.parent / "README.md"
PAGES = sorted(page for page in [*DOCS.glob("*.md"), README] if "```python" in page.read_text())


def _blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)


def test_the_pages_with_code_are_found():
    assert {DOCS / "datasets.md", DOCS / "clusters.md", README} <= set(PAGES)


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_python_blocks_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    for number, block in enumerate(_blocks(page), 1):
        try:
            exec(compile(block, f"{page.name}, block {number}", "exec"), namespace)
        except Exception as exc:  # noqa: BLE001 - reported with the block that failed
            pytest.fail(f"{page.name}, block {number}: {type(exc).__name__}: {exc}")
