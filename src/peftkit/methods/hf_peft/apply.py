"""LoRA, DoRA and IA3 through peft's in-place ``inject_adapter_in_model`` (the same model object comes back).

    LoRA (Hu et al. 2022, eq. 3):  h = W0 x + (alpha / r) * B A x,    A: (r, d_in), B: (d_out, r), B0 = 0
    DoRA (Liu et al. 2024, eq. 5): W' = m * (W0 + B A) / ||W0 + B A||_c,   m: (d_out,), m0 = ||W0||_c
    IA3  (Liu et al. 2022):        k <- l_k * k,  v <- l_v * v,  FFN: W_2 (l_ff * a),   l initialised to 1

``target_modules`` are the exact module paths the spec gives for the configured roles, so peft's suffix
matching can never pick an unintended layer. Parameters are found through peft's tuner layers
(``adapter_layer_names``), never by name substrings.
"""

from __future__ import annotations

from torch import nn

from peftkit.core.spec import BackboneSpec
from peftkit.core.state import Applied
from peftkit.core.surgery import UndoRecord
from peftkit.methods.hf_peft.config import IA3, DoRA, LoRA, _LowRank
from peftkit.methods.hf_peft.resolve import resolve_targets
from peftkit.methods.hf_peft.targets import (
    base_model,
    check_single_peft,
    inject,
    layer_types,
    merge_layers,
    tuner_params,
)


def lora_config(config: _LowRank, paths: list[str], use_dora: bool) -> object:
    """The peft ``LoraConfig`` for ``config`` on exactly ``paths``."""
    from peft import LoraConfig

    return LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                      target_modules=paths, use_dora=use_dora, bias="none")


def inject_low_rank(model: nn.Module, spec: BackboneSpec, config: _LowRank, name: str, use_dora: bool,
                    record: UndoRecord | None = None, mergeable: bool = True) -> Applied:
    """Shared by LoRA, DoRA and QLoRA: resolve the roles, inject, and describe what was done.

    ``mergeable``: whether the update folds exactly into the base weight (QLoRA's 4-bit base would have to be
    re-quantised, so it says False).
    """
    check_single_peft(model, name)
    root = base_model(model)
    record = record or UndoRecord()
    try:
        paths = resolve_targets(root, spec, config.targets, layer_types("dora" if use_dora else "lora"), name)
        layers = inject(root, lora_config(config, paths, use_dora), paths, record)
    except BaseException:
        record.undo()
        raise
    params = tuner_params(layers)
    merge = (lambda: merge_layers(root, paths)) if mergeable else None
    return Applied(name, config, params=lambda: list(params), undo=record.undo, merge=merge)


def apply_lora(model: nn.Module, spec: BackboneSpec, config: LoRA) -> Applied:
    """LoRA on the target roles (peft ``LoraConfig``, in place)."""
    return inject_low_rank(model, spec, config, "lora", use_dora=False)


def apply_dora(model: nn.Module, spec: BackboneSpec, config: DoRA) -> Applied:
    """DoRA on the target roles (peft ``LoraConfig(use_dora=True)``, in place)."""
    return inject_low_rank(model, spec, config, "dora", use_dora=True)


def apply_ia3(model: nn.Module, spec: BackboneSpec, config: IA3) -> Applied:
    """IA3 scaling vectors on the target roles; ``feedforward`` roles are scaled on their input."""
    from peft import IA3Config

    check_single_peft(model, "ia3")
    root = base_model(model)
    record = UndoRecord()
    try:
        allowed = layer_types("ia3")
        paths = resolve_targets(root, spec, config.targets, allowed, "ia3")
        ff = resolve_targets(root, spec, config.feedforward, allowed, "ia3")
        layers = inject(root, IA3Config(target_modules=paths, feedforward_modules=ff), paths, record)
    except BaseException:
        record.undo()
        raise
    params = tuner_params(layers)
    return Applied("ia3", config, params=lambda: list(params), undo=record.undo,
                   merge=lambda: merge_layers(root, paths))
