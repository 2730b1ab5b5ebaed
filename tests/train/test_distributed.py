"""Two CPU processes under torchrun (gloo, DDP, DistributedSampler) match one process, same global batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
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

    monkeypatch.setattr(loop.distributed, "setup", lambda device: D.DistEnv(rank=0, world_size=3))
    with pytest.raises(ConfigError, match="must divide evenly over 3 processes"):
        loop.run(make_cfg(tmp_path / "x"), progress=False)


@pytest.mark.slow  # two torchrun launches per method (about 20 s each on 2 shared cores)
@pytest.mark.parametrize("method", ["lora", "adapter", "lora+deft"])
def test_fsdp2_two_processes_match_one(method: str, tmp_path: Path) -> None:
    """FSDP2 (fully_shard per block, gloo on CPU): 2 ranks on half batches train as 1 process on the batch."""
    from safetensors.torch import load_file

    worker = str(Path(__file__).with_name("fsdp_worker.py"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, worker, method, str(tmp_path / "one")], env=env,
                         capture_output=True, text=True, timeout=240)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
                          "--master_addr=127.0.0.1", f"--master_port={_free_port()}", worker, method,
                          str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=240)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = (load_file(str(tmp_path / d / "adapter_model.safetensors")) for d in ("one", "two"))
    assert a.keys() == b.keys() and any(".lora_" in k or ".adapter." in k for k in a)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=2e-5)
    import peftkit as pk

    fresh = pk.load_backbone("tiny_bert", num_labels=3)
    moved = pk.load_adapter(fresh, tmp_path / "two")      # a normal peftkit checkpoint
    ups = [k for k in a if k.endswith(("lora_B.default.weight", "adapter.up.weight"))]   # zero at init
    assert ups and sum(bool(a[k].abs().sum() > 0) for k in ups) >= len(ups) - 1          # trained
    assert pk.param_report(moved).trainable > 0


def test_fsdp2_refuses_block_wrapping_methods() -> None:
    import peftkit as pk
    from peftkit.core.errors import UnsupportedError
    from peftkit.train.distributed import shard

    model = pk.apply(pk.load_backbone("tiny_bert", num_labels=3), pk.MEFT(variant="meft1"))
    with pytest.raises(UnsupportedError, match="FSDP2 cannot shard a model with meft"):
        shard(model)
