"""Shared plumbing for the peft-backed methods: the task type, one peft method per model, in-place injection
with undo, merge, and the trainable parameters found through peft's tuner layers (``adapter_layer_names``).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence
from typing import Any

from torch import nn

from peftkit.core.errors import UnsupportedError
from peftkit.core.state import get_state
from peftkit.core.surgery import UndoRecord, get_module, set_module

ADAPTER_NAME = "default"   # one peft adapter per model (see check_single_peft)
HF_PEFT_METHODS = ("lora", "dora", "qlora", "ia3", "prompt", "prefix")
_TASK_TYPES = (("ForSequenceClassification", "SEQ_CLS"), ("ForCausalLM", "CAUSAL_LM"),
               ("ForConditionalGeneration", "SEQ_2_SEQ_LM"), ("ForSeq2SeqLM", "SEQ_2_SEQ_LM"),
               ("ForTokenClassification", "TOKEN_CLS"))


def task_type(model: nn.Module) -> str | None:
    """peft's ``task_type`` for a transformers model, from its class name (None when there is none)."""
    cls = type(model).__name__
    return next((task for suffix, task in _TASK_TYPES if cls.endswith(suffix)), None)


def base_model(model: nn.Module) -> nn.Module:
    """The unwrapped model the spec's paths refer to (peft's prompt wrapper may sit on top)."""
    state = get_state(model)
    return state.base if state is not None else model


def check_single_peft(model: nn.Module, name: str) -> None:
    """peft keeps one adapter config per model here: a second peft method on the same model is refused."""
    state = get_state(model)
    others = [n for n in (state.method_names() if state else []) if n in HF_PEFT_METHODS]
    if others:
        raise UnsupportedError(
            f"'{name}' cannot be stacked on '{others[0]}': peftkit runs at most one HF-peft method "
            f"({', '.join(HF_PEFT_METHODS)}) per model; combine it with peftkit's own methods "
            "(e.g. adapter) instead"
        )


def layer_types(kind: str) -> tuple[type, ...]:
    """Module types peft can adapt for ``kind`` in {lora, dora, ia3} (bnb types once bnb is imported)."""
    types: list[type] = [nn.Linear]
    if kind in ("lora", "dora"):
        types += [nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d]
    if kind == "lora":
        types.append(nn.MultiheadAttention)
    if kind == "ia3":
        types += [nn.Conv2d, nn.Conv3d]
    conv1d = getattr(sys.modules.get("transformers.pytorch_utils"), "Conv1D", None)
    if conv1d is not None:
        types.append(conv1d)
    bnb = sys.modules.get("bitsandbytes")
    if bnb is not None and kind in ("lora", "dora"):
        types += [bnb.nn.Linear4bit, bnb.nn.Linear8bitLt]
    return tuple(types)


def inject(root: nn.Module, peft_config: Any, paths: list[str], record: UndoRecord) -> list[nn.Module]:
    """``peft.inject_adapter_in_model`` on exactly ``paths`` (in place); the undo puts the originals back.

    Returns:
        The peft tuner layers now at ``paths``.
    """
    from peft import inject_adapter_in_model

    originals = {p: get_module(root, p) for p in paths}
    had_config = "peft_config" in root.__dict__
    if not had_config:
        record.on_undo(lambda: root.__dict__.pop("peft_config", None))
    for p in paths:   # registered before injecting, so a failure half-way is undone too
        record.on_undo(lambda p=p: set_module(root, p, originals[p]))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Aa]lready found a `peft_config`.*")
        # GPT-2's Conv1D stores W transposed; peft switches fan_in_fan_out on for it by itself
        warnings.filterwarnings("ignore", message="fan_in_fan_out is set to False but the target module is")
        inject_adapter_in_model(peft_config, root, adapter_name=ADAPTER_NAME)
    layers = [get_module(root, p) for p in paths]
    for p, layer in zip(paths, layers):
        if layer.get_base_layer() is not originals[p]:
            raise RuntimeError(f"peft did not wrap {p} as expected (found {type(layer).__name__})")
    return layers


def tuner_params(layers: Sequence[nn.Module], adapter_name: str = ADAPTER_NAME) -> list[nn.Parameter]:
    """The trainable parameters of peft tuner layers, read from their ``adapter_layer_names`` containers."""
    out: list[nn.Parameter] = []
    seen: set[int] = set()
    for layer in layers:
        for attr in dict.fromkeys(layer.adapter_layer_names):
            container = getattr(layer, attr, None)
            if container is None or adapter_name not in container:
                continue
            item = container[adapter_name]
            for p in [item] if isinstance(item, nn.Parameter) else item.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    out.append(p)
    return out


def merge_layers(root: nn.Module, paths: Sequence[str]) -> None:
    """Fold peft's adapter into each base layer at ``paths`` (peft's ``merge(safe_merge=True)``) and put the
    base layer back in its place; peft's config record on ``root`` goes too."""
    for path in paths:
        layer = get_module(root, path)
        layer.merge(safe_merge=True, adapter_names=[ADAPTER_NAME])
        set_module(root, path, layer.get_base_layer())
    root.__dict__.pop("peft_config", None)

