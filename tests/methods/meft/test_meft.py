"""MEFT (reversible): the coupling against its formulas, conversion, what trains, undo, bad input."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import pytest
import torch
from torch import nn

import peftkit as pk
from peftkit.core.state import get_state
from peftkit.methods.meft.apply import find_stack
from peftkit.methods.meft.checks import (
    ReconstructionError,
    reconstruction_errors,
    stack_reconstruction_errors,
)
from peftkit.methods.meft.coupling import Coupling
from peftkit.methods.meft.stack import ReversibleStack

VARIANTS = ("meft1", "meft2", "meft3")


class _Lin(nn.Module):
    """F or G for the formula test: ``x -> tanh(W x)``, ignoring the context."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.lin = nn.Linear(d, d, dtype=torch.float64)

    def forward(self, x: torch.Tensor, ctx: dict[str, Any]) -> torch.Tensor:
        return torch.tanh(self.lin(x))


@pytest.mark.parametrize("switch", [False, True])
def test_coupling_matches_formula_and_inverts(switch: bool) -> None:
    f, g = _Lin(6), _Lin(6)
    c = Coupling(f, g, lam=0.1, beta=0.3, switch=switch)
    x1, x2 = torch.randn(2, 3, 6, dtype=torch.float64), torch.randn(2, 3, 6, dtype=torch.float64)
    o1, o2 = c(x1, x2, {})
    y1 = 0.1 * x1 + torch.tanh(f.lin(x2))
    y2 = 0.3 * x2 + torch.tanh(g.lin(y1))
    exp = (y2, y1) if switch else (y1, y2)
    assert torch.allclose(o1, exp[0], atol=0, rtol=1e-15) and torch.allclose(o2, exp[1], atol=0, rtol=1e-15)
    r1, r2 = c.inverse(o1, o2, {})
    assert (r1 - x1).abs().max() < 1e-13 and (r2 - x2).abs().max() < 1e-13


@pytest.mark.parametrize("variant,lam,beta,switch", [
    ("meft1", 0.1, 1.0, True), ("meft2", 1.0, 0.1, True), ("meft3", 0.1, 0.1, False)])
def test_variant_defaults(variant: str, lam: float, beta: float, switch: bool, tiny: Any) -> None:
    assert pk.MEFT(variant=variant).resolved() == (lam, beta, switch)
    assert pk.MEFT(variant=variant, lam=0.5).resolved() == (0.5, beta, switch)
    model = pk.apply(tiny.build("tiny_bert"), pk.MEFT(variant=variant))
    c = find_stack(model).couplings[0]
    kinds = {"meft1": ("layer", "adapter"), "meft2": ("adapter", "layer"), "meft3": ("attn", "ffn")}[variant]
    assert (c.f.kind, c.g.kind, c.lam, c.beta, c.switch) == (*kinds, lam, beta, switch)


@pytest.mark.parametrize("name", ["tiny_bert", "tiny_llama"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_streams_carry_the_plm_hidden_states(name: str, variant: str, tiny: Any) -> None:
    """Zero adapters and lam/beta -> 0 where the variant scales by 0.1: the streams are the PLM's states.

    meft1: (x1, x2) after layer n = (h_{n-1}, h_n); meft2: (h_n, h_{n-1}); meft3: x2 = h_n. So the stack
    output (the mean) is (h_{L-1} + h_L) / 2 for meft1/2, checked against the base model's hidden states.
    """
    base = pk.load_backbone(name, task="encoder", seed=0).double()
    batch = tiny.batch(name)
    with torch.no_grad():
        hs = base(**batch, output_hidden_states=True).hidden_states
    small = 1e-12
    lam, beta = {"meft1": (small, 1.0), "meft2": (1.0, small), "meft3": (small, small)}[variant]
    model = pk.apply(base, pk.MEFT(variant=variant, lam=lam, beta=beta, adapter_init_std=0.0))
    stack, seen = find_stack(model), {}
    for i, c in enumerate(stack.couplings):
        c.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(i, out))
    with torch.no_grad():
        last = model(**batch).last_hidden_state
    n = len(stack)
    if name == "tiny_llama":  # hs[-1] is after the final RMSNorm; hs[n - 1] are block outputs
        h = [*hs[:-1], None]
    else:
        h = list(hs)
    for i in range(n - 1 if name == "tiny_llama" else n):
        y = seen[i]
        if variant == "meft1":
            assert torch.allclose(y[0], h[i], atol=1e-9) and torch.allclose(y[1], h[i + 1], atol=1e-9)
        elif variant == "meft2":
            assert torch.allclose(y[0], h[i + 1], atol=1e-9) and torch.allclose(y[1], h[i], atol=1e-9)
        else:
            assert torch.allclose(y[1], h[i + 1], atol=1e-9)
    if name == "tiny_bert" and variant != "meft3":
        assert torch.allclose(last, (hs[-2] + hs[-1]) / 2, atol=1e-9)


@pytest.mark.parametrize("variant", VARIANTS)
def test_closed_form_count_and_what_trains(variant: str, tiny: Any) -> None:
    base = tiny.build("tiny_bert")
    emb_ln = base.bert.embeddings.LayerNorm
    d, r, n = 32, 8, 2
    model = pk.apply(base, pk.MEFT(variant=variant, adapter_dim=r))
    report = pk.param_report(model)
    assert report.owner("meft").trainable == n * 2 * (2 * d * r + r + d)
    assert report.owner("base").trainable == 0
    tiny.forward(model, "tiny_bert").pow(2).sum().backward()
    stack = find_stack(model)
    adapters = {id(p) for p in stack.couplings.parameters()}
    head = {id(p) for h in ("bert.pooler", "classifier") for p in model.get_submodule(h).parameters()}
    assert {id(p) for p in model.parameters() if p.grad is not None} == adapters | head
    assert all(p.grad.abs().sum() > 0 for p in stack.couplings.parameters())
    assert not any(p.requires_grad for p in emb_ln.parameters())  # unlike the reference code


def test_block_names_kept_and_remove_restores(tiny: Any) -> None:
    model = tiny.build("tiny_llama")
    ref = tiny.forward(model, "tiny_llama")
    keys = list(model.state_dict())
    layers = model.model.layers
    applied = pk.apply(model, pk.MEFT())
    stack = find_stack(applied)
    assert isinstance(applied.model.layers, ReversibleStack)
    assert set(keys) <= set(applied.state_dict())        # block parameters keep their names
    assert len(stack) == 2 and stack[1] is layers[1] and stack[-1] is layers[1]
    assert len(list(iter(stack))) == 1                  # the backbone's loop sees one runner
    with pytest.raises(pk.UnsupportedError, match="slice"):
        stack[:1]
    assert pk.remove(applied) is model and model.model.layers is layers
    assert torch.equal(tiny.forward(model, "tiny_llama"), ref)
    assert list(model.state_dict()) == keys


def test_eval_without_grad_uses_plain_path_and_matches(tiny: Any) -> None:
    model = pk.apply(tiny.build("tiny_bert"), pk.MEFT(adapter_init_std=0.2))
    with_grad = tiny.forward(model, "tiny_bert")
    assert with_grad.grad_fn is not None
    with torch.no_grad():
        assert torch.equal(tiny.forward(model, "tiny_bert"), with_grad.detach())


def test_save_fresh_load_identical(tiny: Any, tmp_path: Any) -> None:
    config = pk.MEFT(variant="meft3", num_rev_layers=1, adapter_init_std=0.1)
    model = pk.apply(tiny.build("tiny_bert"), config)
    ref = tiny.forward(model, "tiny_bert")
    pk.save_adapter(model, tmp_path / "ck")
    torch.manual_seed(3)
    fresh = pk.load_adapter(tiny.build("tiny_bert"), tmp_path / "ck")
    assert find_stack(fresh).num_rev == 1
    assert torch.equal(tiny.forward(fresh, "tiny_bert"), ref)


def test_reconstruction_check_and_drift_warning(tiny: Any) -> None:
    model = pk.load_backbone("tiny_bert", num_labels=3).double()
    model = pk.apply(model, pk.MEFT(variant="meft1", adapter_init_std=0.1))
    errs = stack_reconstruction_errors(model, **tiny.batch("tiny_bert"))
    assert len(errs) == 2 and max(errs) < 1e-10
    stack = find_stack(model)
    x = torch.randn(2, 8, 32, dtype=torch.float64)
    ctx = stack.context((), {"attention_mask": None}, recompute=True)
    good = reconstruction_errors(list(stack.couplings), x, ctx)
    assert max(good) < 1e-10
    stack.anchors, stack.tolerance = frozenset(), 1e-30  # no anchors; any rounding at all exceeds it
    stack.anchor_every = 0  # fixed (no recalibration)
    model.train()
    with pytest.warns(RuntimeWarning, match="reversible layer 0 was reconstructed with relative error"):
        tiny.forward(model, "tiny_bert").sum().backward()
    assert len(stack.last_reconstruction_error) == 2 and 0 < max(stack.last_reconstruction_error) < 1e-10
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiny.forward(model, "tiny_bert").sum().backward()  # warned once per stack, not every step
    stack.on_error = "raise"
    with pytest.raises(ReconstructionError, match="tolerance 1e-30"):
        tiny.forward(model, "tiny_bert").sum().backward()


def test_auto_anchors_are_chosen_again_when_the_check_fails(tiny: Any) -> None:
    model = pk.apply(pk.load_backbone("tiny_bert", num_labels=3).double(), pk.MEFT(adapter_init_std=0.1))
    model.train()
    stack = find_stack(model)
    tiny.forward(model, "tiny_bert").sum().backward()
    assert stack.anchors == frozenset()  # fp64: no anchor needed
    stack.tolerance = 1e-30  # now every reconstructed input is "over tolerance"
    with pytest.warns(RuntimeWarning, match="anchors are chosen again at the next step"):
        tiny.forward(model, "tiny_bert").sum().backward()
    assert stack.anchors is None
    tiny.forward(model, "tiny_bert").sum().backward()  # recalibrated: every layer input kept exactly
    assert stack.anchors == frozenset({0, 1})


def test_auto_anchors_calibrated_once(tiny: Any) -> None:
    model = pk.apply(pk.load_backbone("tiny_bert", num_labels=3), pk.MEFT(variant="meft3"))
    stack = find_stack(model)
    assert stack.anchors is None and stack.anchor_every == "auto"
    with torch.no_grad():
        tiny.forward(model, "tiny_bert")  # no backward: nothing to calibrate
    assert stack.anchors is None
    stack.calibration_margin = 1e30  # threshold ~0: every layer whose input is not exact needs an anchor
    tiny.forward(model, "tiny_bert").sum().backward()
    assert stack.anchors == frozenset({0, 1}) and len(stack.calibration_errors) == 2
    stack.calibration_margin = 1e-30  # a later change does not recalibrate
    tiny.forward(model, "tiny_bert").sum().backward()
    assert stack.anchors == frozenset({0, 1})
    assert find_stack(pk.apply(tiny.build("tiny_bert"), pk.MEFT(anchor_every=1))).anchors == {0, 1}
    assert find_stack(pk.apply(tiny.build("tiny_bert"), pk.MEFT(anchor_every=0))).anchors == frozenset()


def test_streams_fp32_by_default_and_16_bit_streams_refused(tiny: Any) -> None:
    model = pk.apply(tiny.build("tiny_bert"), pk.MEFT())
    stack = find_stack(model)
    assert stack.stream_dtype_for(torch.bfloat16) == torch.float32
    assert stack.stream_dtype_for(torch.float32) == torch.float32
    assert stack.stream_dtype_for(torch.float64) == torch.float64
    stack.stream_dtype = "model"
    with pytest.raises(pk.ConfigError, match="16-bit streams, which are refused"):
        stack.stream_dtype_for(torch.bfloat16)
    with pytest.raises(pk.ConfigError, match="grows ~10x per layer"):
        pk.MEFT(stream_dtype="bfloat16")


def test_rng_state_after_step_is_as_without_meft_backward(tiny: Any) -> None:
    """Backward replays dropout inside fork_rng: the global generator ends where plain autograd leaves it."""
    states = {}
    for rev in (True, False):
        model = pk.apply(tiny.build("tiny_bert"), pk.MEFT(use_reversible_backward=rev, adapter_dropout=0.1))
        model.train()
        torch.manual_seed(7)
        tiny.forward(model, "tiny_bert").sum().backward()
        states[rev] = torch.get_rng_state()
    assert torch.equal(states[True], states[False])


# ---- bad input ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kw", [
    {"variant": "meft4"}, {"lam": 0.0}, {"beta": -1.0}, {"adapter_dim": 0}, {"num_rev_layers": -1},
    {"stream_dtype": "float16x"}, {"anchor_every": -1}, {"adapter_dropout": 1.0}, {"check_every": -2},
    {"anchor_every": "sometimes"}, {"anchor_every": 1.5}, {"tolerance": 0.0}, {"tolerance": 0.6},
    {"calibration_margin": 0.5}, {"on_error": "ignore"}, {"stream_dtype": "float16"},
])
def test_bad_config(kw: dict[str, Any]) -> None:
    with pytest.raises(pk.ConfigError):
        pk.MEFT(**kw)


def test_too_many_rev_layers(tiny: Any) -> None:
    with pytest.raises(pk.ConfigError, match="only 2 blocks"):
        pk.apply(tiny.build("tiny_bert"), pk.MEFT(num_rev_layers=3))


def test_unsupported_specs(tiny: Any) -> None:
    with pytest.raises(pk.UnsupportedError, match="single-stack models; 't5' has 2 stacks"):
        pk.apply(tiny.build("tiny_t5"), pk.MEFT())
    model = tiny.build("tiny_bert")
    spec = pk.get_spec(model)
    attn_only = dataclasses.replace(spec.stacks[0], roles={"attn": spec.stacks[0].roles["attn"]})
    for bad, match in [(dataclasses.replace(spec, layout="sandwich_ln"), "layout 'sandwich_ln'"),
                       (dataclasses.replace(spec, stacks=(attn_only,)), "needs the roles")]:
        with pytest.raises(pk.UnsupportedError, match=match):
            pk.apply(model, pk.MEFT(), spec=bad)


def test_unknown_adapter_act(tiny: Any) -> None:
    with pytest.raises(pk.ConfigError, match="adapter_act"):
        pk.apply(tiny.build("tiny_bert"), pk.MEFT(adapter_act="mish2"))


def test_batchnorm_in_a_block_is_refused(tiny: Any) -> None:
    model = tiny.build("tiny_bert")
    model.bert.encoder.layer[1].output.dropout = nn.BatchNorm1d(8)
    with pytest.raises(pk.UnsupportedError, match=r"encoder\.layer\.1\.output\.dropout.*BatchNorm1d"):
        pk.apply(model, pk.MEFT())
    assert isinstance(model.bert.encoder.layer, nn.ModuleList)  # nothing half-applied


def test_block_replaced_after_meft_is_refused(tiny: Any) -> None:
    model = pk.apply(tiny.build("tiny_bert"), pk.MEFT())
    stack = find_stack(model)
    block = stack[1]
    stack._modules["1"] = nn.Sequential(block)  # what a block-wrapping method would do
    with pytest.raises(pk.UnsupportedError, match="block 1 of the MEFT stack was replaced"):
        tiny.forward(model, "tiny_bert")
    stack._modules["1"] = block
    block.register_forward_hook(lambda m, a, out: out)
    tiny.forward(model, "tiny_bert")   # an observing hook (profilers, memory accounting) is fine
    assert get_state(model).wraps_blocks() == ["meft"]  # what later block-wrapping methods read


def test_point_peft_then_meft_is_refused() -> None:
    model = pk.load_backbone("tiny_point", num_labels=3)
    model = pk.apply(model, pk.PointPEFT(use_bank=False, prompt_layers=1))
    with pytest.raises(pk.UnsupportedError, match="point_peft"):
        pk.apply(model, pk.MEFT())


def test_cross_attention_is_refused(tiny: Any) -> None:
    model = pk.apply(tiny.build("tiny_bert"), pk.MEFT())
    stack = find_stack(model)
    with pytest.raises(pk.UnsupportedError, match="cross-attention"):
        stack.run(torch.zeros(1, 2, 32), None, torch.zeros(1, 2, 32))
