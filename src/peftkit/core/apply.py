"""``pk.apply``: edit a model in place with a stack of methods, freeze the rest, and undo it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from peftkit.core.errors import ConfigError
from peftkit.core.params import freeze_all_but_adapters
from peftkit.core.protocols import AuxLossModule
from peftkit.core.registry import method_for_config
from peftkit.core.spec import BACKBONE_ID_ATTR, SPEC_ATTR, BackboneSpec, attach_spec, get_spec
from peftkit.core.state import PeftkitState, get_state, release, set_state


def backbone_id(model: nn.Module) -> str:
    """The id a checkpoint is tied to: set by ``load_backbone``, else the spec family and class name."""
    bid = getattr(model, BACKBONE_ID_ATTR, None)
    if bid is not None:
        return bid
    return f"{get_spec(model).family}:{type(model).__name__}"


def apply(
    model: nn.Module,
    methods: Sequence[Any] | Any,
    *,
    spec: BackboneSpec | None = None,
    train_head: bool = True,
) -> nn.Module:
    """Apply a stack of method configs to ``model`` in place and freeze all but their parameters.

    Args:
        model: a backbone (from ``pk.load_backbone`` or any model with a BackboneSpec).
        methods: one method config or a list, applied in order (e.g. ``[pk.LoRA(rank=8), pk.DEFT()]``).
        spec: overrides the model's BackboneSpec.
        train_head: whether the task head trains (counted apart as ``head``).

    Returns:
        The model to train: the same object, or peft's wrapper where a peft prompt-learning method needs one.
    """
    if not isinstance(methods, (list, tuple)):
        methods = [methods]
    if not methods:
        raise ConfigError("pk.apply needs at least one method config, e.g. pk.apply(model, [pk.LoRA()])")
    spec = spec or get_spec(model)
    state = get_state(model)
    created = state is None
    if state is None:
        state = PeftkitState(spec=spec, base=model, backbone_id=backbone_id(model), train_head=train_head)
        state.original_requires_grad = {id(p): p.requires_grad for p in model.parameters()}
    elif state.train_head != train_head:
        raise ConfigError("train_head must be the same for every pk.apply call on one model")
    n_before = len(state.applied)
    root = model
    try:
        for config in methods:
            entry = method_for_config(config)
            if entry.name in state.method_names():
                raise ConfigError(f"method '{entry.name}' is already applied to this model")
            set_state(root, state)  # methods may look at what is already applied
            applied = entry.apply(root, spec, config)
            state.applied.append(applied)
            if applied.model is not None and applied.model is not root:
                root = applied.model
                attach_spec(root, spec, state.backbone_id)
    except BaseException:
        # a failing method leaves the model as this call found it: undo what this call applied
        for a in reversed(state.applied[n_before:]):
            a.undo()
        del state.applied[n_before:]
        if root is not model:
            set_state(root, None)
        set_state(model, None if created else state)
        raise
    set_state(root, state)
    freeze_all_but_adapters(root)
    return root


def remove(model: nn.Module) -> nn.Module:
    """Undo every method applied to ``model`` (last first) and restore ``requires_grad``; returns the base."""
    state = get_state(model)
    if state is None:
        return model
    for a in reversed(state.applied):
        a.undo()
    return release(model, state)


def aux_loss(model: nn.Module) -> torch.Tensor:
    """Sum of the auxiliary losses (e.g. DEFT's density term) of the last forward; 0 if there are none."""
    total: torch.Tensor | None = None
    for m in model.modules():
        if m is model or not isinstance(m, AuxLossModule):
            continue
        loss = m.aux_loss()
        total = loss if total is None else total + loss
    if total is None:
        p = next(model.parameters(), None)
        return torch.zeros((), device=p.device if p is not None else None)
    return total


__all__ = ["apply", "remove", "aux_loss", "backbone_id", "SPEC_ATTR", "BACKBONE_ID_ATTR"]
