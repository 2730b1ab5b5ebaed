"""The promise end to end, in real processes: the installed ``peftkit`` command and ``import peft`` print
nothing but the one error line (no quantisation-backend import noise), and a bad run exits 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from reliability.harness import Workspace, tree_hash

TOYTASK = Path(__file__).resolve().parents[1] / "train" / "toytask.py"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, env=ENV, timeout=300)


def test_import_is_quiet() -> None:
    done = _run([sys.executable, "-c", "import peftkit, peftkit.methods.hf_peft, peft"])
    assert done.returncode == 0 and done.stderr == "", done.stderr


def test_lora_run_with_bad_data_is_one_line(ws: Workspace) -> None:
    """LoRA imports peft (and with it bitsandbytes / torchao); the data does not fit the backbone. The earlier
    run in out_dir stays as it was."""
    ws.with_earlier_run()
    cfg = ws.config()
    before = tree_hash(ws.root)
    done = _run([sys.executable, str(TOYTASK), "train", cfg, "backbone.vocab_size=500", "--no-progress"])
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("peftkit: error: token id "), done.stderr
    assert tree_hash(ws.root) == before


def test_console_script(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("peftkit")
    done = _run([str(script), "train", str(tmp_path / "missing.yaml"), "--no-progress", "seed=1"])
    assert done.returncode == 2
    assert done.stderr == f"peftkit: error: config file {tmp_path / 'missing.yaml'} not found\n"
