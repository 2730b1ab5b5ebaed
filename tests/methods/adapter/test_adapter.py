"""Bottleneck adapters: placement by role, the formulas by hand, sizes, and a role-only custom backbone."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import peftkit as pk
from peftkit.core.spec import BackboneSpec, StackSpec
from peftkit.core.state import get_state
from peftkit.layers.bottleneck import Bottleneck
from peftkit.methods.adapter.layers import (
    ParallelAdapter,
    ParallelInputTap,
    ParallelOutput,
    SerialAdapter,
)

ACTS = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu}


def by_hand(ad: Bottleneck, h: torch.Tensor, act: str) -> torch.Tensor:
    """W_up f(W_down h + b_down) + b_up, written out."""
    return F.linear(ACTS[act](F.linear(h, ad.down.weight, ad.down.bias)), ad.up.weight, ad.up.bias)


def randomise(model: nn.Module) -> None:
    with torch.no_grad():
        for p in get_state(model).applied[0].params():
            p.copy_(torch.randn_like(p) * 0.3)


def test_houlsby_wraps_attn_out_and_mlp_out_of_every_block(tiny: Any) -> None:
    model = tiny.build("tiny_bert")
    layers = model.bert.encoder.layer
    originals = [(blk.attention.output.dense, blk.output.dense) for blk in layers]
    pk.apply(model, pk.Adapter(kind="houlsby"))
    for blk, (attn_out, mlp_out) in zip(layers, originals):
        assert isinstance(blk.attention.output.dense, SerialAdapter)
        assert blk.attention.output.dense.base_layer is attn_out
        assert isinstance(blk.output.dense, SerialAdapter) and blk.output.dense.base_layer is mlp_out
        assert not isinstance(blk.intermediate.dense, SerialAdapter)


def test_pfeiffer_wraps_only_mlp_out(tiny: Any) -> None:
    model = pk.apply(tiny.build("tiny_llama"), pk.Adapter())   # pfeiffer is the default
    wrapped = [n for n, m in model.named_modules() if isinstance(m, SerialAdapter)]
    assert wrapped == [f"model.layers.{i}.mlp.down_proj" for i in range(2)]


@pytest.mark.parametrize("act", ["relu", "gelu", "silu"])
def test_serial_formula(act: str, tiny: Any) -> None:
    model = pk.apply(tiny.build("tiny_bert"), pk.Adapter(kind="pfeiffer", bottleneck=5, activation=act))
    randomise(model)
    w = model.bert.encoder.layer[0].output.dense
    h = torch.randn(2, 3, 64)                      # (b, t, d_ff)
    y = F.linear(h, w.base_layer.weight, w.base_layer.bias)
    torch.testing.assert_close(w(h), y + by_hand(w.adapter, y, act))
    assert w.adapter.down.out_features == 5


def test_parallel_split_ffn_formula_bert(tiny: Any) -> None:
    """BERT: the branch reads the FFN input (tapped at intermediate.dense) and adds to output.dense."""
    model = pk.apply(tiny.build("tiny_bert"), pk.Adapter(kind="parallel", reduction_factor=8, scale=4.0))
    randomise(model)
    blk = model.bert.encoder.layer[1]
    assert isinstance(blk.intermediate.dense, ParallelInputTap)
    assert isinstance(blk.output.dense, ParallelOutput)
    seen: dict[str, torch.Tensor] = {}
    blk.intermediate.register_forward_hook(lambda m, i, o: seen.update(x=i[0]))
    blk.output.dense.register_forward_hook(lambda m, i, o: seen.update(h=i[0], out=o))
    tiny.forward(model, "tiny_bert")
    out = blk.output.dense
    ffn = F.linear(seen["h"], out.base_layer.weight, out.base_layer.bias)
    expected = ffn + 4.0 * by_hand(out.adapter, seen["x"], "relu")
    torch.testing.assert_close(seen["out"], expected)
    assert out.slot.value is None   # the recorded input is released after use


def test_parallel_wraps_whole_mlp_llama_and_t5(tiny: Any) -> None:
    model = pk.apply(tiny.build("tiny_llama"), pk.Adapter(kind="parallel", bottleneck=3, scale=2.0))
    randomise(model)
    mlp = model.model.layers[0].mlp
    assert isinstance(mlp, ParallelAdapter)
    x = torch.randn(2, 4, 32)
    torch.testing.assert_close(mlp(x), mlp.base_layer(x) + 2.0 * by_hand(mlp.adapter, x, "relu"))

    t5 = pk.apply(tiny.build("tiny_t5"), pk.Adapter(kind="parallel"))
    wrapped = [n for n, m in t5.named_modules() if isinstance(m, ParallelAdapter)]
    assert len(wrapped) == 4 and sum(n.startswith("decoder.") for n in wrapped) == 2   # both stacks


def test_houlsby_on_both_t5_stacks(tiny: Any) -> None:
    model = pk.apply(tiny.build("tiny_t5"), pk.Adapter(kind="houlsby"))
    names = [n for n, m in model.named_modules() if isinstance(m, SerialAdapter)]
    assert len(names) == 8   # 2 sites x (2 encoder + 2 decoder blocks)
    assert "decoder.block.1.layer.2.DenseReluDense.wo" in names


@pytest.mark.parametrize("kw,m", [({}, 2), ({"reduction_factor": 4}, 8), ({"bottleneck": 7}, 7),
                                  ({"reduction_factor": 100}, 1)])
def test_bottleneck_width(kw: dict[str, Any], m: int, tiny: Any) -> None:
    model = pk.apply(tiny.build("tiny_bert"), pk.Adapter(**kw))   # hidden 32; default reduction 16
    ad = model.bert.encoder.layer[0].output.dense.adapter
    assert (ad.down.in_features, ad.down.out_features, ad.up.out_features) == (32, m, 32)


def test_near_identity_init() -> None:
    torch.manual_seed(0)
    ad = Bottleneck(256, 64, 256, init_std=1e-3)
    assert torch.count_nonzero(ad.up.weight) == 0 and torch.count_nonzero(ad.up.bias) == 0
    assert torch.count_nonzero(ad.down.bias) == 0
    assert abs(ad.down.weight.std().item() - 1e-3) < 1e-4
    assert torch.count_nonzero(ad(torch.randn(3, 256))) == 0


def test_training_moves_only_the_adapter(tiny: Any) -> None:
    model = pk.apply(tiny.build("tiny_bert"), pk.Adapter(kind="houlsby", init_scale=0.1, activation="gelu"))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    start = [p.detach().clone() for p in get_state(model).applied[0].params()]
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    target = torch.tensor([0, 2])
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(tiny.forward(model, "tiny_bert"), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert all(not torch.equal(p, p0) for p, p0 in zip(get_state(model).applied[0].params(), start))


def test_deepcopy_keeps_tap_pairs_separate(tiny: Any) -> None:
    model = pk.apply(tiny.build("tiny_bert"), pk.Adapter(kind="parallel"))
    randomise(model)
    clone = copy.deepcopy(model)
    blk, cblk = model.bert.encoder.layer[0], clone.bert.encoder.layer[0]
    assert cblk.intermediate.dense.slot is cblk.output.dense.slot
    assert cblk.output.dense.slot is not blk.output.dense.slot
    torch.testing.assert_close(tiny.output(clone, "tiny_bert"), tiny.output(model, "tiny_bert"))


def test_adapter_on_a_lora_wrapped_layer(tiny: Any) -> None:
    model = pk.apply(tiny.build("tiny_bert"), [pk.LoRA(targets=["mlp_out"]), pk.Adapter(kind="pfeiffer")])
    w = model.bert.encoder.layer[0].output.dense
    assert isinstance(w, SerialAdapter) and type(w.base_layer).__name__ == "Linear"   # peft's lora.Linear
    assert w.adapter.down.in_features == 32
    pk.remove(model)
    assert type(model.bert.encoder.layer[0].output.dense) is nn.Linear


def test_wrapper_exposes_base_attributes(tiny: Any) -> None:
    model = pk.apply(tiny.build("tiny_bert"), pk.Adapter())
    w = model.bert.encoder.layer[0].output.dense
    assert w.weight is w.base_layer.weight and (w.in_features, w.out_features) == (64, 32)
    assert w.adapter_params() == [f"adapter.{p}.{t}" for p in ("down", "up") for t in ("weight", "bias")]


# ---- a pure-PyTorch backbone described only by roles (the shape the point transformer will have) -----------


class _Attn(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)                          # 3 x (b, n, d)
        a = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
        return self.proj(a @ v)


class _Mlp(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.norm1, self.attn, self.norm2, self.mlp = nn.LayerNorm(d), _Attn(d), nn.LayerNorm(d), _Mlp(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ToyPointTransformer(nn.Module):
    """Pre-LN blocks with a fused qkv, and a head; no Hugging Face anywhere."""

    def __init__(self, d: int = 16, depth: int = 2, classes: int = 4) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([_Block(d) for _ in range(depth)])
        self.head = nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.head(x.mean(dim=1))


TOY_ROLES = {"attn_qkv": "attn.qkv", "attn_out": "attn.proj", "mlp": "mlp", "mlp_in": "mlp.fc1",
             "mlp_act": "mlp.act", "mlp_out": "mlp.fc2", "attn_norm": "norm1", "mlp_norm": "norm2"}


def toy() -> nn.Module:
    torch.manual_seed(3)
    model = ToyPointTransformer()
    spec = BackboneSpec("toy_point", (StackSpec("encoder", "blocks", TOY_ROLES),), head=("head",),
                        layout="pre_ln")
    return pk.attach_spec(model, spec)


@pytest.mark.parametrize("kind", ["houlsby", "pfeiffer", "parallel"])
def test_role_only_custom_backbone(kind: str, tmp_path: Any) -> None:
    model = toy()
    x = torch.randn(2, 10, 16)                                           # (b, n points, d)
    ref = model(x)
    adapted = pk.apply(model, pk.Adapter(kind=kind, bottleneck=4))
    torch.testing.assert_close(adapted(x), ref, rtol=0, atol=0)
    randomise(adapted)
    out = adapted(x)
    assert not torch.allclose(out, ref)
    pk.save_adapter(adapted, tmp_path / "a")
    torch.testing.assert_close(pk.load_adapter(toy(), tmp_path / "a")(x), out, rtol=0, atol=0)
    assert torch.equal(pk.remove(adapted)(x), ref)
    if kind == "parallel":   # the whole-FFN role is used when present
        assert isinstance(pk.apply(toy(), pk.Adapter(kind="parallel")).blocks[0].mlp, ParallelAdapter)


def test_lora_on_custom_backbone_with_fused_qkv() -> None:
    model = pk.apply(toy(), pk.LoRA(rank=2, targets=["attn_qkv", "mlp_out"]))
    report = pk.param_report(model)
    assert report.owner("lora").trainable == 2 * 2 * ((16 + 48) + (32 + 16))


def test_non_linear_role_is_refused() -> None:
    model = toy()
    spec = BackboneSpec("toy_point", (StackSpec("encoder", "blocks", {**TOY_ROLES, "mlp_out": "mlp.act"}),))
    with pytest.raises(pk.UnsupportedError, match="not a Linear-like layer"):
        pk.apply(model, pk.Adapter(), spec=spec)
    assert all(type(b.mlp) is _Mlp for b in model.blocks)   # nothing half-applied
