"""The record of what peftkit applied to a model: the method stack, its parameters, and how to undo it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from peftkit.core.spec import BackboneSpec


def _none_params() -> list[nn.Parameter]:
    return []


def _none_buffers() -> list[torch.Tensor]:
    return []


@dataclass
class Applied:
    """What one method did to a model.

    Attributes:
        name: the registered method name.
        config: the method's config dataclass.
        params: the parameters this method trains, by identity (names are derived from the model).
        undo: reverts the method's edits.
        buffers: non-trainable tensors the method adds that a checkpoint must carry (e.g. a memory bank).
        model: set when the method wraps the model (peft prompt learning): the new root to train.
        head_params: overrides the head's parameters when the method relocates the head (peft's
            ``modules_to_save`` copy).
        virtual_tokens: positions the method prepends to every sequence (prompt tuning's virtual tokens);
            a later method that masks per token (DEFT) skips them.
        wraps_blocks: the method replaces or wraps whole blocks (Point-PEFT's prompted blocks, MEFT's
            reversible stack); a later method that calls the blocks' sub-modules directly would bypass it.
        trains_before_mlp_act: the method trains something upstream of an MLP activation (False for
            head-only): a density loss on that activation has nothing to move otherwise.
        trains_base: the method trains the pretrained weights themselves (full fine-tuning).
        merge: folds the method's trained parameters into the base weights exactly and removes the method's
            modules (LoRA / DoRA / IA3 through peft's merge; a no-op for full fine-tuning and head-only);
            None when no exact merge exists. ``pk.merge`` calls it.
    """

    name: str
    config: Any
    params: Callable[[], list[nn.Parameter]] = _none_params
    undo: Callable[[], None] = lambda: None
    buffers: Callable[[], list[torch.Tensor]] = _none_buffers
    model: nn.Module | None = None
    head_params: Callable[[], list[nn.Parameter]] | None = None
    virtual_tokens: int = 0
    wraps_blocks: bool = False
    trains_before_mlp_act: bool = True
    trains_base: bool = False
    merge: Callable[[], None] | None = None


@dataclass
class PeftkitState:
    """Attached to the trained root module as ``peftkit_state``."""

    spec: BackboneSpec
    base: nn.Module  # the model before any wrapping
    backbone_id: str
    applied: list[Applied] = field(default_factory=list)
    train_head: bool = True
    original_requires_grad: dict[int, bool] = field(default_factory=dict)

    def method_names(self) -> list[str]:
        return [a.name for a in self.applied]

    def virtual_tokens(self) -> int:
        """Positions prepended to every sequence by the applied methods (prompt tuning)."""
        return sum(a.virtual_tokens for a in self.applied)

    def wraps_blocks(self) -> list[str]:
        """Names of the applied methods that replace or wrap whole blocks."""
        return [a.name for a in self.applied if a.wraps_blocks]

    def head_parameters(self) -> list[nn.Parameter]:
        for a in reversed(self.applied):
            if a.head_params is not None:
                return a.head_params()
        out: list[nn.Parameter] = []
        for path in self.spec.head:
            out.extend(self.base.get_submodule(path).parameters())
        return out


STATE_ATTR = "peftkit_state"


def get_state(model: nn.Module) -> PeftkitState | None:
    """The peftkit record of ``model`` (None if no method was applied)."""
    return getattr(model, STATE_ATTR, None)


def set_state(model: nn.Module, state: PeftkitState | None) -> None:
    if state is None:
        if hasattr(model, STATE_ATTR):
            object.__delattr__(model, STATE_ATTR)
    else:
        object.__setattr__(model, STATE_ATTR, state)


def release(model: nn.Module, state: PeftkitState) -> nn.Module:
    """After the methods were undone or merged: restore ``requires_grad`` and drop the record; the base.

    Args:
        model: the root the state is attached to (the base, or peft's wrapper).
        state: its record.
    """
    base = state.base
    for p in base.parameters():
        p.requires_grad_(state.original_requires_grad.get(id(p), True))
    set_state(model, None)
    set_state(base, None)
    return base
