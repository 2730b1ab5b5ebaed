"""BackboneSpecs of Hugging Face transformers families: role name -> module path inside one block.

Encoders with the BERT layout (BERT, RoBERTa, XLM-RoBERTa), MPNet, decoders with the Llama layout
(Llama, Qwen2, Mistral), GPT-2 (fused qkv Conv1D) and T5 (encoder and decoder stacks kept apart). A model's
spec is chosen by its ``config.model_type`` (the ``FAMILIES`` table; ``register_hf_family`` adds one), and
:func:`resolve_hf_spec` is the resolver ``pk.get_spec`` falls back to.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from torch import nn

from peftkit.core.errors import ConfigError, UnsupportedError
from peftkit.core.spec import BackboneSpec, StackSpec, register_spec_resolver

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


_GPT2_ROLES = {
    "attn": "attn",
    "attn_qkv": "attn.c_attn",        # one Conv1D computes q, k and v (weight (d, 3d)); attn_q/k/v map here
    "attn_out": "attn.c_proj",
    "attn_norm": "ln_1",
    "mlp": "mlp",
    "mlp_in": "mlp.c_fc",
    "mlp_act": "mlp.act",
    "mlp_out": "mlp.c_proj",
    "mlp_norm": "ln_2",
}

SpecBuilder = Callable[[nn.Module, str], BackboneSpec]   # (model, path prefix of the bare model) -> spec


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


def _encoder(roles: Mapping[str, str], returns_tuple: bool = False) -> SpecBuilder:
    """BERT-layout encoders: post-LN blocks under ``encoder.layer`` (MPNet's return a tuple)."""

    def build(model: nn.Module, p: str) -> BackboneSpec:
        # BERT's pooler belongs to the classification head here: like RoBERTa's head it is a dense + tanh.
        return BackboneSpec(
            family=model.config.model_type,
            stacks=(StackSpec("encoder", f"{p}encoder.layer", roles, returns_tuple=returns_tuple),),
            head=_head_paths(model, (f"{p}pooler", "classifier")) if p else (),
            model_roles={"embeddings": f"{p}embeddings"},
            layout="post_ln",
        )

    return build


def _llama_layout(model: nn.Module, p: str) -> BackboneSpec:
    """Llama, Qwen2, Mistral: pre-LN decoder blocks under ``layers``, RoPE, a ``score`` head."""
    return BackboneSpec(
        family=model.config.model_type,
        stacks=(StackSpec("decoder", f"{p}layers", _LLAMA_ROLES),),
        head=_head_paths(model, ("score",)),
        model_roles={"embeddings": f"{p}embed_tokens", "final_norm": f"{p}norm", "rotary": f"{p}rotary_emb"},
        layout="pre_ln",
    )


def _gpt2(model: nn.Module, p: str) -> BackboneSpec:
    """GPT-2: pre-LN blocks under ``h`` with a fused qkv Conv1D, learned positions, a ``score`` head."""
    return BackboneSpec(
        family="gpt2",
        stacks=(StackSpec("decoder", f"{p}h", _GPT2_ROLES),),
        head=_head_paths(model, ("score",)),
        model_roles={"embeddings": f"{p}wte", "positions": f"{p}wpe", "final_norm": f"{p}ln_f"},
        layout="pre_ln",
    )


def _t5(model: nn.Module, p: str) -> BackboneSpec:
    """T5 (v1.0 ReLU or v1.1 gated-GELU): pre-LN encoder and decoder stacks, kept apart."""
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


# transformers ``config.model_type`` -> how to build its spec
FAMILIES: dict[str, SpecBuilder] = {
    "bert": _encoder(_BERT_ROLES),
    "roberta": _encoder(_BERT_ROLES),
    "xlm-roberta": _encoder(_BERT_ROLES),
    "mpnet": _encoder(_MPNET_ROLES, returns_tuple=True),
    "llama": _llama_layout,
    "qwen2": _llama_layout,
    "mistral": _llama_layout,
    "gpt2": _gpt2,
    "t5": _t5,
}


def register_hf_family(model_type: str, builder: SpecBuilder) -> None:
    """Teach peftkit a transformers family: ``builder(model, prefix)`` returns its BackboneSpec, where
    ``prefix`` is the path of the bare model inside a task model (``"model."``, or ``""``).

    Raises:
        ConfigError: ``model_type`` already has a spec.
    """
    if model_type in FAMILIES:
        raise ConfigError(f"transformers family '{model_type}' already has a spec")
    FAMILIES[model_type] = builder


def supported_families() -> list[str]:
    """The ``config.model_type`` values with a spec."""
    return sorted(FAMILIES)


def resolve_hf_spec(model: nn.Module) -> BackboneSpec | None:
    """Resolver for ``pk.get_spec``: the spec of a transformers model (one with a ``config.model_type``)."""
    if getattr(getattr(model, "config", None), "model_type", None) is None:
        return None
    return spec_for_hf_model(model)


register_spec_resolver(resolve_hf_spec)


def spec_for_hf_model(model: nn.Module) -> BackboneSpec:
    """The BackboneSpec of a transformers model, by ``config.model_type``.

    Raises:
        UnsupportedError: for a family peftkit has no spec for (the message lists the supported ones).
    """
    mt = getattr(getattr(model, "config", None), "model_type", None)
    if mt not in FAMILIES:
        raise UnsupportedError(
            f"model type '{mt}' ({type(model).__name__}) is not supported; supported families: "
            f"{', '.join(supported_families())} (describe another one with pk.attach_spec or "
            "peftkit.backbones.hf.register_hf_family, see docs/your_model.md)"
        )
    return FAMILIES[mt](model, _prefix(model))
