"""BackboneSpec: roles resolve to real module paths; unknown roles and stacks say what exists."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from torch import nn

import peftkit as pk
from peftkit.core.spec import BackboneSpec, StackSpec, get_spec


@pytest.mark.parametrize("name", ["tiny_bert", "tiny_roberta", "tiny_llama", "tiny_t5"])
def test_every_role_resolves_to_a_module(name: str) -> None:
    model = pk.load_backbone(name)
    spec = get_spec(model)
    for stack in spec.stacks:
        for role in stack.roles:
            paths = spec.role_paths(model, role, stack.name)
            assert len(paths) == len(model.get_submodule(stack.blocks))
            for p in paths:
                model.get_submodule(p)   # raises if the path is wrong
    for path in spec.head:
        model.get_submodule(path)
    for path in spec.model_roles.values():
        model.get_submodule(path)


def test_t5_has_two_stacks_and_role_paths_cover_both() -> None:
    model = pk.load_backbone("tiny_t5")
    spec = get_spec(model)
    assert [s.name for s in spec.stacks] == ["encoder", "decoder"]
    paths = spec.role_paths(model, "mlp_out")
    assert paths == [f"encoder.block.{i}.layer.1.DenseReluDense.wo" for i in range(2)] + \
        [f"decoder.block.{i}.layer.2.DenseReluDense.wo" for i in range(2)]   # T5 decoder FFN is layer 2
    assert spec.role_paths(model, "mlp_out", "decoder") == paths[2:]
    assert spec.block_paths(model, "encoder") == ["encoder.block.0", "encoder.block.1"]


def test_unknown_role_lists_the_roles() -> None:
    model = pk.load_backbone("tiny_bert")
    with pytest.raises(pk.UnsupportedError, match=r"no role 'attn_qkv'.*'attn_q'.*'mlp_out'"):
        get_spec(model).role_paths(model, "attn_qkv")


def test_unknown_stack_and_model_role() -> None:
    spec = get_spec(pk.load_backbone("tiny_llama"))
    with pytest.raises(pk.UnsupportedError, match=r"no stack 'encoder'.*\['decoder'\]"):
        spec.stack("encoder")
    with pytest.raises(pk.UnsupportedError, match=r"no model role 'pooler'.*embeddings"):
        spec.model_role("pooler")
    assert spec.has_role("mlp_gate") and not spec.has_role("attn_qkv")


def test_plain_module_without_spec() -> None:
    with pytest.raises(pk.UnsupportedError, match="attach_spec"):
        get_spec(nn.Linear(2, 2))


def test_attached_spec_wins() -> None:
    model = nn.Sequential(nn.ModuleList([nn.Linear(2, 2)]))
    spec = BackboneSpec("toy", (StackSpec("encoder", "0", {"mlp_out": ""}),))
    assert get_spec(pk.attach_spec(model, spec)) is spec


def test_unsupported_hf_family_lists_supported() -> None:
    model = nn.Linear(2, 2)
    model.config = SimpleNamespace(model_type="made_up_family")   # what a transformers model carries
    with pytest.raises(pk.UnsupportedError, match=r"'made_up_family'.*bert.*llama.*t5"):
        get_spec(model)


def test_head_roles(tiny: Any) -> None:
    assert get_spec(tiny.build("tiny_bert")).head == ("bert.pooler", "classifier")
    assert get_spec(tiny.build("tiny_llama")).head == ("score",)
    assert get_spec(tiny.build("tiny_t5")).head == ()
