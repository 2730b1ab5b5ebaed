"""The contract every method honours, table-driven over methods x tiny backbones (docs/design.md, Tests).

For each case and backbone:
  * a zero-initialised method leaves the output unchanged at init;
  * after one backward exactly the method's parameters and the head have gradients;
  * ``pk.param_report`` equals a closed-form count, per owner;
  * save -> fresh model -> load gives identical outputs;
  * ``pk.remove`` restores the base outputs, modules and attributes.

To add a method: append a ``Case`` to ``CASES`` (its closed-form count reads shapes from the *unmodified*
base model through the spec). To add a backbone: add it to ``TINY_BACKBONES`` in tests/conftest.py and
to the case's ``backbones``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn

import peftkit as pk
from peftkit.core.spec import BackboneSpec
from peftkit.core.state import get_state

ALL = ("tiny_bert", "tiny_llama", "tiny_t5")
CLASSIFIERS = ("tiny_bert", "tiny_llama")
POINT = ("tiny_point",)   # the Point-MAE transformer: fused qkv, so LoRA targets attn_qkv / attn_out


@dataclass(frozen=True)
class Case:
    """One method configuration in the contract table.

    Attributes:
        id: test id.
        config: builds the method config (or a list of configs for a stack).
        owners: method name -> closed-form trainable count ``f(base_model, spec)`` of that method.
        backbones: names in ``TINY_BACKBONES`` this case runs on.
        init_atol: None when the method changes the output at init; else the allowed max abs difference
            from the base output right after ``pk.apply`` (0.0 = exactly equal).
        init_reference: turns a fresh base model into the reference for the init check (QLoRA: the
            quantised base, since LoRA adds exactly zero to *that*); None = the base itself.
        trains_base: the method trains pretrained weights in place (full FT; Point-PEFT's block biases), so
            ``pk.remove`` cannot restore the base outputs after training and the parameter total adds nothing.
        eval_mode: the method adds dropout / BatchNorm (Point-PEFT): outputs are compared in eval mode (the
            modules it adds start in train mode).
    """

    id: str
    config: Callable[[], Any]
    owners: dict[str, Callable[[nn.Module, BackboneSpec], int]]
    backbones: tuple[str, ...] = ALL
    init_atol: float | None = 0.0
    init_reference: Callable[[nn.Module, Any], nn.Module] | None = None
    trains_base: bool = False
    eval_mode: bool = False


# ---- closed-form counts, from the base model's shapes ------------------------------------------------------


def _mods(model: nn.Module, spec: BackboneSpec, role: str) -> list[nn.Module]:
    return [model.get_submodule(p) for p in spec.role_paths(model, role)]


Count = Callable[[nn.Module, BackboneSpec], int]


def lora_count(roles: tuple[str, ...], r: int, dora: bool = False) -> Count:
    """LoRA: r * (in + out) per target (A: r x in, B: out x r); DoRA adds the magnitude vector (out)."""

    def f(model: nn.Module, spec: BackboneSpec) -> int:
        return sum(r * (m.in_features + m.out_features) + (m.out_features if dora else 0)
                   for role in roles for m in _mods(model, spec, role))

    return f


def adapter_count(kind: str, reduction: float) -> Callable[[nn.Module, BackboneSpec], int]:
    """Bottleneck: d_in*m + m + m*d_out + d_out per site, m = d_out // reduction."""

    def one(d_in: int, d_out: int) -> int:
        m = int(d_out // reduction)
        return d_in * m + m + m * d_out + d_out

    def f(model: nn.Module, spec: BackboneSpec) -> int:
        if kind == "parallel":
            ins, outs = _mods(model, spec, "mlp_in"), _mods(model, spec, "mlp_out")
            return sum(one(a.in_features, b.out_features) for a, b in zip(ins, outs))
        roles = ("attn_out", "mlp_out") if kind == "houlsby" else ("mlp_out",)
        return sum(one(m.out_features, m.out_features) for role in roles for m in _mods(model, spec, role))

    return f


def ia3_count(model: nn.Module, spec: BackboneSpec) -> int:
    """IA3: one scale per output of k and v, one per input of mlp_out."""
    kv = sum(m.out_features for role in ("attn_k", "attn_v") for m in _mods(model, spec, role))
    return kv + sum(m.in_features for m in _mods(model, spec, "mlp_out"))


def _kv_width(model: nn.Module) -> tuple[int, int]:
    c = model.config
    heads, kv_heads = c.num_attention_heads, getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    return c.num_hidden_layers, c.hidden_size // heads * kv_heads


def prompt_count(n: int) -> Callable[[nn.Module, BackboneSpec], int]:
    """Prompt tuning: n x d embeddings."""
    return lambda model, spec: n * model.config.hidden_size


def prefix_count(n: int, proj: int | None = None) -> Callable[[nn.Module, BackboneSpec], int]:
    """Prefix tuning: n x (L * 2 * d_kv); with the MLP: n x d_kv + (d_kv*p + p) + (p*L*2*d_kv + L*2*d_kv).

    d_kv is the key/value width (hidden / heads * kv_heads: smaller than the hidden size under GQA)."""

    def f(model: nn.Module, spec: BackboneSpec) -> int:
        layers, d_kv = _kv_width(model)
        out = layers * 2 * d_kv
        if proj is None:
            return n * out
        return n * d_kv + d_kv * proj + proj + proj * out + out

    return f


def meft_count(r: int) -> Callable[[nn.Module, BackboneSpec], int]:
    """MEFT: two adapters (d*r + r + r*d + d) per block, d = the block width (mlp_out's out_features)."""
    return lambda model, spec: sum(2 * (2 * m.out_features * r + r + m.out_features)
                                   for m in _mods(model, spec, "mlp_out"))


def full_count(model: nn.Module, spec: BackboneSpec) -> int:
    """Full fine-tuning: every parameter outside the head."""
    return sum(p.numel() for p in model.parameters()) - head_count(model, spec)


def point_peft_count(c: Any) -> Count:
    """Point-PEFT without the bank (Tang et al. 2024; the reference MAE code's trained names), d = width:
    GA-Adapter: shared LN + local attention (qkv d -> 3*h*e, proj h*e -> d), per block two bottlenecks
    (d*r + r + r*d + d each) and an out-BN (2d), 3 coordinates per prompt token; P2-Prompt: p*d per prompted
    block; BitFit-style biases of proj, fc1, fc2, norm1, norm2 per block; final norm; cls token + pos."""

    def f(model: nn.Module, spec: BackboneSpec) -> int:
        d, hidden = model.get_submodule(spec.role_paths(model, "mlp_in")[0]).weight.shape[::-1]
        depth = len(spec.block_paths(model))
        inner = c.local_heads * c.local_head_dim
        r = c.adapter_dim
        n = 2 * d + d * 3 * inner + inner * d + d + depth * (2 * (2 * d * r + r + d) + 2 * d)
        n += 3 * c.num_prompt_tokens + c.prompt_layers * c.num_prompt_tokens * d
        return n + depth * (4 * d + hidden) + 2 * d + 2 * d

    return f


def head_count(model: nn.Module, spec: BackboneSpec) -> int:
    return sum(p.numel() for h in spec.head for p in model.get_submodule(h).parameters())


def quantised(model: nn.Module, config: Any) -> nn.Module:
    """The base with its block Linears quantised exactly as QLoRA does, and no LoRA (nor zero-init others)."""
    from peftkit.core.surgery import UndoRecord
    from peftkit.methods.hf_peft.qlora import quantise_blocks

    config = next(c for c in (config if isinstance(config, list) else [config]) if isinstance(c, pk.QLoRA))
    quantise_blocks(model, pk.get_spec(model), config, UndoRecord())
    return model


# ---- the table ---------------------------------------------------------------------------------------------

QV = ("attn_q", "attn_v")
_POINT_PEFT = pk.PointPEFT(prompt_layers=1, use_bank=False)   # tiny_point has 2 blocks; no bank file
MANY = ("attn_q", "attn_k", "attn_v", "attn_out", "mlp_in", "mlp_out")
CASES: list[Case] = [
    Case("adapter-houlsby", lambda: pk.Adapter(kind="houlsby", reduction_factor=8),
         {"adapter": adapter_count("houlsby", 8)}),
    Case("adapter-pfeiffer", lambda: pk.Adapter(kind="pfeiffer", reduction_factor=8),
         {"adapter": adapter_count("pfeiffer", 8)}),
    Case("adapter-parallel", lambda: pk.Adapter(kind="parallel", reduction_factor=8, scale=4.0),
         {"adapter": adapter_count("parallel", 8)}),
    Case("lora", lambda: pk.LoRA(rank=4, alpha=8), {"lora": lora_count(QV, 4)}),
    Case("lora-many", lambda: pk.LoRA(rank=2, targets=list(MANY)), {"lora": lora_count(MANY, 2)}),
    Case("dora", lambda: pk.DoRA(rank=4, alpha=8), {"dora": lora_count(QV, 4, dora=True)}, init_atol=1e-5),
    Case("ia3", lambda: pk.IA3(), {"ia3": ia3_count}),
    Case("qlora-bnb", lambda: pk.QLoRA(rank=4), {"qlora": lora_count(QV, 4)}, init_reference=quantised),
    Case("qlora-torchao", lambda: pk.QLoRA(rank=4, backend="torchao", scaler_block_size=8),
         {"qlora": lora_count(QV, 4)}, init_reference=quantised),
    Case("prompt", lambda: pk.PromptTuning(num_virtual_tokens=4), {"prompt": prompt_count(4)},
         backbones=CLASSIFIERS, init_atol=None),
    Case("prefix", lambda: pk.PrefixTuning(num_virtual_tokens=4), {"prefix": prefix_count(4)},
         backbones=CLASSIFIERS, init_atol=None),
    Case("prefix-projection", lambda: pk.PrefixTuning(4, projection=True, projection_dim=16),
         {"prefix": prefix_count(4, 16)}, backbones=CLASSIFIERS, init_atol=None),
    # stacks: peftkit's adapters with peft's LoRA, both orders, LoRA also inside an adapter-wrapped layer
    Case("adapter+lora", lambda: [pk.Adapter(kind="houlsby", reduction_factor=8),
                                  pk.LoRA(rank=2, targets=["attn_q", "attn_v", "mlp_out"])],
         {"adapter": adapter_count("houlsby", 8), "lora": lora_count(("attn_q", "attn_v", "mlp_out"), 2)}),
    Case("lora+adapter", lambda: [pk.LoRA(rank=2, targets=["attn_v", "mlp_out"]),
                                  pk.Adapter(kind="parallel", reduction_factor=8)],
         {"lora": lora_count(("attn_v", "mlp_out"), 2), "adapter": adapter_count("parallel", 8)},
         backbones=CLASSIFIERS),
    Case("adapter+qlora", lambda: [pk.Adapter(kind="houlsby", reduction_factor=8), pk.QLoRA(rank=2)],
         {"adapter": adapter_count("houlsby", 8), "qlora": lora_count(QV, 2)}, init_reference=quantised),
    Case("qlora+adapter", lambda: [pk.QLoRA(rank=2, targets=["attn_q", "mlp_out"]), pk.Adapter()],
         {"qlora": lora_count(("attn_q", "mlp_out"), 2), "adapter": adapter_count("pfeiffer", 16)},
         backbones=CLASSIFIERS, init_reference=quantised),
    Case("adapter+prompt", lambda: [pk.Adapter(kind="pfeiffer", reduction_factor=8), pk.PromptTuning(3)],
         {"adapter": adapter_count("pfeiffer", 8), "prompt": prompt_count(3)}, backbones=CLASSIFIERS,
         init_atol=None),
    # MEFT (reversible) changes the output at init (two-stream mean); tiny_t5 is not a supported family
    Case("meft1", lambda: pk.MEFT(variant="meft1"), {"meft": meft_count(8)}, backbones=CLASSIFIERS,
         init_atol=None),
    Case("meft2", lambda: pk.MEFT(variant="meft2", num_rev_layers=1), {"meft": meft_count(8)},
         backbones=CLASSIFIERS, init_atol=None),
    Case("meft3", lambda: pk.MEFT(variant="meft3", adapter_dim=4), {"meft": meft_count(4)},
         backbones=CLASSIFIERS, init_atol=None),
    Case("lora+meft", lambda: [pk.LoRA(rank=2), pk.MEFT(variant="meft1")],
         {"lora": lora_count(QV, 2), "meft": meft_count(8)}, backbones=CLASSIFIERS, init_atol=None),
    # the point transformer (tiny_point)
    Case("lora-point", lambda: pk.LoRA(rank=4, targets=["attn_qkv", "attn_out"]),
         {"lora": lora_count(("attn_qkv", "attn_out"), 4)}, backbones=POINT),
    Case("adapter-houlsby-point", lambda: pk.Adapter(kind="houlsby", reduction_factor=8),
         {"adapter": adapter_count("houlsby", 8)}, backbones=POINT),
    Case("adapter-parallel-point", lambda: pk.Adapter(kind="parallel", reduction_factor=8, scale=4.0),
         {"adapter": adapter_count("parallel", 8)}, backbones=POINT),
    Case("adapter+lora-point", lambda: [pk.Adapter(kind="pfeiffer", reduction_factor=8),
                                        pk.LoRA(rank=2, targets=["attn_qkv", "mlp_out"])],
         {"adapter": adapter_count("pfeiffer", 8), "lora": lora_count(("attn_qkv", "mlp_out"), 2)},
         backbones=POINT),
    Case("meft1-point", lambda: pk.MEFT(variant="meft1"), {"meft": meft_count(8)}, backbones=POINT,
         init_atol=None),
    Case("lora+meft-point", lambda: [pk.LoRA(rank=2, targets=["attn_qkv"]), pk.MEFT(variant="meft1")],
         {"lora": lora_count(("attn_qkv",), 2), "meft": meft_count(8)}, backbones=POINT, init_atol=None),
    Case("point_peft", lambda: _POINT_PEFT, {"point_peft": point_peft_count(_POINT_PEFT)}, backbones=POINT,
         init_atol=None, trains_base=True, eval_mode=True),
    # the reference points: full fine-tuning and head-only (a linear probe; no method parameters)
    Case("full", lambda: pk.FullFineTune(), {"full": full_count}, backbones=(*CLASSIFIERS, *POINT),
         trains_base=True),
    Case("head_only", lambda: pk.HeadOnly(), {}, backbones=(*CLASSIFIERS, *POINT)),
]


def _params(cases: list[Case], need_init: bool = False) -> list[Any]:
    return [pytest.param(c, b, id=f"{c.id}-{b}") for c in cases for b in c.backbones
            if not need_init or c.init_atol is not None]


def _method_params(model: nn.Module) -> list[nn.Parameter]:
    return [p for a in get_state(model).applied for p in a.params()]


def _perturb(params: list[nn.Parameter], scale: float = 0.05) -> None:
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn_like(p) * scale)


# ---- the contract ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case,name", _params(CASES, need_init=True))
def test_init_leaves_output_unchanged(case: Case, name: str, tiny: Any) -> None:
    model = tiny.build(name)
    reference = case.init_reference(tiny.build(name), case.config()) if case.init_reference else model
    ref = tiny.output(reference, name)
    out = tiny.output(pk.apply(model, case.config()), name)
    if case.init_atol == 0.0:
        assert torch.equal(out, ref)
    else:
        assert (out - ref).abs().max().item() <= case.init_atol


@pytest.mark.parametrize("case,name", _params(CASES))
def test_only_method_and_head_get_grads(case: Case, name: str, tiny: Any) -> None:
    model = pk.apply(tiny.build(name), case.config())
    state = get_state(model)
    _perturb(_method_params(model))   # so zero-initialised branches pass gradient to every parameter
    tiny.forward(model, name).float().pow(2).mean().backward()
    expected = {id(p) for p in _method_params(model)} | {id(p) for p in state.head_parameters()}
    with_grad = {id(p) for p in model.parameters() if p.grad is not None}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert with_grad == expected == trainable
    for a in state.applied:
        if a.name not in case.owners:
            assert not a.params(), f"{a.name} trains parameters the case does not count"
            continue
        assert a.params(), f"{a.name} declares no parameters"
        assert any(p.grad.abs().sum() > 0 for p in a.params()), f"{a.name}: all gradients are zero"


@pytest.mark.parametrize("case,name", _params(CASES))
def test_param_report_closed_form(case: Case, name: str, tiny: Any) -> None:
    base = tiny.build(name)
    spec = pk.get_spec(base)
    expected = {owner: f(base, spec) for owner, f in case.owners.items()}
    head = head_count(base, spec)
    total = sum(p.numel() for p in base.parameters())
    report = pk.param_report(pk.apply(base, case.config()))
    for owner, n in expected.items():
        assert report.owner(owner).params == n and report.owner(owner).trainable == n, owner
    assert report.owner("head").trainable == head
    assert report.owner("base").trainable == 0
    assert report.trainable == sum(expected.values()) + head
    if not any(o.startswith("qlora") for o in case.owners) and "prompt" not in case.owners \
            and "prefix" not in case.owners and not case.trains_base:
        # every parameter is either the base's or a method's (no copies): the total adds up
        assert report.total == total + sum(expected.values())


@pytest.mark.parametrize("case,name", _params(CASES))
def test_save_fresh_load_identical(case: Case, name: str, tiny: Any, tmp_path: Any) -> None:
    model = pk.apply(tiny.build(name), case.config())
    _perturb([p for p in model.parameters() if p.requires_grad])   # method parameters and head
    if case.eval_mode:
        model.eval()
    ref = tiny.output(model, name)
    pk.save_adapter(model, tmp_path / "ckpt")

    torch.manual_seed(1)   # another init for the fresh model's method parameters
    fresh = pk.load_adapter(tiny.build(name), tmp_path / "ckpt")   # applies the saved stack itself
    if case.eval_mode:
        fresh.eval()
    assert torch.equal(tiny.output(fresh, name), ref)

    torch.manual_seed(2)
    other = pk.apply(tiny.build(name), case.config())
    if case.eval_mode:
        other.eval()
    _perturb([p for p in other.parameters() if p.requires_grad])
    assert not torch.allclose(tiny.output(other, name), ref)
    other = pk.load_adapter(other, tmp_path / "ckpt")              # into an already-applied stack
    assert torch.equal(tiny.output(other, name), ref)


@pytest.mark.parametrize("case,name", _params(CASES))
def test_remove_restores_base(case: Case, name: str, tiny: Any) -> None:
    model = tiny.build(name)
    ref = tiny.output(model, name)
    modules = [(n, type(m), id(m)) for n, m in model.named_modules()]
    keys = list(model.state_dict())
    attrs = set(model.__dict__)
    applied = pk.apply(model, case.config())
    if case.eval_mode:
        applied.eval()
    if not case.trains_base:   # weights trained in place stay trained: only the untrained method is undone
        _perturb(_method_params(applied))
        assert not _method_params(applied) or not torch.equal(tiny.output(applied, name), ref)
    base = pk.remove(applied)
    assert base is model
    assert torch.equal(tiny.output(base, name), ref)
    assert [(n, type(m), id(m)) for n, m in base.named_modules()] == modules
    assert list(base.state_dict()) == keys
    assert set(base.__dict__) == attrs
    assert all(p.requires_grad for p in base.parameters())
    assert get_state(base) is None


# ---- bad input: one clear peftkit error --------------------------------------------------------------------


@pytest.mark.parametrize("config", [
    lambda: pk.LoRA(targets=["attn_query"]),
    lambda: pk.IA3(targets=["attn_k", "ffn_out"], feedforward=[]),
    lambda: pk.QLoRA(targets=["nope"]),
], ids=["lora", "ia3", "qlora"])
def test_unknown_target_role_lists_roles(config: Callable[[], Any], tiny: Any) -> None:
    model = tiny.build("tiny_bert")
    before = [type(m) for m in model.modules()]
    with pytest.raises(pk.UnsupportedError, match=r"neither a role .*attn_q.* its linear modules are: query"):
        pk.apply(model, config())
    assert [type(m) for m in model.modules()] == before   # nothing half-applied


@pytest.mark.parametrize("make", [
    lambda: pk.LoRA(rank=0), lambda: pk.DoRA(rank=-2), lambda: pk.QLoRA(rank=0),
    lambda: pk.LoRA(targets=[]), lambda: pk.Adapter(bottleneck=0), lambda: pk.Adapter(kind="serial"),
    lambda: pk.QLoRA(backend="gptq"), lambda: pk.PromptTuning(num_virtual_tokens=0),
    lambda: pk.IA3(feedforward=["mlp_in"]),
])
def test_bad_config_values(make: Callable[[], Any]) -> None:
    with pytest.raises(pk.ConfigError):
        make()


def test_qlora_needs_a_linear_target(tiny: Any) -> None:
    model = tiny.build("tiny_bert")
    with pytest.raises(pk.UnsupportedError, match="LayerNorm"):
        pk.apply(model, pk.QLoRA(targets=["attn_norm"]))
    assert not any(type(m).__name__ == "Linear4bit" for m in model.modules())


def test_lora_checkpoint_into_adapter_model(tiny: Any, tmp_path: Any) -> None:
    pk.save_adapter(pk.apply(tiny.build("tiny_bert"), pk.LoRA()), tmp_path / "lora")
    adapter_model = pk.apply(tiny.build("tiny_bert"), pk.Adapter())
    with pytest.raises(pk.CheckpointError, match=r"methods \['lora'\].*\['adapter'\]"):
        pk.load_adapter(adapter_model, tmp_path / "lora")


def test_two_peft_methods_refused(tiny: Any) -> None:
    model = pk.apply(tiny.build("tiny_bert"), pk.LoRA())
    with pytest.raises(pk.UnsupportedError, match="at most one HF-peft method"):
        pk.apply(model, pk.IA3())


def test_prompt_on_non_hf_backbone(tiny: Any) -> None:
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

    model = nn.Sequential(nn.ModuleList([Block()]))
    pk.attach_spec(model, BackboneSpec("toy", (pk.StackSpec("encoder", "0", {"mlp_out": "fc"}),)))
    with pytest.raises(pk.UnsupportedError, match="Hugging Face transformers model"):
        pk.apply(model, pk.PromptTuning())
    with pytest.raises(pk.UnsupportedError, match="needs role"):
        pk.apply(model, pk.Adapter(kind="houlsby"))


# ---- the shipped single-method configs apply to a BERT -----------------------------------------------------

_SHIPPED = ("full", "head_only", "houlsby", "pfeiffer", "parallel", "lora", "dora", "ia3", "prompt", "prefix",
            "qlora")


@pytest.mark.parametrize("stem", _SHIPPED)
def test_shipped_config_applies_to_tiny_bert(stem: str, tiny: Any) -> None:
    """configs/text/bbc_minilm__<stem>.yaml targets MiniLM (a BERT): its stack applies to a tiny BERT."""
    from pathlib import Path

    from peftkit.train.config import load_config

    path = Path(__file__).resolve().parents[2] / "configs" / "text" / f"bbc_minilm__{stem}.yaml"
    cfg = load_config(path)
    assert cfg.backbone.name == "minilm" and cfg.out_dir == f"runs/bbc_minilm__{stem}"
    model = pk.apply(tiny.build("tiny_bert"), cfg.method_configs())
    tiny.forward(model, "tiny_bert").float().pow(2).mean().backward()
    assert pk.param_report(model).trainable > 0
