"""docs/your_model.md is run as written: its Python blocks in a fresh interpreter, its ``--import`` module
through the CLI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from peftkit.cli import main

DOC = Path(__file__).resolve().parents[2] / "docs" / "your_model.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_walkthrough_blocks_run(tmp_path: Path) -> None:
    scripts = [b for b in _blocks() if not b.startswith("# my_models.py")]
    assert len(scripts) == 4
    # each block stands alone; one interpreter runs them in order (block 4 registers gpt_neox only there)
    path = tmp_path / "walkthrough.py"
    path.write_text("\n\n".join(f"def block_{i}():\n" + "".join(f"    {ln}\n" for ln in b.splitlines())
                                + f"\n\nblock_{i}()" for i, b in enumerate(scripts)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "trainable" in out and "deft" in out                           # param reports printed
    assert "target 'query' is neither a role of backbone family 'llama'" in out
    assert "its linear modules are: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj" in out


def test_import_module_registers_a_backbone_for_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    module = next(b for b in _blocks() if b.startswith("# my_models.py"))
    (tmp_path / "my_models_doc.py").write_text(module)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["list", "--import", "my_models_doc"]) == 0
    listed = capsys.readouterr().out
    assert "my_qwen2" in listed and "my fine-tuned Qwen2 from a local folder" in listed
    from peftkit.backbones.hf.packaged import TOKENIZERS

    assert TOKENIZERS["my_qwen2"]() == Path("/models/my-qwen2")
