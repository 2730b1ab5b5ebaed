"""pk.apply / pk.remove bookkeeping."""

from __future__ import annotations

from typing import Any

import pytest

import peftkit as pk
from peftkit.core.state import get_state


def test_same_method_twice_is_refused(tiny: Any) -> None:
    model = pk.apply(tiny.build("tiny_bert"), pk.Adapter())
    with pytest.raises(pk.ConfigError, match="'adapter' is already applied"):
        pk.apply(model, pk.Adapter(kind="houlsby"))


def test_train_head_must_agree(tiny: Any) -> None:
    model = pk.apply(tiny.build("tiny_bert"), pk.Adapter(), train_head=False)
    with pytest.raises(pk.ConfigError, match="train_head"):
        pk.apply(model, pk.LoRA())


def test_apply_in_two_calls_equals_one_stack(tiny: Any) -> None:
    a = pk.apply(pk.apply(tiny.build("tiny_bert"), pk.Adapter()), pk.LoRA())
    b = pk.apply(tiny.build("tiny_bert"), [pk.Adapter(), pk.LoRA()])
    assert get_state(a).method_names() == get_state(b).method_names() == ["adapter", "lora"]
    assert pk.param_report(a).as_dict() == pk.param_report(b).as_dict()


def test_remove_without_methods_is_a_no_op(tiny: Any) -> None:
    model = tiny.build("tiny_bert")
    assert pk.remove(model) is model


def test_failed_apply_leaves_the_model_usable(tiny: Any) -> None:
    model = tiny.build("tiny_bert")
    ref = tiny.output(model, "tiny_bert")
    with pytest.raises(pk.UnsupportedError):
        pk.apply(model, pk.LoRA(targets=["attn_q", "attn_norm"]))   # second role is a LayerNorm
    assert torch_equal(tiny.output(model, "tiny_bert"), ref)
    assert all(type(m).__module__.startswith(("torch", "transformers")) for m in model.modules())


def torch_equal(a: Any, b: Any) -> bool:
    import torch

    return torch.equal(a, b)


def test_failed_stack_undoes_the_methods_it_applied(tiny: Any, tmp_path: Any) -> None:
    model = tiny.build("tiny_bert")
    ref = tiny.output(model, "tiny_bert")
    with pytest.raises(pk.UnsupportedError):
        pk.apply(model, [pk.Adapter(kind="houlsby"), pk.LoRA(targets=["attn_norm"])])
    assert get_state(model) is None
    assert torch_equal(tiny.output(model, "tiny_bert"), ref)
    assert all(p.requires_grad for p in model.parameters())
    # the model is as good as new: a checkpoint loads into it
    pk.save_adapter(pk.apply(tiny.build("tiny_bert"), pk.LoRA()), tmp_path / "c")
    assert get_state(pk.load_adapter(model, tmp_path / "c")).method_names() == ["lora"]


def test_failure_in_a_later_call_keeps_the_earlier_methods(tiny: Any) -> None:
    model = pk.apply(tiny.build("tiny_bert"), pk.Adapter())
    with pytest.raises(pk.UnsupportedError):
        pk.apply(model, [pk.LoRA(targets=["attn_norm"])])
    assert get_state(model).method_names() == ["adapter"]
