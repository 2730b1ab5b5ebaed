"""Full fine-tuning checkpoints carry the backbone's running statistics, not only its parameters."""

from __future__ import annotations

import torch

import peftkit as pk


def test_full_ft_round_trip_keeps_batchnorm_statistics(tmp_path):
    model = pk.apply(pk.load_backbone("tiny_point", num_labels=3), [pk.FullFineTune()])
    x = torch.randn(4, 128, 3)
    model.train()
    for _ in range(3):  # move the patch encoder's BatchNorm running statistics away from their init
        model(points=x)
    model.eval()
    with torch.no_grad():
        expected = model(points=x)
    pk.save_adapter(model, tmp_path / "run")
    fresh = pk.load_adapter(pk.load_backbone("tiny_point", num_labels=3, seed=5), tmp_path / "run")
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(points=x), expected)
