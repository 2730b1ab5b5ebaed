"""``peftkit bench demo`` end to end on tiny_bert + a small CSV (no BBC, no download), and its row logic."""

from __future__ import annotations

import json
import random

import pytest

import peftkit as pk
from peftkit.bench import demo, demo_measure


def _csv(path, n=48):
    rng = random.Random(0)
    words = {"sport": "match goal team coach league win", "money": "bank market shares profit trade rates"}
    lines = ["text,label"]
    for i in range(n):
        label = "sport" if i % 2 else "money"
        lines.append(" ".join(rng.choice(words[label].split()) for _ in range(20)) + f",{label}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_rows_follow_the_registry_and_selection():
    rows, skipped = demo.select_rows(demo.DemoConfig(), {"full", "head_only", "lora"})
    assert [r.label for r in rows] == ["full FT", "head only", "LoRA r=8"]
    assert any("LoRA + DEFT" in s and "deft" in s for s in skipped)
    cfg = demo.parse_overrides(["rows=lora_r_8,full FT"])
    rows, _ = demo.select_rows(cfg, set(pk.list_methods()) | {"lora"})
    assert [r.slug for r in rows] == ["full_ft", "lora_r_8"]
    with pytest.raises(pk.ConfigError, match="unknown demo row"):
        demo.select_rows(demo.parse_overrides(["rows=nope"]), {"full"})
    with pytest.raises(pk.ConfigError, match="no demo row can run"):
        demo.select_rows(demo.DemoConfig(), set())


def test_overrides():
    cfg = demo.parse_overrides(["max_length=32", "backbone.vocab_size=30522", "data.train_file=x.csv",
                                "max_train_examples=null"])
    assert cfg.max_length == 32 and cfg.max_train_examples is None
    assert cfg.backbone_kwargs == {"vocab_size": 30522} and cfg.data_kwargs == {"train_file": "x.csv"}
    assert demo.parse_overrides(["warmup_ratio=0", "threads=null"]).warmup_ratio == 0.0
    with pytest.raises(pk.ConfigError, match="max_length must be int"):
        demo.parse_overrides(["max_length=abc"])
    with pytest.raises(pk.ConfigError, match="bench demo: unknown option 'max_len=3'; valid keys: .*KEY"):
        demo.parse_overrides(["max_len=3"])
    assert demo.parse_overrides(["memory=off"]).memory == "off"
    with pytest.raises(pk.ConfigError, match="memory must be"):
        demo.parse_overrides(["memory=sometimes"])


def test_demo_smoke_writes_every_row(tmp_path, capsys):
    csv = _csv(tmp_path / "toy.csv")
    out = tmp_path / "demo"
    code = demo.main([f"out_dir={out}", "backbone=tiny_bert", "backbone.vocab_size=30522", "data=text_file",
                      f"data.train_file={csv}", "max_length=16", "max_train_examples=null", "batch_size=8",
                      "eval_batch_size=16", "memory=inline", "memory_steps=1", "speed_rounds=1", "threads=1"])
    assert code == 0
    data = json.loads((out / "demo.json").read_text())
    expected, _ = demo.select_rows(demo.DemoConfig(), set(pk.list_methods()))
    assert [r["label"] for r in data["rows"]] == [r.label for r in expected]
    full = data["rows"][0]
    assert full["label"] == "full FT"
    assert full["step_time_ratio"] == 1.0 and full["saved_activation_ratio"] == 1.0
    for r in data["rows"]:
        assert 0.0 <= r["eval/accuracy"] <= 1.0
        assert r["trainable_params"] > 0 and r["step_time_s"] > 0 and r["saved_activation_bytes"] > 0
        assert r["peak_memory_bytes"] > 0
        assert r["memory_trainable_params"] == r["trainable_params"]   # memory measured the trained model
    head = next(r for r in data["rows"] if r["label"] == "head only")
    assert head["trainable_params"] < full["trainable_params"]
    assert head["saved_activation_bytes"] < full["saved_activation_bytes"]
    assert head["peak_memory_bytes"] < full["peak_memory_bytes"]
    md = (out / "demo.md").read_text()
    for r in data["rows"]:
        assert f"| {r['label']} |" in md
    assert "scale:" in md and (out / "demo.png").read_bytes()[:4] == b"\x89PNG"
    for label in ("LoRA r=8", "LoRA + DEFT"):  # calibrated sparsity: density near 1 - q, a measured speed-up
        r = next(r for r in data["rows"] if r["label"] == label)
        assert r["sparse/q"] in (0.0, *demo_measure.SPARSE_GRID)
        assert r["sparse/density"] == pytest.approx(100.0 * (1.0 - r["sparse/q"]), abs=25.0)
        assert 0.0 <= r["sparse/accuracy"] <= 1.0 and r["sparse/speedup"] > 0.0
    assert "MLP density at <=1 pt" in md and "| MLP density |" not in md
    printed = capsys.readouterr().out
    assert all(r["label"] in printed for r in data["rows"])
