"""Two CPU processes under torchrun (gloo, DDP, DistributedSampler) match one process, same global batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import toytask
import yaml
from test_loop import NO_DROPOUT, adapter, assert_same, make_cfg

from peftkit.core.errors import ConfigError
from peftkit.train import loop
from peftkit.train.config import dump_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # about 30 s on 2 shared cores: two extra interpreters import torch + transformers
def test_two_processes_match_one(tmp_path: Path) -> None:
    # dropout off: two ranks draw two dropout masks where one process draws one
    overrides = ("train.epochs=2", "train.checkpoint_every=3", "train.num_workers=0")
    single = make_cfg(tmp_path / "one", *overrides, backbone=NO_DROPOUT)
    loop.run(single, progress=False)

    cfg_path = tmp_path / "ddp.yaml"
    cfg_path.write_text(dump_config(make_cfg(tmp_path / "two", *overrides, backbone=NO_DROPOUT)))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(Path(toytask.__file__).parent), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--nnodes=1",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        toytask.__file__,
        "train",
        str(cfg_path),
        "--no-progress",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]

    assert_same(adapter(tmp_path / "one"), adapter(tmp_path / "two"), atol=1e-5)
    two = yaml.safe_load((tmp_path / "two" / "metrics.json").read_text())
    assert two["world_size"] == 2 and two["steps"] == 8
    ckpt = tmp_path / "two" / "checkpoints" / "step_6"
    assert (ckpt / "rng_rank0.pt").is_file() and (ckpt / "rng_rank1.pt").is_file()


def test_global_batch_must_split_evenly(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from peftkit.train import distributed as D

    monkeypatch.setattr(loop.D, "setup", lambda device: D.DistEnv(rank=0, world_size=3))
    with pytest.raises(ConfigError, match="must divide evenly over 3 processes"):
        loop.run(make_cfg(tmp_path / "x"), progress=False)
