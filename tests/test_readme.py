"""The README's Python examples run unchanged and produce the shapes their comments state."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_example_runs(code):
    if "flash_triton.hf" in code:  # the optional Hugging Face extra
        pytest.importorskip("transformers", reason="transformers is not installed (pip install 'flash-triton[hf]')")
        pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate")
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    for line in code.splitlines():
        m = re.match(r"\s*(\w+) = .*# \(([\d, ]+)\)", line)
        if m:
            shape = tuple(int(s) for s in m.group(2).split(","))
            assert tuple(namespace[m.group(1)].shape) == shape, line
