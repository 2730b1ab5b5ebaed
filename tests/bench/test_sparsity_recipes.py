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


def _row(variant: str, q_ok: float) -> dict:
    """A stored row whose validation curve stays at dense accuracy up to ``q_ok`` and drops after."""
    pts = [{"q": q, "density": 100.0 * (1 - q), "acc": 90.0 if q <= q_ok else 80.0, "agree": 100.0,
            "only_dense": 0 if q <= q_ok else 10, "only_sparse": 0, "n": 100} for q in sparsity.Q_GRID]
    return {"dataset": "bbc_news", "variant": variant, "seed": 0, "val_dense_acc": 90.0,
            "curves": {"magnitude": pts}}


def test_deft_rows_are_compared_with_the_same_peft_method(tmp_path):
    from peftkit.bench import sparsity_report
    from peftkit.core.io import atomic_write_json

    (tmp_path / "rows").mkdir()

    variants = {"lora_st": 0.9, "pfeiffer_st": 0.5, "pfeiffer+deft_e1e-2_st": 0.8, "lora+deft_thr_st": 0.95}
    for v, q in variants.items():
        atomic_write_json(tmp_path / "rows" / f"bbc_news__{v}__s0.json", _row(v, q))
    cfg = sparsity.parse([f"out_dir={tmp_path}", "variants=" + ",".join(variants)])
    rel = {r["variant"]: r.get("rel_density") for r in sparsity_report.summarise(cfg)}
    assert rel["pfeiffer+deft_e1e-2_st"] == pytest.approx(0.2 / 0.5)   # not 0.2 / 0.1 (LoRA's baseline)
    assert rel["lora+deft_thr_st"] == pytest.approx(0.05 / 0.1)
    assert rel["lora_st"] is None and rel["pfeiffer_st"] is None


def test_fixed_threshold_diagnostic_table_and_bad_reference():
    from peftkit.bench import sparsity_fixed
    from peftkit.core.errors import ConfigError

    pairs = (("lora_st", 7.1), ("lora+deft", 4.8))
    rows = [{"dataset": "bbc_news", "seed": 0, "ref": "lora_st", "variant": v, "q_ref": 0.9, "density": d,
             "dense_acc": 95.0, "acc": 94.0, "agree": 97.0} for v, d in pairs]
    md = sparsity_fixed.markdown(rows)
    assert "| lora+deft | 0.90 | 4.8 | 95.0 -> 94.0 | 97.0 |" in md and md.count("\n| lora") == 2
    with pytest.raises(ConfigError, match="unknown reference variant"):
        sparsity_fixed.main(["ref=nope"])
