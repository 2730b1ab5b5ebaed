"""Apply functions for full fine-tuning and head-only training (the two reference points of every table)."""

from __future__ import annotations

from torch import nn

from peftkit.core.errors import UnsupportedError
from peftkit.core.spec import BackboneSpec
from peftkit.core.state import Applied, get_state
from peftkit.methods.baseline.config import FullFineTune, HeadOnly


def _nothing_to_fold() -> None:
    """``pk.merge`` of full FT / head-only: the trained weights already are the model's own."""


def apply_full(model: nn.Module, spec: BackboneSpec, config: FullFineTune) -> Applied:
    """Every backbone parameter that is not the head becomes trainable, owned by ``full``."""
    state = get_state(model)
    head = {id(p) for p in state.head_parameters()} if state else set()
    params = [p for p in model.parameters() if id(p) not in head]
    # Full fine-tuning also changes the backbone's running statistics (BatchNorm in the point encoder):
    # its checkpoint carries every buffer, or a reloaded run would evaluate with the initial statistics.
    buffers = list(model.buffers())
    return Applied("full", config, params=lambda: params, buffers=lambda: buffers, trains_base=True,
                   merge=_nothing_to_fold)


def apply_head_only(model: nn.Module, spec: BackboneSpec, config: HeadOnly) -> Applied:
    """Nothing besides the head trains (so nothing upstream of an MLP activation trains either)."""
    if not spec.head:
        raise UnsupportedError(
            f"backbone family '{spec.family}' built without a task head: head_only has nothing to train"
        )
    return Applied("head_only", config, trains_before_mlp_act=False, merge=_nothing_to_fold)
