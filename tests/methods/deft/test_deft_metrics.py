"""Density metrics against hand computations on a toy model whose activations are known exactly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import peftkit as pk
from peftkit.core.spec import BackboneSpec, StackSpec
from peftkit.methods.deft.metrics import density_report, metric_names

# Two layers, ReLU: layer l's pre-activation is x * SCALE[l] + SHIFT[l], its activation relu of that.
SCALE, SHIFT = (1.0, -2.0), (0.0, 1e-3)
TOY_SPEC = BackboneSpec("toy", (StackSpec("encoder", "encoder", {"mlp_act": "act"}),))


class _Block(nn.Module):
    def __init__(self, scale: float, shift: float) -> None:
        super().__init__()
        self.scale, self.shift = scale, shift
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x * self.scale + self.shift)


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.ModuleList([_Block(s, b) for s, b in zip(SCALE, SHIFT)])

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return torch.stack([blk(x) for blk in self.encoder]).sum()


VALUES = [0.0, 1e-7, -5e-5, 5e-5, 3e-3, -0.4, 0.5, 2.0, -1e-3, 0.02]


def _batches() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for b, t in ((2, 3), (1, 5)):  # dynamic padding: the length differs per batch
        idx = torch.randint(len(VALUES), (b, t, 4), generator=g)
        x = torch.tensor(VALUES)[idx]
        mask = torch.ones(b, t, dtype=torch.long)
        mask[-1, t - 1:] = 0
        out.append({"x": x, "attention_mask": mask, "labels": torch.zeros(b, dtype=torch.long)})
    return out


def _hand(batches, cond, masked: bool, pre: bool = False) -> list[float]:
    """Per layer: 100 * mean over samples of (#positions x units meeting ``cond``) / (#positions x units)."""
    per_layer = []
    for scale, shift in zip(SCALE, SHIFT):
        fracs = []
        for batch in batches:
            for sample, mrow in zip(batch["x"].tolist(), batch["attention_mask"].tolist()):
                hit = cnt = 0
                for row, m in zip(sample, mrow):
                    if masked and not m:
                        continue
                    for v in row:
                        p = float(torch.tensor(v, dtype=torch.float32) * scale + shift)  # fp32 like the model
                        a = max(p, 0.0)
                        hit += cond(p if pre else a)
                        cnt += 1
                fracs.append(hit / cnt)
        per_layer.append(100.0 * sum(fracs) / len(fracs))
    return per_layer


CONDS = {
    "exact": (lambda a: a != 0, False), "gt1e-06": (lambda a: abs(a) > 1e-6, False),
    "gt1e-04": (lambda a: abs(a) > 1e-4, False), "gt1e-02": (lambda a: abs(a) > 1e-2, False),
    "preact_pos": (lambda p: p > 0, True),
}


def test_every_metric_per_layer_and_overall_matches_the_hand_computation():
    model = pk.attach_spec(_Toy(), TOY_SPEC)
    batches = _batches()
    report = density_report(model, batches)
    assert report["samples"] == 3
    for name, (cond, pre) in CONDS.items():
        for masked in (False, True):
            key = f"{name}_masked" if masked else name
            hand = _hand(batches, cond, masked, pre)
            for i, v in enumerate(hand):
                assert report[f"{key}/L{i}@fp32"] == pytest.approx(v, abs=1e-9), (key, i)
            assert report[f"{key}@fp32"] == pytest.approx(sum(hand) / 2, abs=1e-9), key
    # the toy's values separate the metrics and the masking, so each check above is a real one
    for name in CONDS:
        gaps = [abs(report[f"{name}/L{i}@fp32"] - report[f"{name}_masked/L{i}@fp32"]) for i in (0, 1)]
        assert max(gaps) > 1e-3, name
    assert report["exact@fp32"] > report["gt1e-04@fp32"] > report["gt1e-02@fp32"]
    assert report["gt1e-06@fp32"] < report["exact@fp32"]  # the 1e-7 entries
    assert set(metric_names()) == {k.split("@")[0] for k in report if "/" not in k and k != "samples"}


def test_report_leaves_the_model_as_it_was():
    model = pk.attach_spec(_Toy(), TOY_SPEC)
    model.train()
    acts = [blk.act for blk in model.encoder]
    density_report(model, _batches(), max_batches=1)
    assert [blk.act for blk in model.encoder] == acts and model.training
    assert not model._forward_pre_hooks and not model._forward_hooks


def test_pad_key_none_masks_nothing_and_max_batches_stops():
    model = pk.attach_spec(_Toy(), TOY_SPEC)
    batches = _batches()
    r = density_report(model, batches, pad_key=None, max_batches=1)
    assert r["samples"] == 2
    assert r["exact_masked@fp32"] == pytest.approx(r["exact@fp32"])


def test_bf16_evaluation_labels_the_dtype_and_keeps_the_model_fp32():
    model = pk.load_backbone("tiny_bert", task="classification", num_labels=3)
    batch = {"input_ids": torch.randint(5, 1000, (2, 6)), "labels": torch.tensor([0, 1]),
             "attention_mask": torch.ones(2, 6, dtype=torch.long)}
    r32 = density_report(model, [batch])
    r16 = density_report(model, [batch], dtype=torch.bfloat16)
    assert "exact@fp32" in r32 and "exact@bf16" in r16
    assert not any(k.endswith("@fp32") for k in r16)
    assert next(model.parameters()).dtype == torch.float32
    assert r16["gt1e-02@bf16"] == pytest.approx(r32["gt1e-02@fp32"], abs=2.0)  # same weights, close


def test_same_figures_with_deft_applied_and_prompt_tokens_masked():
    base = pk.load_backbone("tiny_bert", task="classification", num_labels=3)
    batch = {"input_ids": torch.randint(5, 1000, (2, 6)), "labels": torch.tensor([0, 1]),
             "attention_mask": torch.tensor([[1] * 6, [1] * 3 + [0] * 3])}
    plain = density_report(base, [batch])
    with_deft = density_report(pk.apply(base, [pk.LoRA(), pk.DEFT()]), [batch])
    assert with_deft == pytest.approx(plain)
    pk.remove(base)
    model = pk.apply(base, [pk.PromptTuning(num_virtual_tokens=2), pk.DEFT()])
    acts: list[torch.Tensor] = []
    handle = base.bert.encoder.layer[0].intermediate.intermediate_act_fn.inner.register_forward_hook(
        lambda m, i, o: acts.append(o.detach()))
    r = density_report(model, [batch])
    handle.remove()
    a = acts[0]  # [2, 2 + 6, 64]: virtual tokens first
    assert a.shape[1] == 8
    hand_all = sum(float((a[b].abs() > 1e-2).float().mean()) for b in range(2)) / 2 * 100
    real = [a[0, 2:], a[1, 2:5]]
    hand_masked = sum(float((r_.abs() > 1e-2).float().mean()) for r_ in real) / 2 * 100
    assert r["gt1e-02/L0@fp32"] == pytest.approx(hand_all, abs=1e-4)
    assert r["gt1e-02_masked/L0@fp32"] == pytest.approx(hand_masked, abs=1e-4)


def test_t5_encoder_and_decoder_reported_apart_with_label_padding_masked():
    model = pk.load_backbone("tiny_t5")
    dec_acts: list[torch.Tensor] = []
    handle = model.decoder.block[1].layer[2].DenseReluDense.act.register_forward_hook(
        lambda m, i, o: dec_acts.append(o.detach()))
    labels = torch.tensor([[3, 4, 7, -100], [5, -100, -100, -100]])
    batch = {"input_ids": torch.randint(5, 1000, (2, 5)), "labels": labels,
             "attention_mask": torch.ones(2, 5, dtype=torch.long)}
    r = density_report(model, [batch])
    handle.remove()
    assert {"encoder/exact@fp32", "decoder/exact@fp32", "decoder/gt1e-02_masked/L1@fp32"} <= set(r)
    assert "exact@fp32" not in r  # no pooled figure for encoder-decoder models
    a = dec_acts[0]  # [2, 4, 64]
    hand = (float((a[0, :3].abs() > 1e-2).float().mean()) + float((a[1, :1].abs() > 1e-2).float().mean())) / 2
    assert r["decoder/gt1e-02_masked/L1@fp32"] == pytest.approx(100 * hand, abs=1e-4)
