"""Place bottleneck adapters by backbone roles (no module names): Houlsby, Pfeiffer, parallel.

    houlsby   wrap ``attn_out`` and ``mlp_out``:  out = lin(x) + adapter(lin(x))      (Houlsby et al. 2019)
    pfeiffer  wrap ``mlp_out`` only                                                    (Pfeiffer et al. 2021)
    parallel  FFN(x) + s * adapter(x), x the FFN input                                 (He et al. 2022)
              - a block with an ``mlp`` role (Llama, T5, point transformer): wrap that module;
              - a split FFN (BERT: intermediate + output.dense): tap x at ``mlp_in``, add at ``mlp_out``.

On post-LN BERT the output projection is followed by dropout, the residual sum and LayerNorm, so a wrapped
``attn_out`` / ``mlp_out`` puts the adapter before the residual and the norm, as in Houlsby's Figure 2; on
pre-LN blocks the residual is added after these projections, so the same wrap is again "before the residual".

Shapes: d_in / d_out the input / output width of the wrapped module, m the bottleneck width.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from peftkit.core.errors import UnsupportedError
from peftkit.core.spec import BackboneSpec, StackSpec
from peftkit.core.state import Applied, get_state
from peftkit.core.surgery import UndoRecord, get_module
from peftkit.layers.bottleneck import Bottleneck
from peftkit.methods.adapter.config import Adapter
from peftkit.methods.adapter.layers import (
    InputSlot,
    ParallelAdapter,
    ParallelInputTap,
    ParallelOutput,
    SerialAdapter,
)

_SERIAL_ROLES = {"houlsby": ("attn_out", "mlp_out"), "pfeiffer": ("mlp_out",)}


def features(module: nn.Module, where: str) -> tuple[int, int]:
    """(d_in, d_out) of a Linear-like module, looking through wrappers that keep a ``base_layer``.

    Raises:
        UnsupportedError: when the module has no linear input/output width.
    """
    m = module
    while True:
        d_in, d_out = getattr(m, "in_features", None), getattr(m, "out_features", None)
        if d_in is None and d_out is None:   # transformers' Conv1D (GPT-2): nx inputs, nf outputs
            d_in, d_out = getattr(m, "nx", None), getattr(m, "nf", None)
        if isinstance(d_in, int) and isinstance(d_out, int):
            return d_in, d_out
        inner = getattr(m, "base_layer", None)
        if not isinstance(inner, nn.Module):
            break
        m = inner
    raise UnsupportedError(
        f"adapter: {where} is a {type(module).__name__}, not a Linear-like layer with in/out features"
    )


def _blocks(root: nn.Module, spec: BackboneSpec) -> Iterator[tuple[str, StackSpec]]:
    for stack in spec.stacks:
        for i in range(len(root.get_submodule(stack.blocks))):
            yield f"{stack.blocks}.{i}", stack


def _need(stack: StackSpec, spec: BackboneSpec, kind: str, roles: tuple[str, ...]) -> None:
    missing = [r for r in roles if r not in stack.roles]
    if missing:
        raise UnsupportedError(
            f"adapter kind '{kind}' needs role(s) {missing}; stack '{stack.name}' of backbone family "
            f"'{spec.family}' has roles {sorted(stack.roles)}"
        )


def _like(module: nn.Module) -> dict[str, torch.dtype | torch.device]:
    """dtype / device for new layers: those of the wrapped module's first floating-point parameter."""
    p = next((p for p in module.parameters() if p.is_floating_point()), None)
    return {} if p is None else {"dtype": p.dtype, "device": p.device}


def _bottleneck(config: Adapter, d_in: int, d_out: int, like: nn.Module) -> Bottleneck:
    m = config.bottleneck_for(d_out)
    return Bottleneck(d_in, m, d_out, activation=config.activation, init="near_identity",
                      init_std=config.init_scale, **_like(like))


def apply_adapter(model: nn.Module, spec: BackboneSpec, config: Adapter) -> Applied:
    """Wrap the role modules of every block of every stack with bottleneck adapters.

    Args:
        model: the model (or peft's prompt wrapper: the spec's paths are resolved on the unwrapped base).
        spec: the backbone's roles.
        config: which placement and sizes.

    Returns:
        The Applied record: the adapters' parameters and an undo that restores the original modules.

    Raises:
        UnsupportedError: the backbone lacks a role the chosen kind needs, or a role is not Linear-like.
    """
    state = get_state(model)
    root = state.base if state is not None else model
    record = UndoRecord()
    wrappers: list[nn.Module] = []
    try:
        for block, stack in _blocks(root, spec):
            if config.kind in _SERIAL_ROLES:
                roles = _SERIAL_ROLES[config.kind]
                _need(stack, spec, config.kind, roles)
                for role in roles:
                    path = f"{block}.{stack.roles[role]}"
                    old = get_module(root, path)
                    _, d = features(old, f"role '{role}' ({path})")
                    ad = _bottleneck(config, d, d, old)   # serial: the adapter reads the layer's output (d)
                    wrappers.append(record.wrap(root, path, lambda o, ad=ad: SerialAdapter(o, ad)))
            else:
                wrappers.extend(_parallel(root, block, stack, spec, config, record))
    except BaseException:
        record.undo()
        raise
    params = [dict(w.named_parameters())[n] for w in wrappers for n in w.adapter_params()]
    return Applied("adapter", config, params=lambda: list(params), undo=record.undo)


def _parallel(root: nn.Module, block: str, stack: StackSpec, spec: BackboneSpec, config: Adapter,
              record: UndoRecord) -> list[nn.Module]:
    _need(stack, spec, "parallel", ("mlp_in", "mlp_out"))
    d_in, _ = features(get_module(root, f"{block}.{stack.roles['mlp_in']}"), "role 'mlp_in'")
    _, d_out = features(get_module(root, f"{block}.{stack.roles['mlp_out']}"), "role 'mlp_out'")
    if "mlp" in stack.roles:
        path = f"{block}.{stack.roles['mlp']}"
        ad = _bottleneck(config, d_in, d_out, get_module(root, path))
        return [record.wrap(root, path, lambda o: ParallelAdapter(o, ad, config.scale))]
    slot = InputSlot()
    in_path, out_path = f"{block}.{stack.roles['mlp_in']}", f"{block}.{stack.roles['mlp_out']}"
    ad = _bottleneck(config, d_in, d_out, get_module(root, out_path))
    tap = record.wrap(root, in_path, lambda o: ParallelInputTap(o, slot))
    out = record.wrap(root, out_path, lambda o: ParallelOutput(o, ad, slot, config.scale))
    return [tap, out]
