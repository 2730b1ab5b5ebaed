"""MEFT's reversible backward against its oracle (the same maths through plain autograd)."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from torch import nn

import peftkit as pk
from peftkit.bench.memory import saved_activation_bytes
from peftkit.methods.meft.apply import find_stack

VARIANTS = ("meft1", "meft2", "meft3")


def _grads(model: nn.Module, inputs: Any, rev: bool,
           seed: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    find_stack(model).use_reversible_backward = rev
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
    out = getattr(out, "logits", out)
    (out.float() ** 2).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}, out.detach()


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys() and a
    return max((a[n] - b[n]).abs().max().item() for n in a)


def _rel_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(((a[n] - b[n]).norm() / b[n].norm().clamp_min(1e-30)).item() for n in a)


def _model(name: str, dtype: torch.dtype = torch.float64, **meft: Any) -> nn.Module:
    model = pk.load_backbone(name, num_labels=3).to(dtype)
    meft.setdefault("adapter_init_std", 0.3)  # larger than the paper's 0.02 so every path carries gradient
    return pk.apply(model, pk.MEFT(**meft))


@pytest.mark.parametrize("num_rev", [None, 1])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", ["tiny_bert", "tiny_llama", "tiny_roberta"])
def test_fp64_reversible_equals_autograd(name: str, variant: str, num_rev: int | None, tiny: Any) -> None:
    model = _model(name, variant=variant, num_rev_layers=num_rev)
    batch = tiny.batch("tiny_bert" if name == "tiny_roberta" else name)  # ids in [5, 1000): fit both
    g_rev, out_rev = _grads(model, batch, rev=True)
    g_ref, out_ref = _grads(model, batch, rev=False)
    assert torch.equal(out_rev, out_ref)
    assert _max_diff(g_rev, g_ref) <= 1e-10
    assert min(g.abs().max().item() for g in g_ref.values()) > 1e-8  # every parameter got a real gradient


@pytest.mark.parametrize("variant", VARIANTS)
def test_fp32_reversible_close_to_autograd(variant: str, tiny: Any) -> None:
    """fp32 on a 2-layer model: reported, loosely bounded (the docs table covers real depths)."""
    for stream in ("auto", "model"):
        model = _model("tiny_bert", torch.float32, variant=variant, stream_dtype=stream)
        rel = _rel_diff(_grads(model, tiny.batch("tiny_bert"), True)[0],
                        _grads(model, tiny.batch("tiny_bert"), False)[0])
        print(f"fp32 {variant} stream={stream}: max relative grad diff {rel:.2e}")
        assert rel < 1e-3


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", ["tiny_bert", "tiny_llama"])
def test_dropout_masks_replayed(name: str, variant: str, tiny: Any) -> None:
    """Train mode, dropout in the block and the adapters: the recomputation draws the forward's masks."""
    model = _model(name, variant=variant, adapter_dropout=0.2)
    model.train()
    batch = tiny.batch(name)
    g1, o1 = _grads(model, batch, rev=True, seed=5)
    g2, _ = _grads(model, batch, rev=True, seed=5)
    g_ref, o_ref = _grads(model, batch, rev=False, seed=5)
    _, o_other = _grads(model, batch, rev=True, seed=6)
    assert not torch.equal(o1, o_other)            # dropout is really on
    assert all(torch.equal(g1[n], g2[n]) for n in g1)
    assert torch.equal(o1, o_ref) and _max_diff(g1, g_ref) <= 1e-10


def test_anchors_make_reconstruction_exact(tiny: Any) -> None:
    model = _model("tiny_bert", torch.float32, variant="meft3", stream_dtype="model", anchor_every=1)
    batch = tiny.batch("tiny_bert")
    g_rev, _ = _grads(model, batch, True)
    g_ref, _ = _grads(model, batch, False)
    assert _rel_diff(g_rev, g_ref) < 1e-5
    model64 = _model("tiny_bert", variant="meft3", anchor_every=2)
    assert _max_diff(_grads(model64, batch, True)[0], _grads(model64, batch, False)[0]) <= 1e-10


def test_autocast_reentered_in_backward(tiny: Any) -> None:
    model = _model("tiny_bert", torch.float32, variant="meft1")
    batch = tiny.batch("tiny_bert")
    grads = {}
    for rev in (True, False):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            grads[rev], _ = _grads(model, batch, rev)
    # F and G recompute bit-identically in bf16 (autocast re-entered), so only the fp64 stream arithmetic
    # and the order of accumulation differ
    assert _rel_diff(grads[True], grads[False]) < 1e-2


@pytest.mark.parametrize("variant", VARIANTS)
def test_point_transformer(variant: str) -> None:
    model = _model("tiny_point", variant=variant, adapter_dropout=0.1)
    model.train()
    pts = torch.randn(2, 128, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    g_rev, o_rev = _grads(model, pts, True, seed=1)
    g_ref, o_ref = _grads(model, pts, False, seed=1)
    # The random tiny point model has near-constant tokens (cls token and position ~N(0, .02^2)), so its
    # pre-LNs have Jacobians ~1/std: even in fp64 the reconstructed layer-0 input is off by ~1e-9 here.
    assert torch.equal(o_rev, o_ref) and _rel_diff(g_rev, g_ref) < 1e-7


def test_context_tensor_with_gradient_is_a_function_input() -> None:
    """The point transformer's positions enter every block; a trainable pos_embed gets the right gradient."""
    model = _model("tiny_point", variant="meft3")
    for p in model.pos_embed.parameters():
        p.requires_grad_(True)
    pts = torch.randn(2, 128, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    g_rev, _ = _grads(model, pts, True)
    g_ref, _ = _grads(model, pts, False)
    assert any(n.startswith("pos_embed") for n in g_ref)
    assert _rel_diff(g_rev, g_ref) < 1e-7


def test_lora_inside_the_blocks_trains_through_the_function(tiny: Any) -> None:
    model = pk.load_backbone("tiny_bert", num_labels=3).double()
    model = pk.apply(model, [pk.LoRA(rank=2), pk.MEFT(variant="meft1", adapter_init_std=0.3)])
    for n, p in model.named_parameters():
        if "lora_B" in n:  # test-only perturbation of LoRA's zero init so its A matrices get gradient
            nn.init.normal_(p, std=0.3)
    batch = tiny.batch("tiny_bert")
    g_rev, _ = _grads(model, batch, True)
    g_ref, _ = _grads(model, batch, False)
    lora = [n for n in g_ref if "lora_" in n]
    assert lora and all(g_ref[n].abs().sum() > 0 for n in lora)
    assert _max_diff(g_rev, g_ref) <= 1e-10


def _bert(layers: int) -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                     intermediate_size=64, num_labels=2)
    return BertForSequenceClassification(cfg)


def test_saved_activations_flat_in_depth() -> None:
    ids = torch.randint(5, 100, (2, 16))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([0, 1])}
    saved = {}
    for layers in (2, 6):
        for k in (0, layers):
            model = pk.apply(_bert(layers), pk.MEFT(num_rev_layers=k, anchor_every=0))
            model.train()
            saved[layers, k] = saved_activation_bytes(model, batch)
    assert saved[2, 2] == saved[6, 6]                  # reversible, no anchors: independent of depth
    assert saved[6, 0] > 2.5 * saved[2, 0]             # vanilla backward grows with depth
    assert saved[6, 6] < 0.25 * saved[6, 0]
    # default "auto" anchors: each adds its two fp32 streams [2, 16, 32] (the bottom one, x, only one)
    model = pk.apply(_bert(6), pk.MEFT()).train()
    with_anchors = saved_activation_bytes(model, batch)
    anchors = find_stack(model).anchors
    assert anchors is not None
    stream = 2 * 16 * 32 * 4
    assert with_anchors == saved[6, 6] + stream * (2 * len(anchors) - (0 in anchors))


@pytest.mark.parametrize("order", ["meft,deft", "deft,meft"])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", ["tiny_bert", "tiny_llama"])
def test_deft_density_gradient_through_reversible_backward(name: str, variant: str, order: str,
                                                           tiny: Any) -> None:
    """DEFT's probes sit inside F or G, whose forward runs without a graph: the reversible backward must
    rebuild the density term's gradient during recomputation. Task + density loss, against plain autograd."""
    model = pk.load_backbone(name, num_labels=3).double()
    meft = pk.MEFT(variant=variant, adapter_init_std=0.3)
    deft = pk.DEFT(weight=1.0, eps=1e-2, exclude_padding=True)  # eps 1e-2: gradients of a useful size here
    model = pk.apply(model, [meft, deft] if order == "meft,deft" else [deft, meft])
    batch = tiny.batch(name)
    grads, dens = {}, {}
    for rev in (True, False):
        find_stack(model).use_reversible_backward = rev
        model.zero_grad(set_to_none=True)
        out = model(**batch).logits
        aux = pk.aux_loss(model)
        assert aux.requires_grad
        (out.pow(2).mean() + 10 * aux).backward()
        grads[rev] = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        dens[rev] = aux.item()
    assert dens[True] == pytest.approx(dens[False], rel=1e-12)
    assert _max_diff(grads[True], grads[False]) <= 1e-10
    # and the density term alone has a gradient that reaches the adapters
    find_stack(model).use_reversible_backward = True
    model.zero_grad(set_to_none=True)
    model(**batch)
    pk.aux_loss(model).backward()
    adapters = list(find_stack(model).couplings.parameters())
    assert sum(p.grad.abs().sum().item() for p in adapters if p.grad is not None) > 0


def _rel_l2(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Relative L2 error of all trainable gradients together."""
    num = sum(float((a[n].double() - b[n].double()).norm() ** 2) for n in b)
    return (num / sum(float(b[n].double().norm() ** 2) for n in b)) ** 0.5


@pytest.mark.parametrize("dropout", [0.0, 0.1])
@pytest.mark.parametrize("variant", VARIANTS)
def test_default_fp32_gradients_exact_at_24_layers(variant: str, dropout: float) -> None:
    """fp32 model, default settings (fp32 streams, ``anchor_every="auto"``), 24 layers, d 128: the reversible
    gradients are within 1e-3 relative L2 error of plain autograd's. Without anchors they are not (the
    reconstruction error grows ~10x per layer for MEFT1/2, ~100x for MEFT3)."""
    from peftkit.bench.random_bert import build_bench_bert

    ids = torch.randint(5, 1000, (2, 32), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    errs = {}
    for anchors in ("auto", 0):
        model = build_bench_bert(num_labels=3, arch="d128", layers=24, dropout=dropout)
        model = pk.apply(model, pk.MEFT(variant=variant, anchor_every=anchors, on_error="raise"
                                        if anchors == "auto" else "warn")).train()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the unanchored run warns, by design
            g_rev, _ = _grads(model, batch, True)
        g_ref, _ = _grads(model, batch, False)
        errs[anchors] = _rel_l2(g_rev, g_ref)
    print(f"{variant} dropout {dropout}: relative gradient error {errs}")
    assert errs["auto"] < 1e-3
    assert not errs[0] < 1e-3
