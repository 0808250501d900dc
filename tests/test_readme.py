"""The README's Python examples run as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has no python example"
    namespace: dict = {}  # one namespace, in reading order: a later block may use an earlier one's names
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    # the example's claims: sparsemax weights are zero on padded keys, shapes as commented
    w, weights, per_head = namespace["w"], namespace["weights"], namespace["per_head"]
    assert w[1, :, 5:].eq(0).all()
    assert weights.shape == (2, 7) and per_head.shape == (2, 4, 5, 5)
