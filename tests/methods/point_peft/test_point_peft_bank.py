"""The P2-Bank builder (``peftkit point-bank``) and the Point-PEFT bench plumbing, on tiny_point + shapes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

import peftkit as pk
from peftkit.core.errors import ConfigError
from peftkit.methods.point_peft import bank as B
from peftkit.recipes import point_bank


def write_config(tmp_path: Path, methods: list[dict], **train) -> Path:
    tree = {
        "out_dir": str(tmp_path / "run"),
        "seed": 0,
        "backbone": {"name": "tiny_point"},
        "data": {"name": "synthetic_shapes", "train_size": 10, "test_size": 5},
        "methods": methods,
        "train": {"epochs": 1, "batch_size": 5, "eval_batch_size": 8, "threads": 1, **train},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def test_point_bank_command_writes_the_encoders_features(tmp_path):
    bank_dir = tmp_path / "bank"
    cfg = write_config(tmp_path, [{"name": "point_peft", "bank_path": str(bank_dir), "prompt_layers": 1,
                                   "num_prompt_tokens": 4}])
    from peftkit.cli import main as cli

    assert cli(["point-bank", str(cfg)]) == 0
    meta = json.loads((bank_dir / B.META_NAME).read_text())
    assert meta["count"] == 10 and meta["dim"] == 32 and meta["split"] == "train"
    assert not list(tmp_path.glob(".bank.tmp-*"))                       # atomic: no temporary left over
    # the features are the normalised query features of the un-augmented training clouds, in order
    from peftkit.core.registry import get_dataset

    data = get_dataset("synthetic_shapes")(backbone="tiny_point", seed=0, train_size=10, test_size=5)
    model = pk.load_backbone("tiny_point", num_labels=data.num_labels)
    enc = B.QueryEncoder(model)
    batch = data.eval_collate([data.train[i] for i in range(10)])
    feats, _ = B.load_bank(bank_dir, enc.fingerprint(), 32)
    torch.testing.assert_close(feats, F.normalize(enc(batch["points"]), dim=-1), atol=1e-5, rtol=1e-4)
    assert torch.allclose(feats.norm(dim=-1), torch.ones(10), atol=1e-5)
    # and a training run on that config reads the bank
    from peftkit.train.config import load_config
    from peftkit.train.loop import run

    summary = run(load_config(cfg), progress=False)
    assert summary["trainable/point_peft"] > 0 and 0.0 <= summary["eval/accuracy"] <= 1.0


def test_point_bank_without_a_point_peft_method_is_one_clear_error(tmp_path, capsys):
    from peftkit.cli import main as cli

    cfg = write_config(tmp_path, [{"name": "head_only"}])
    assert cli(["point-bank", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bank_path" in err[0]
    with pytest.raises(ConfigError):
        point_bank.main(str(cfg))
