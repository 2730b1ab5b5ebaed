"""BackboneSpecs of Hugging Face transformers families: role name -> module path inside one block.

Encoders with the BERT layout (BERT, RoBERTa, XLM-RoBERTa), MPNet, decoders with the Llama layout
(Llama, Qwen2, Mistral) and T5 (encoder and decoder stacks kept apart). A model's spec is chosen by its
``config.model_type``; :func:`spec_for_hf_model` is the resolver ``pk.get_spec`` falls back to.
"""

from __future__ import annotations

from torch import nn

from peftkit.core.errors import UnsupportedError
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


_ENCODER_FAMILIES = {
    "bert": _BERT_ROLES, "roberta": _BERT_ROLES, "xlm-roberta": _BERT_ROLES, "mpnet": _MPNET_ROLES,
}
# decoders with the Llama layout (q/k/v/o projections, SwiGLU MLP, RMSNorm before each sub-block)
_DECODER_FAMILIES = {"llama": _LLAMA_ROLES, "qwen2": _LLAMA_ROLES, "mistral": _LLAMA_ROLES}
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
            model_roles={
                "embeddings": f"{p}embed_tokens", "final_norm": f"{p}norm", "rotary": f"{p}rotary_emb",
            },
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
        f"model type '{mt}' ({type(model).__name__}) is not supported; supported families: "
        f"{', '.join(SUPPORTED_FAMILIES)} (describe another one with pk.attach_spec, see docs/your_model.md)"
    )
