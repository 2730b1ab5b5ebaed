"""Point-MAE pretraining: masking, the loss, a short run, resume, and the exported encoder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import peftkit as pk
from peftkit.backbones.point.mae import PointMAE
from peftkit.core.errors import CheckpointError, ConfigError
from peftkit.ops.points import chamfer_l2
from peftkit.recipes.pretrain_point_mae import PretrainConfig, load_config, lr_at, main, pretrain

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
ARGS = [
    "sources=[synthetic]",
    "backbone=tiny_point",
    "stored_points=160",
    "num_points=128",
    "batch_size=8",
    "synthetic_count=24",
    "warmup_epochs=1",
    "checkpoint_every=2",
    "lr=2e-3",
]


def test_masking_splits_every_patch_once() -> None:
    mae = PointMAE(pk.load_backbone("tiny_point", num_labels=2))
    vis, masked = mae.random_mask(3, 16, torch.Generator().manual_seed(0))
    assert vis.shape == (3, 6) and masked.shape == (3, 10)  # round(0.6 * 16) masked
    for b in range(3):
        assert sorted(vis[b].tolist() + masked[b].tolist()) == list(range(16))
    with pytest.raises(ConfigError):
        PointMAE(pk.load_backbone("tiny_point", num_labels=2), mask_ratio=1.0)


def test_loss_is_chamfer_of_masked_patches() -> None:
    enc = pk.load_backbone("tiny_point", num_labels=2)
    mae = PointMAE(enc).eval()
    pts = torch.rand(2, 128, 3)
    with torch.no_grad():
        loss = mae(pts, generator=torch.Generator().manual_seed(5))
        # recompute the target side by hand: the same masked patches, the prediction from the same forward
        geom = enc.group_divider(pts)
        _, masked = mae.random_mask(2, 16, torch.Generator().manual_seed(5))
        target = geom.select(masked).neighborhood.reshape(-1, 8, 3)
    assert loss.item() > 0 and torch.isfinite(loss)
    assert chamfer_l2(target, target).item() == 0.0
    assert loss.item() < 10 * chamfer_l2(torch.zeros_like(target), target).item()


def test_lr_schedule() -> None:
    """Warm-up + cosine from train.optim, floored at min_lr."""
    assert lr_at(0, 100, 9, 1e-3, 0.0) == pytest.approx(1e-4)
    assert lr_at(9, 100, 9, 1e-3, 0.0) == pytest.approx(1e-3)
    assert lr_at(100, 100, 10, 1e-3, 1e-6) == pytest.approx(1e-6)
    assert lr_at(55, 100, 10, 1e-3, 0.0) == pytest.approx(0.5e-3)


def test_short_run_learns_resumes_and_exports(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = load_config(None, ARGS + [f"out_dir={out}", "epochs=8", f"export={tmp_path / 'ship.safetensors'}"])
    full = pretrain(cfg, progress=False)
    hist = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(hist) == full["steps"] == 24 and sum(hist[-3:]) < sum(hist[:3])
    assert (out / "loss.png").stat().st_size > 1000
    # the exported encoder loads into a classifier
    pk.load_backbone("tiny_point", num_labels=5, checkpoint=str(tmp_path / "ship.safetensors"))
    # interrupted run (max_steps) + resume reproduces the uninterrupted losses exactly
    out2 = tmp_path / "run2"
    pretrain(load_config(None, ARGS + [f"out_dir={out2}", "epochs=8", "max_steps=10"]), progress=False)
    pretrain(load_config(None, ARGS + [f"out_dir={out2}", "epochs=8"]), progress=False)
    hist2 = [json.loads(line)["loss"] for line in (out2 / "metrics.jsonl").read_text().splitlines()]
    assert hist2 == pytest.approx(hist, rel=1e-5, abs=1e-7)


def test_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(None, ["epochz=3"])
    with pytest.raises(ConfigError, match="source"):
        load_config(None, ["sources=[nope]", f"out_dir={tmp_path}"])
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("- not a mapping\n")
    with pytest.raises(ConfigError, match="mapping"):
        main(str(cfg_file), [])


@pytest.mark.parametrize(
    "bad, msg",
    [
        ("epochs=abc", "epochs must be"),
        ("batch_size=0", "batch_size must be >= 1"),
        ("lr=nan", "lr must be"),
        ("lr=abc", "lr must be"),
        ("mask_ratio=1.5", "mask_ratio must be in"),
        ("num_points=4096", "num_points"),
        ("out_dir=", "out_dir"),
    ],
)
def test_bad_values_are_one_line_exit_2(tmp_path: Path, bad: str, msg: str) -> None:
    """``peftkit pretrain epochs=abc`` and friends: one line on stderr, exit 2, nothing written."""
    out = tmp_path / "run"
    res = subprocess.run(
        [sys.executable, "-m", "peftkit.cli", "pretrain", "configs/point/pretrain_small.yaml", bad,
         f"out_dir={out}"] if not bad.startswith("out_dir") else
        [sys.executable, "-m", "peftkit.cli", "pretrain", "configs/point/pretrain_small.yaml", bad],
        capture_output=True, text=True, cwd=ROOT, env=ENV,
    )
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and msg in lines[0], res.stderr
    assert not out.exists()


def _short_run(out: Path) -> PretrainConfig:
    cfg = load_config(None, ARGS + [f"out_dir={out}", "epochs=2", "max_steps=2"])
    pretrain(cfg, progress=False)
    return cfg


def test_resume_refuses_a_checkpoint_that_needs_code(tmp_path: Path) -> None:
    """A planted checkpoint.pt whose unpickling would run code is refused with one line; nothing runs."""
    out = tmp_path / "run"
    out.mkdir()
    marker = tmp_path / "pwned"
    with (out / "checkpoint.pt").open("wb") as fh:
        torch.save({"x": _Evil(str(marker))}, fh)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(CheckpointError, match="refused"):
        pretrain(load_config(None, ARGS + [f"out_dir={out}", "epochs=2"]), progress=False)
    assert not marker.exists()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_resume_from_a_truncated_checkpoint_is_one_line(tmp_path: Path) -> None:
    out = tmp_path / "run"
    _short_run(out)
    ckpt = out / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        pretrain(load_config(None, ARGS + [f"out_dir={out}", "epochs=2"]), progress=False)
    res = subprocess.run(
        [sys.executable, "-m", "peftkit.cli", "pretrain", "configs/point/pretrain_small.yaml", *ARGS,
         f"out_dir={out}", "epochs=2", "export=null"],
        capture_output=True, text=True, cwd=ROOT, env=ENV,
    )
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr


class _Evil:
    """Unpickling this calls ``open(marker, 'w')``: what weights_only=True must refuse."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (open, (self.marker, "w"))
