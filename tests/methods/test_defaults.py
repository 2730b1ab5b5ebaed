"""Every method with its default arguments on every tiny backbone of a family it supports.

Defaults come from the backbone's spec, not from one family's module names: ``pk.LoRA()`` (attn_q, attn_v)
adapts the fused qkv projection of the point transformer and of GPT-2. Where a method does not support a
family, applying it fails with one clear peftkit error and leaves the model as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

import peftkit as pk
from peftkit.core.state import get_state

HF_CLASSIFIERS = ("tiny_bert", "tiny_roberta", "tiny_llama", "tiny_qwen2", "tiny_mistral", "tiny_gpt2")
ALL = (*HF_CLASSIFIERS, "tiny_t5", "tiny_point")

# method -> (default config, the tiny backbones it supports)
DEFAULTS: dict[str, tuple[Callable[[], Any], tuple[str, ...]]] = {
    "lora": (lambda: pk.LoRA(), ALL),
    "dora": (lambda: pk.DoRA(), ALL),
    "ia3": (lambda: pk.IA3(), ALL),
    "qlora": (lambda: pk.QLoRA(), tuple(b for b in ALL if b != "tiny_gpt2")),   # quantises nn.Linear only
    "prompt": (lambda: pk.PromptTuning(), (*HF_CLASSIFIERS, "tiny_t5")),         # peft's prompt learning
    "prefix": (lambda: pk.PrefixTuning(), (*HF_CLASSIFIERS, "tiny_t5")),
    "adapter": (lambda: pk.Adapter(), ALL),
    "deft": (lambda: pk.DEFT(), ALL),
    "meft": (lambda: pk.MEFT(), ("tiny_bert", "tiny_roberta", "tiny_llama", "tiny_qwen2", "tiny_mistral",
                                 "tiny_point")),                                  # not GPT-2's fused qkv
    "full": (lambda: pk.FullFineTune(), ALL),
    "head_only": (lambda: pk.HeadOnly(), (*HF_CLASSIFIERS, "tiny_point")),       # T5 here has no head
}
# Point-PEFT's defaults need a P2-Bank built from the task's data (bank_path) and 6+ blocks (prompt_layers=6,
# the paper's first 6 of 12): tests/methods/point_peft covers it on tiny_point with those set.


def _supported() -> list[Any]:
    return [pytest.param(m, b, id=f"{m}-{b}") for m, (_, bs) in DEFAULTS.items() for b in bs]


def _unsupported() -> list[Any]:
    return [pytest.param(m, b, id=f"{m}-{b}") for m, (_, bs) in DEFAULTS.items() for b in ALL if b not in bs]


@pytest.mark.parametrize("method, name", _supported())
def test_default_arguments_work(method: str, name: str, tiny: Any) -> None:
    model = pk.apply(tiny.build(name), DEFAULTS[method][0]())
    state = get_state(model)
    assert state.method_names() == [method]
    out = tiny.forward(model, name)
    assert torch.isfinite(out).all()
    trainable = [p for p in model.parameters() if p.requires_grad]
    loss = out.float().pow(2).mean() + pk.aux_loss(model)
    if method == "deft":   # the density term is the method: positive, with a gradient path to the input side
        assert pk.aux_loss(model).item() > 0
    if not trainable:      # DEFT alone on a headless T5 trains nothing
        assert method == "deft" and name == "tiny_t5"
        return
    loss.backward()
    assert all(p.grad is not None for p in trainable)
    assert pk.param_report(model).owner("base").trainable == 0


@pytest.mark.parametrize("method, name", _unsupported())
def test_unsupported_family_is_one_clear_error(method: str, name: str, tiny: Any) -> None:
    model = tiny.build(name)
    before = [(n, type(m)) for n, m in model.named_modules()]
    with pytest.raises((pk.UnsupportedError, pk.ConfigError)) as e:
        pk.apply(model, DEFAULTS[method][0]())
    assert "\n" not in str(e.value) and len(str(e.value)) < 400
    assert [(n, type(m)) for n, m in model.named_modules()] == before
    assert get_state(model) is None


def test_lora_default_adapts_the_fused_qkv(tiny: Any) -> None:
    for name, fused in (("tiny_point", "attn.qkv"), ("tiny_gpt2", "attn.c_attn")):
        model = pk.apply(tiny.build(name), pk.LoRA())
        adapted = {n.split(".", 2)[-1] for n, m in model.named_modules() if hasattr(m, "lora_A")}
        assert {a.split(".", 1)[-1] if a.startswith(("0.", "1.")) else a for a in adapted} == {fused}, adapted
