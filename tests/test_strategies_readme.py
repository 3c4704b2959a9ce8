"""The README's strategies example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
HEADING = "## Use the strategies in your own JAX code"


def readme_example() -> str:
    text = README.read_text(encoding="utf-8")
    assert HEADING in text, f"{README}: no heading {HEADING!r}"
    section = text.split(HEADING, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert blocks, f"{README}: no ```python block under {HEADING!r}"
    return blocks[0]


@pytest.mark.slow  # compiles a model step; a documentation check
def test_readme_strategies_example_runs(capsys):
    code = readme_example()
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(code, f"{README}:strategies-example", "exec"), namespace)
    out = capsys.readouterr().out.splitlines()
    assert [line.split(" (")[0] for line in out] == ["0", "1", "2"]
    assert "('fc',)" in out[0] and "('encoder', 'neck', 'fc')" in out[2]
    assert namespace["schedule"].prepass.batches == 4  # an epoch of 4 batches caps the 5
    held = namespace["opt_state"].held
    assert held.max() == 1.0 and held.min() < 1.0
