"""Tiny random transformers models built from configs, for tests (no downloads, a few kB each).

Each is registered as a backbone; ``seed`` fixes the random weights so two builds are identical.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from peftkit.backbones.hf.loading import auto_class, finish
from peftkit.core.errors import ConfigError
from peftkit.core.registry import register_backbone


def _config(cls: Any, name: str, defaults: dict[str, Any], kw: dict[str, Any]) -> Any:
    """``cls(**defaults, **kw)``, ``kw`` overriding the defaults; a key the config class does not know is a
    ConfigError (a transformers config would silently store it)."""
    import inspect

    valid = set(cls().to_dict()) | set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}
    unknown = sorted(set(kw) - valid)
    if unknown:
        shown = ", ".join(sorted(defaults))
        raise ConfigError(
            f"unknown key(s) {unknown} for backbone '{name}': not {cls.__name__} fields "
            f"(valid: task, num_labels, seed, and {cls.__name__} fields such as {shown})"
        )
    return cls(**{**defaults, **kw})


def _tiny(config: Any, task: str, num_labels: int | None, backbone_id: str, seed: int) -> nn.Module:
    import transformers

    cls = auto_class(task)
    if task == "classification":
        config.num_labels = num_labels or 2
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls.from_config(config)
    model.eval()
    transformers.logging.set_verbosity_error()
    return finish(model, backbone_id)


@register_backbone("tiny_bert", "random 2-layer BERT (d=32) for tests")
def tiny_bert(
    task: str = "classification", num_labels: int | None = None, seed: int = 0, **kw: Any
) -> nn.Module:
    from transformers import BertConfig

    # vocab_size=30522 fits MiniLM's tokenizer (text data in tests)
    cfg = _config(BertConfig, "tiny_bert", {"vocab_size": 1000, "hidden_size": 32, "num_hidden_layers": 2,
                  "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 128}, kw)
    return _tiny(cfg, task, num_labels, "tiny_bert", seed)


@register_backbone("tiny_roberta", "random 2-layer RoBERTa (d=32) for tests")
def tiny_roberta(
    task: str = "classification", num_labels: int | None = None, seed: int = 0, **kw: Any
) -> nn.Module:
    from transformers import RobertaConfig

    defaults = {"vocab_size": 1000, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                "intermediate_size": 64, "max_position_embeddings": 130, "pad_token_id": 1}
    cfg = _config(RobertaConfig, "tiny_roberta", defaults, kw)
    return _tiny(cfg, task, num_labels, "tiny_roberta", seed)


@register_backbone("tiny_llama", "random 2-layer Llama (d=32, SwiGLU, RoPE) for tests")
def tiny_llama(
    task: str = "classification", num_labels: int | None = None, seed: int = 0, **kw: Any
) -> nn.Module:
    from transformers import LlamaConfig

    cfg = _config(LlamaConfig, "tiny_llama", _llama_layout_kwargs({}), kw)
    return _tiny(cfg, task, num_labels, "tiny_llama", seed)


@register_backbone("tiny_t5", "random 2+2-layer T5 v1.1 (gated-GELU, d=32) for tests")
def tiny_t5(task: str = "seq2seq", num_labels: int | None = None, seed: int = 0, **kw: Any) -> nn.Module:
    import transformers
    from transformers import T5Config

    cfg = _config(T5Config, "tiny_t5", {"vocab_size": 1000, "d_model": 32, "d_kv": 8, "d_ff": 64,
                  "num_layers": 2, "num_decoder_layers": 2, "num_heads": 4, "feed_forward_proj": "gated-gelu",
                  "decoder_start_token_id": 0}, kw)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.T5ForConditionalGeneration(cfg)
    model.eval()
    return finish(model, "tiny_t5")


def _llama_layout_kwargs(kw: dict[str, Any]) -> dict[str, Any]:
    return {"vocab_size": 1000, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "intermediate_size": 64, "max_position_embeddings": 128,
            "pad_token_id": 0, **kw}


@register_backbone("tiny_qwen2", "random 2-layer Qwen2 (d=32, Llama layout, q/k/v biases) for tests")
def tiny_qwen2(
    task: str = "classification", num_labels: int | None = None, seed: int = 0, **kw: Any
) -> nn.Module:
    from transformers import Qwen2Config

    cfg = _config(Qwen2Config, "tiny_qwen2", _llama_layout_kwargs({}), kw)
    return _tiny(cfg, task, num_labels, "tiny_qwen2", seed)


@register_backbone("tiny_mistral", "random 2-layer Mistral (d=32, Llama layout, sliding window) for tests")
def tiny_mistral(
    task: str = "classification", num_labels: int | None = None, seed: int = 0, **kw: Any
) -> nn.Module:
    from transformers import MistralConfig

    cfg = _config(MistralConfig, "tiny_mistral", _llama_layout_kwargs({}), kw)
    return _tiny(cfg, task, num_labels, "tiny_mistral", seed)


@register_backbone("tiny_gpt2", "random 2-layer GPT-2 (d=32, fused qkv Conv1D) for tests")
def tiny_gpt2(
    task: str = "classification", num_labels: int | None = None, seed: int = 0, **kw: Any
) -> nn.Module:
    from transformers import GPT2Config

    cfg = _config(GPT2Config, "tiny_gpt2", {"vocab_size": 1000, "n_embd": 32, "n_layer": 2, "n_head": 4,
                  "n_positions": 128, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}, kw)
    return _tiny(cfg, task, num_labels, "tiny_gpt2", seed)
