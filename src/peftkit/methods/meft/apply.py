"""``apply_meft``: convert a pretrained transformer in place into MEFT's reversible two-stream model.

"Make Pre-trained Model Reversible: From Parameter to Memory Efficient Fine-Tuning" (Liao, Tan, Monz;
NeurIPS 2023; arXiv 2306.00477). Per block n, F_n and G_n are chosen by the variant (paper Fig. 4 c/d):

    meft1: F = layer + parallel FFN adapter,  G = adapter;                 lam 0.1, beta 1,   switch
    meft2: F = adapter,                       G = layer + parallel FFN adapter; lam 1, beta 0.1, switch
    meft3: F = attention block + adapter,     G = FFN block + adapter;     lam 0.1, beta 0.1, no switch

and the block list is replaced by a :class:`ReversibleStack` (undone by ``pk.remove``). Only the adapters
(and the head) train; nothing else is made trainable.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from peftkit.core.errors import ConfigError, UnsupportedError
from peftkit.core.params import adapter_parameters
from peftkit.core.spec import BackboneSpec
from peftkit.core.state import Applied, get_state
from peftkit.core.surgery import UndoRecord
from peftkit.layers.bottleneck import Bottleneck, activation
from peftkit.methods.meft.blocks import (
    BlockOps,
    SubNet,
    backbone_defaults,
    check_spec,
    check_stateless,
    meft_adapter,
)
from peftkit.methods.meft.config import MEFT
from peftkit.methods.meft.coupling import Coupling
from peftkit.methods.meft.stack import ReversibleStack


def _subnets(variant: str, ops: BlockOps, fa: Bottleneck, ga: Bottleneck,
             bounded: bool) -> tuple[SubNet, SubNet]:
    if variant == "meft1":
        return SubNet("layer", fa, ops, bounded), SubNet("adapter", ga, None)
    if variant == "meft2":
        return SubNet("adapter", fa, None), SubNet("layer", ga, ops, bounded)
    return SubNet("attn", fa, ops, bounded), SubNet("ffn", ga, ops, bounded)


def _width(block: nn.Module, roles: Mapping[str, str]) -> int:
    out = block.get_submodule(roles["mlp_out"])
    width = getattr(out, "out_features", None) or getattr(getattr(out, "base_layer", None), "out_features",
                                                          None)
    if not isinstance(width, int):
        raise UnsupportedError(f"MEFT: cannot read the model width from the mlp_out role "
                               f"({type(out).__name__})")
    return width


def apply_meft(model: nn.Module, spec: BackboneSpec, config: MEFT) -> Applied:
    """Make ``model`` reversible in place (see the module docstring); returns the undo record and adapters.

    Raises:
        UnsupportedError: unsupported family, a stateful module (BatchNorm) inside a block, or a method
            already applied that wraps whole blocks.
        ConfigError: ``num_rev_layers`` larger than the number of blocks.
    """
    stack_spec = check_spec(spec)
    state = get_state(model)
    clash = state.wraps_blocks() if state else []
    if clash:
        raise UnsupportedError(f"MEFT cannot be stacked after {clash}: it wraps whole blocks, which MEFT "
                               "bypasses (it calls the blocks' sub-modules)")
    blocks = model.get_submodule(stack_spec.blocks)
    if isinstance(blocks, ReversibleStack) or not isinstance(blocks, nn.ModuleList):
        raise UnsupportedError(f"MEFT expects an nn.ModuleList at '{stack_spec.blocks}', found "
                               f"{type(blocks).__name__}")
    n = len(blocks)
    k = n if config.num_rev_layers is None else config.num_rev_layers
    if k > n:
        raise ConfigError(f"MEFT num_rev_layers={k} but the model has only {n} blocks")
    for i, b in enumerate(blocks):
        check_stateless(b, f"{stack_spec.blocks}.{i}")

    act, drop = backbone_defaults(model)
    act = config.adapter_act or act
    activation(act, "MEFT adapter_act")  # an unknown name: ConfigError listing the known ones
    drop = drop if config.adapter_dropout is None else config.adapter_dropout
    lam, beta, switch = config.resolved()
    ops, couplings = [], []
    for b in blocks:
        o = BlockOps(b, stack_spec, spec.layout)
        ref, width = next(b.parameters()), _width(b, stack_spec.roles)
        fa, ga = (meft_adapter(width, config.adapter_dim, act, drop, config.adapter_init_std, ref)
                  for _ in range(2))
        f, g = _subnets(config.variant, o, fa, ga, config.bounded_attention)
        ops.append(o)
        couplings.append(Coupling(f, g, lam, beta, switch))
    stack = ReversibleStack(list(blocks), couplings, ops, k, config.use_reversible_backward,
                            config.stream_dtype, config.anchor_every, config.tolerance,
                            config.calibration_margin, config.check_every, config.on_error,
                            config.calibration_batches, config.adaptive_margin, config.recalibrate_at,
                            config.sticky_anchors, config.calibration_nudges)
    stack.train(blocks.training)
    record = UndoRecord()
    record.replace(model, stack_spec.blocks, stack)
    params = adapter_parameters([stack.couplings])
    return Applied("meft", config, params=lambda: params, undo=record.undo, wraps_blocks=True)


def find_stack(model: nn.Module) -> ReversibleStack:
    """The MEFT stack inside ``model`` (to switch ``use_reversible_backward`` or read the drift check)."""
    found = [m for m in model.modules() if isinstance(m, ReversibleStack)]
    if len(found) != 1:
        raise UnsupportedError(f"expected one MEFT stack in the model, found {len(found)}: "
                               "apply pk.MEFT() first")
    return found[0]
