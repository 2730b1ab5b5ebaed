"""The training loop on tiny_bert + a synthetic task: outputs, numerics of accumulation, aux loss, hooks."""

from __future__ import annotations

import importlib.machinery
import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch
import toytask  # noqa: F401  (registers toy_tokens)
from safetensors.torch import load_file
from torch import nn

import peftkit as pk
from peftkit.core.errors import ConfigError
from peftkit.train import loop
from peftkit.train.config import apply_overrides, config_from_dict_tree, load_config

NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


def make_cfg(out: Path, *overrides: str, backbone: dict[str, Any] | None = None) -> Any:
    tree = {
        "out_dir": str(out),
        "seed": 0,
        "backbone": {"name": "tiny_bert", **(backbone or {})},
        "data": {"name": "toy_tokens", "n_train": 32, "n_val": 8, "n_test": 8},
        "methods": [{"name": "full"}],
        "train": {
            "epochs": 2,
            "batch_size": 8,
            "eval_batch_size": 8,
            "lr": 1e-3,
            "log_every": 2,
            "threads": 1,
        },
    }
    return config_from_dict_tree(apply_overrides(tree, list(overrides)))


def adapter(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "adapter" / "adapter_model.safetensors"))


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)


def test_run_writes_everything(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path / "run", "train.checkpoint_every=3", "train.keep_checkpoints=2")
    summary = loop.run(cfg, progress=False)
    out = tmp_path / "run"
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == pytest.approx(summary)
    for key in (
        "trainable_params",
        "total_params",
        "trainable_pct",
        "eval/accuracy",
        "eval/macro_f1",
        "val/accuracy/best",
        "val/accuracy/last",
        "step_time_s",
    ):
        assert key in saved, key
    report = pk.param_report(pk.apply(pk.load_backbone("tiny_bert", num_labels=3), [pk.FullFineTune()]))
    assert saved["trainable_params"] == report.trainable and saved["total_params"] == report.total
    assert saved["steps"] == 8 and saved["epochs"] == 2  # 32 / 8 = 4 steps per epoch
    assert load_config(out / "config.yaml") == cfg
    records = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    train_recs = [r for r in records if "loss/task" in r]
    assert [r["step"] for r in train_recs] == [2, 4, 6, 8]
    # the logged lr is the one the step used: warm-up ceil(0.06 * 8) = 1 step, then linear decay over 7
    assert [r["lr"] for r in train_recs] == pytest.approx([1e-3 * (8 - s) / 7 for s in (1, 3, 5, 7)])
    assert all(r["loss"] == pytest.approx(r["loss/task"] + r["loss/aux"]) for r in train_recs)
    assert [r["step"] for r in records if "val/accuracy" in r] == [4, 8]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_4", "step_6"]  # last 2 kept
    # the saved adapter reproduces the final evaluation in a fresh model
    fresh = pk.load_adapter(pk.load_backbone("tiny_bert", num_labels=3), out / "adapter")
    data = toytask.toy_tokens(n_train=32, n_val=8, n_test=8)
    from peftkit.train.evaluate import evaluate

    res = evaluate(
        fresh,
        torch.utils.data.DataLoader(data.test, batch_size=8, collate_fn=data.collate),
        torch.device("cpu"),
        3,
        ["accuracy"],
        progress=False,
    )
    assert res["accuracy"] == saved["eval/accuracy"]
    assert res["loss"] == pytest.approx(saved["eval/loss"], abs=1e-6)


def test_learns_the_toy_task(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path / "r", "data.n_train=96", "train.epochs=6", "train.lr=3e-3", backbone=NO_DROPOUT)
    summary = loop.run(cfg, progress=False)
    assert summary["eval/accuracy"] >= 0.75, summary


def test_grad_accumulation_matches_the_big_batch(tmp_path: Path) -> None:
    loop.run(make_cfg(tmp_path / "a", "train.max_steps=3", backbone=NO_DROPOUT), progress=False)
    loop.run(
        make_cfg(
            tmp_path / "b",
            "train.max_steps=3",
            "train.batch_size=4",
            "train.grad_accum=2",
            backbone=NO_DROPOUT,
        ),
        progress=False,
    )
    loop.run(
        make_cfg(tmp_path / "c", "train.max_steps=3", "train.batch_size=4", backbone=NO_DROPOUT),
        progress=False,
    )
    assert_same(adapter(tmp_path / "a"), adapter(tmp_path / "b"), atol=1e-5)
    with pytest.raises(AssertionError):  # the check can fail: a smaller batch trains differently
        assert_same(adapter(tmp_path / "a"), adapter(tmp_path / "c"), atol=1e-5)


class _Penalty(nn.Module):
    """An AuxLossModule whose only gradient path is its aux loss: aux = 0.5 * w^2."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(2.0))

    def aux_loss(self) -> torch.Tensor:
        return 0.5 * self.w**2


def test_aux_loss_reaches_the_loss(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    penalty = _Penalty()
    build = loop.build_model

    def with_penalty(cfg: Any, data: Any) -> nn.Module:
        model = build(cfg, data)
        model.add_module("penalty", penalty)  # added after apply: stays trainable
        return model

    monkeypatch.setattr(loop, "build_model", with_penalty)
    loop.run(
        make_cfg(
            tmp_path / "r",
            "train.max_steps=4",
            "train.log_every=1",
            "train.grad_clip=null",
            "train.weight_decay=0",
        ),
        progress=False,
    )
    recs = [json.loads(ln) for ln in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    first = next(r for r in recs if "loss/aux" in r)
    assert first["loss/aux"] == pytest.approx(0.5 * 2.0**2)  # logged before the first update
    assert first["loss"] == pytest.approx(first["loss/task"] + first["loss/aux"])
    assert 0 < float(penalty.w.detach()) < 2.0  # the aux gradient moved w toward 0


def test_regression_and_bf16_paths(tmp_path: Path) -> None:
    s = loop.run(make_cfg(tmp_path / "reg", "data.regression=true", "train.max_steps=2"), progress=False)
    assert {"eval/pearson", "eval/spearman"} <= s.keys()
    s = loop.run(
        make_cfg(tmp_path / "bf", "train.bf16=true", "train.max_steps=2", "train.eval_split=val"),
        progress=False,
    )
    assert s["eval_split"] == "val" and s["eval/accuracy"] == s["val/accuracy/last"]


def test_tensorboard_events(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    loop.run(make_cfg(tmp_path / "tb", "train.max_steps=2", "train.tensorboard=true"), progress=False)
    assert list((tmp_path / "tb" / "tb").glob("events.out.tfevents.*"))


def _fake_module(monkeypatch: pytest.MonkeyPatch, name: str, **fns: Any) -> None:
    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
    for k, v in fns.items():
        setattr(mod, k, v)
    monkeypatch.setitem(sys.modules, name, mod)


def test_measurement_hooks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: dict[str, Any] = {}

    def density_report(model: nn.Module, loader: Any, pad_key: str | None = None) -> dict[str, float]:
        calls["density"] = (pad_key, len(list(loader)))
        return {"exact_zero": 0.25}

    def saved_activation_bytes(model: nn.Module, batch: dict[str, torch.Tensor], loss_fn: Any) -> int:
        # the contract of peftkit.measure.saved: batch = inputs + labels, loss_fn(output, batch)
        loss = loss_fn(model(**{k: v for k, v in batch.items() if k != "labels"}), batch)
        loss.backward()
        calls["memory"] = float(loss.detach())
        return 1234

    import peftkit.methods.deft.metrics as deft_metrics
    from peftkit.measure import training

    monkeypatch.setattr(deft_metrics, "density_report", density_report)
    monkeypatch.setattr(training, "_saved_bytes", saved_activation_bytes)
    s = loop.run(
        make_cfg(
            tmp_path / "m", "train.max_steps=2", "train.measure_density=true", "train.measure_memory=true"
        ),
        progress=False,
    )
    assert s["density/exact_zero"] == 0.25 and s["saved_activation_bytes"] == 1234
    assert s["peak_memory_bytes"] > 0 and calls["density"] == ("attention_mask", 1) and calls["memory"] > 0
    # measuring leaves the training itself unchanged (RNG forked, gradients cleared)
    loop.run(make_cfg(tmp_path / "plain", "train.max_steps=2"), progress=False)
    assert_same(adapter(tmp_path / "m"), adapter(tmp_path / "plain"), atol=0)


def test_eval_split_val_needs_a_val_split(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="has no val split"):
        loop.run(make_cfg(tmp_path / "x", "data.n_val=0", "train.eval_split=val"), progress=False)
    assert not (tmp_path / "x").exists()
