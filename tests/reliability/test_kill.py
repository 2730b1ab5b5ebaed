"""``kill -9`` in the middle of a run, for real: the next ``--resume`` cleans what the kill left (a
half-written checkpoint directory, a torn log line) and ends with the adapter an uninterrupted run writes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from peftkit import cli
from reliability.harness import Workspace

SLOW_RUN = """
import sys, time
sys.path.insert(0, sys.argv[1])
import toytask  # registers toy_tokens
from peftkit.train import loop
step = loop._Run._step
def slow_step(self, group):  # slow enough to be killed mid-run
    time.sleep(0.15)
    return step(self, group)
loop._Run._step = slow_step
from peftkit.cli import main
sys.exit(main(sys.argv[2:]))
"""
OVERRIDES = [
    "data.n_train=48",
    "train.epochs=2",
    "train.checkpoint_every=2",
    "train.keep_checkpoints=10",
    "train.log_every=1",
    "--no-progress",
]


def test_kill_9_then_resume_matches_uninterrupted(ws: Workspace) -> None:
    straight = Workspace(ws.root / "straight")
    straight.root.mkdir()
    assert cli.main(["train", straight.config(), *OVERRIDES]) == 0

    cfg = ws.config()
    train_dir = Path(__file__).resolve().parents[1] / "train"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_RUN, str(train_dir), "train", cfg, *OVERRIDES],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    while not (ws.out / "checkpoints" / "step_4").is_dir():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "the run never reached step 4"
        time.sleep(0.05)
    time.sleep(0.2)  # somewhere in step 5 or 6, maybe mid-checkpoint
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (ws.out / "adapter").exists()
    with (ws.out / "metrics.jsonl").open("a") as fh:
        fh.write('{"step": 5, "lo')  # as if the kill landed mid-record

    assert cli.main(["train", cfg, *OVERRIDES, "--resume", str(ws.out)]) == 0
    a = load_file(str(ws.out / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(straight.out / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0, msg=k)
    assert not [p for p in ws.out.rglob(".*") if p.name != ".peftkit.lock"]  # no orphan left
    assert (ws.out / "metrics.jsonl").read_text() == (straight.out / "metrics.jsonl").read_text()
