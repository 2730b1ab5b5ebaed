"""peft-style targets: module names and ``"all-linear"`` resolved the way peft resolves them, roles mapped to
a fused qkv projection, and an unknown target that lists what the model has."""

from __future__ import annotations

from typing import Any

import pytest

import peftkit as pk
from peftkit.methods.hf_peft.resolve import target_paths


def _adapted(model: Any) -> list[str]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return sorted(n for n, m in model.named_modules() if isinstance(m, BaseTunerLayer))


def test_module_names_match_like_peft(tiny: Any) -> None:
    by_role = _adapted(pk.apply(tiny.build("tiny_llama"), pk.LoRA(targets=["attn_q", "attn_v"])))
    by_name = _adapted(pk.apply(tiny.build("tiny_llama"), pk.LoRA(targets=["q_proj", "v_proj"])))
    assert by_name == by_role == [f"model.layers.{i}.self_attn.{p}_proj" for i in (0, 1) for p in "qv"]
    # a dotted suffix, as peft allows: only the MLP's down projection
    assert _adapted(pk.apply(tiny.build("tiny_llama"), pk.LoRA(targets=["mlp.down_proj"]))) == [
        "model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]


def test_all_linear_is_peft_expansion_without_the_head(tiny: Any) -> None:
    from peft import LoraConfig, get_peft_model

    model = pk.apply(tiny.build("tiny_bert"), pk.LoRA(targets="all-linear"))
    ours = _adapted(model)
    per_block = ["attention.output.dense", "attention.self.key", "attention.self.query",
                 "attention.self.value", "intermediate.dense", "output.dense"]
    assert ours == sorted(f"bert.encoder.layer.{i}.{p}" for i in (0, 1) for p in per_block)
    # peft itself also takes the pooler (peftkit trains it whole as part of the classification head)
    theirs = _adapted(get_peft_model(tiny.build("tiny_bert"), LoraConfig(target_modules="all-linear",
                                                                        task_type="SEQ_CLS")).base_model.model)
    assert set(theirs) - set(ours) == {"bert.pooler.dense"}


def test_all_linear_skips_other_methods_layers(tiny: Any) -> None:
    model = pk.apply(tiny.build("tiny_llama"), [pk.Adapter(kind="pfeiffer"), pk.LoRA(targets="all-linear")])
    assert not any(".adapter." in n for n in _adapted(model))
    assert len(_adapted(model)) == 2 * 7                      # q k v o gate up down in each of 2 blocks


def test_gpt2_conv1d_all_linear_and_roles(tiny: Any) -> None:
    model = tiny.build("tiny_gpt2")
    spec = pk.get_spec(model)
    assert target_paths(model, spec, ["attn_q", "attn_v"], "lora") == [f"transformer.h.{i}.attn.c_attn"
                                                                        for i in (0, 1)]
    assert len(target_paths(model, spec, ["all-linear"], "lora")) == 2 * 4   # c_attn, c_proj, c_fc, c_proj


def test_unknown_target_lists_roles_and_linear_modules(tiny: Any) -> None:
    model = tiny.build("tiny_llama")
    with pytest.raises(pk.UnsupportedError) as e:
        pk.apply(model, pk.LoRA(targets=["q_proj", "query"]))
    msg = str(e.value)
    assert "target 'query' is neither a role of backbone family 'llama'" in msg
    assert "attn_q" in msg and "its linear modules are: q_proj, k_proj, v_proj, o_proj, gate_proj" in msg
    assert "score" not in msg.split("linear modules are:")[1]       # the head is not a target
    assert _adapted(model) == []                                    # nothing half-applied


@pytest.mark.parametrize("targets", [[], [""], "", [3]])
def test_bad_target_lists_are_config_errors(targets: Any) -> None:
    with pytest.raises(pk.ConfigError, match="all-linear"):
        pk.LoRA(targets=targets)
