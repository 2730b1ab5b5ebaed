"""The README quickstart is run as written (docs/design.md, Tests): a broken first screen is a failed test."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _quickstart() -> str:
    text = README.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no ```python block"
    return blocks[0]


@pytest.mark.slow
def test_readme_quickstart_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(_quickstart(), str(README), "exec"), {"__name__": "__readme__"})
    out = capsys.readouterr().out
    assert "trainable params:" in out
    assert (tmp_path / "out" / "quickstart" / "adapter_model.safetensors").is_file()
