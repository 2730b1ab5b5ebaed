"""Adapter checkpoints are strict: every way a checkpoint can be wrong is one CheckpointError, and a failed
save leaves nothing half-written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import peftkit as pk
from peftkit.core import checkpoint


@pytest.fixture
def saved(tiny: Any, tmp_path: Path) -> Path:
    model = pk.apply(tiny.build("tiny_bert"), pk.LoRA(rank=4))
    return pk.save_adapter(model, tmp_path / "ckpt")


def test_layout_and_config(saved: Path) -> None:
    assert sorted(p.name for p in saved.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    cfg = json.loads((saved / "adapter_config.json").read_text())
    assert cfg["backbone"] == "tiny_bert" and cfg["methods"][0]["name"] == "lora"
    assert cfg["methods"][0]["config"]["rank"] == 4
    assert all(len(shape) in (1, 2) for shape in cfg["tensors"].values())


def test_corrupt_safetensors(saved: Path, tiny: Any) -> None:
    weights = saved / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(pk.CheckpointError, match="corrupt"):
        pk.load_adapter(tiny.build("tiny_bert"), saved)


def test_missing_weights(saved: Path, tiny: Any) -> None:
    (saved / "adapter_model.safetensors").unlink()
    with pytest.raises(pk.CheckpointError, match="incomplete"):
        pk.load_adapter(tiny.build("tiny_bert"), saved)


def test_missing_or_broken_config(saved: Path, tiny: Any) -> None:
    cfg = saved / "adapter_config.json"
    cfg.write_text("{not json")
    with pytest.raises(pk.CheckpointError, match="not valid JSON"):
        pk.load_adapter(tiny.build("tiny_bert"), saved)
    cfg.unlink()
    with pytest.raises(pk.CheckpointError, match="adapter_config.json not found"):
        pk.load_adapter(tiny.build("tiny_bert"), saved)


def test_other_backbone(saved: Path) -> None:
    with pytest.raises(pk.CheckpointError, match="for backbone 'tiny_bert', this model is 'tiny_roberta'"):
        pk.load_adapter(pk.load_backbone("tiny_roberta", num_labels=3), saved)


def test_other_method_stack(saved: Path, tiny: Any) -> None:
    with pytest.raises(pk.CheckpointError, match=r"holds methods \['lora'\].*\['adapter', 'lora'\]"):
        pk.load_adapter(pk.apply(tiny.build("tiny_bert"), [pk.Adapter(), pk.LoRA(rank=4)]), saved)


def test_shape_mismatch(saved: Path, tiny: Any) -> None:
    model = pk.apply(tiny.build("tiny_bert"), pk.LoRA(rank=8))
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(pk.CheckpointError, match=r"has shape \(4, 32\), the model expects \(8, 32\)"):
        pk.load_adapter(model, saved)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before))   # nothing copied


def test_missing_and_unexpected_keys(saved: Path, tiny: Any) -> None:
    model = pk.apply(tiny.build("tiny_bert"), pk.LoRA(rank=4, targets=["attn_q", "attn_k"]))
    with pytest.raises(pk.CheckpointError, match=r"missing \[.*key.*unexpected \[.*value"):
        pk.load_adapter(model, saved)


def test_unknown_key_in_saved_config(saved: Path, tiny: Any) -> None:
    cfg_path = saved / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["methods"][0]["config"]["rnak"] = 2
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(pk.ConfigError, match=r"unknown key\(s\) \['rnak'\].*valid keys: alpha, dropout"):
        pk.load_adapter(tiny.build("tiny_bert"), saved)


def test_not_a_peftkit_checkpoint(tmp_path: Path, tiny: Any) -> None:
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    with pytest.raises(pk.CheckpointError, match="not a peftkit adapter checkpoint"):
        pk.load_adapter(tiny.build("tiny_bert"), tmp_path)


def test_save_without_method(tmp_path: Path, tiny: Any) -> None:
    with pytest.raises(pk.CheckpointError, match="no peftkit method is applied"):
        pk.save_adapter(tiny.build("tiny_bert"), tmp_path / "x")
    assert list(tmp_path.iterdir()) == []


def test_failed_save_leaves_nothing_half_written(saved: Path, tiny: Any, monkeypatch: Any) -> None:
    old_bytes = (saved / "adapter_model.safetensors").read_bytes()
    model = pk.apply(tiny.build("tiny_bert"), pk.LoRA(rank=4))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(1.0)

    def boom(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.json, "dumps", boom)   # weights written, config fails
    for target in (saved, saved.parent / "new"):
        with pytest.raises(OSError, match="disk full"):
            pk.save_adapter(model, target)
    assert sorted(p.name for p in saved.parent.iterdir()) == ["ckpt"]   # no temp dir, no "new"
    assert (saved / "adapter_model.safetensors").read_bytes() == old_bytes   # the old checkpoint is intact


def test_overwrite_replaces_atomically(saved: Path, tiny: Any) -> None:
    model = pk.apply(tiny.build("tiny_bert"), pk.LoRA(rank=4))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(1.0)
    pk.save_adapter(model, saved)
    assert sorted(p.name for p in saved.parent.iterdir()) == ["ckpt"]
    fresh = pk.load_adapter(tiny.build("tiny_bert"), saved)
    assert torch.equal(tiny.output(fresh, "tiny_bert"), tiny.output(model, "tiny_bert"))
