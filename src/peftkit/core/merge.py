"""``pk.merge``: fold a trained method stack into the base weights and return a plain model.

A method merges when its ``Applied.merge`` exists: LoRA, DoRA (W' = m (W + s B A) / ||W + s B A||_c) and IA3
(W' = l * W, on the output rows or, for feed-forward roles, the input columns) through peft's own merge;
full fine-tuning and head-only have nothing to fold. Methods without parameters (DEFT's density loss) are
simply removed. Anything else has no exact merge -- a bottleneck adapter computes
``x + U f(D x)`` with a nonlinearity f between its projections, prompt / prefix tuning add sequence
positions, QLoRA's base is 4-bit -- so ``pk.merge`` refuses the whole stack before changing anything.
"""

from __future__ import annotations

from torch import nn

from peftkit.core.errors import ConfigError, UnsupportedError
from peftkit.core.state import get_state, release


def merge(model: nn.Module) -> nn.Module:
    """Merge every applied method into the base weights; returns the plain base model (no peftkit state).

    The merged model gives the same outputs as ``model`` (up to float rounding) with the base model's own
    module types, so it can be saved with ``save_pretrained`` and used without peftkit or peft.

    Raises:
        ConfigError: no method is applied to ``model``.
        UnsupportedError: a method in the stack has parameters but no exact merge (the message names it).
    """
    state = get_state(model)
    if state is None:
        raise ConfigError("pk.merge: no peftkit method is applied to this model; nothing to merge")
    blocked = [a.name for a in state.applied if a.merge is None and (a.params() or a.buffers())]
    if blocked:
        raise UnsupportedError(
            f"pk.merge: {', '.join(blocked)} has no exact merge into the base weights (a bottleneck adapter "
            "has a nonlinearity between its projections, prompts add positions, a 4-bit base would be "
            "re-quantised); merge works for lora, dora, ia3, full and head_only, plus parameter-free "
            "methods such as deft. Keep the adapter with pk.save_adapter instead"
        )
    for a in reversed(state.applied):
        if a.merge is not None:
            a.merge()
        else:
            a.undo()   # parameter-free: nothing to fold in
    return release(model, state)
