"""The Python examples of the README and of the docs pages (docs/**/*.md) run as written."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").rglob("*.md"))


def blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def run(path: Path) -> dict:
    namespace: dict = {}  # one namespace per file, in reading order: a later block may use an earlier one's names
    for block in blocks(path):
        exec(compile(block, str(path), "exec"), namespace)
    return namespace


def test_readme_python_blocks_run():
    assert blocks(README), "the README has no python example"
    namespace = run(README)
    # the example's claims: sparsemax weights are zero on padded keys, shapes as commented
    w, weights, per_head = namespace["w"], namespace["weights"], namespace["per_head"]
    assert w[1, :, 5:].eq(0).all()
    assert weights.shape == (2, 7) and per_head.shape == (2, 4, 5, 5)


def test_the_docs_have_python_examples():
    assert sum(len(blocks(p)) for p in PAGES) >= 10, [str(p) for p in PAGES]


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p)], ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_python_blocks_run(page):
    run(page)
