"""The training recipes of ``peftkit bench sparsity`` on a tiny model: the threshold-centred DEFT is
calibrated at the start of the sparsity-aware epoch and only trains there;
the sparsifier is taken off afterwards."""

from __future__ import annotations

import pytest
import torch

from peftkit.bench import sparsity
from peftkit.methods.deft.apply import deft_probes
from peftkit.methods.deft.calibrate import thresholds_of


def _batches(n: int, seed: int, b: int = 4, t: int = 12) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(5, 1000, (b, t), generator=g),
             "attention_mask": torch.ones(b, t, dtype=torch.long),
             "labels": torch.randint(0, 3, (b,), generator=g)} for _ in range(n)]


@pytest.mark.parametrize("variant", ["lora+deft_thr_st", "lora+deft_e1e-2_late_st", "pfeiffer+deft_e1e-2_st"])
def test_recipe_trains_and_leaves_a_dense_model(variant):
    torch.manual_seed(0)
    cfg = sparsity.SparsityBenchConfig(backbone="tiny_bert", epochs=2, st_q=0.8)
    model = sparsity.build_model(cfg, variant, 3)
    calib = [{k: v for k, v in b.items() if k != "labels"} for b in _batches(2, seed=1)]
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    sparsity.train(cfg, model, variant, _batches(3, seed=0), calib)
    assert not thresholds_of(model) and not model.training
    moved = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert moved
    probes = deft_probes(model)
    centred = sparsity.VARIANTS[variant].centred
    assert probes and all((p.tau is not None and p.tau > 0) == centred for p in probes)


def test_new_variants_are_accepted():
    cfg = sparsity.parse(["variants=lora+deft_thr_st,lora+deft_e1e-2_w0.1_st,pfeiffer_st"])
    assert sparsity.VARIANTS["lora+deft_e1e-2_w0.1_st"].deft == (1e-2, 0.1)
    assert cfg.variants.count(",") == 2
