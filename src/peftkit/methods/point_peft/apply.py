"""``apply_point_peft``: Point-PEFT (Tang et al., AAAI 2024, arXiv 2310.03059) on a frozen point transformer.

The backbone's blocks are not replaced (their role paths stay valid, so DEFT can observe ``mlp.act`` after
Point-PEFT); each block gets a ``point_peft`` child module and hooks (:mod:`.runtime`), removed by
``pk.remove``. The returned ``Applied`` says ``wraps_blocks=True``: later methods that call a block's
sub-modules directly (MEFT's reversible stack) would bypass the hooks, and read that flag to refuse.
"""

from __future__ import annotations

import torch
from torch import nn

from peftkit.core.errors import ConfigError, UnsupportedError
from peftkit.core.params import adapter_parameters
from peftkit.core.spec import BackboneSpec
from peftkit.core.state import Applied, get_state
from peftkit.core.surgery import UndoRecord
from peftkit.methods.point_peft.bank import QueryEncoder, load_bank, load_bank_norms
from peftkit.methods.point_peft.config import PointPEFT
from peftkit.methods.point_peft.geo_adapter import GeoAdapter
from peftkit.methods.point_peft.prompt import PointPriorBank, PromptTokens
from peftkit.methods.point_peft.runtime import (
    PointPEFTLayer,
    PointPEFTShared,
    after_block_hook,
    insert_prompts_hook,
)

# Roles whose bias trains (the reference's ``proj.bias fc1.bias fc2.bias norm1.bias norm2.bias``; a qkv bias
# where the backbone has one, as the M2AE version lists ``qkv.bias``).
BIAS_ROLES = ("attn_qkv", "attn_out", "mlp_in", "mlp_out", "attn_norm", "mlp_norm")
NORM_ROLES = ("attn_norm", "mlp_norm")  # the blocks' LayerNorms (``train_block_norm_weights``)


def _bank_for(model: nn.Module, config: PointPEFT, dim: int) -> PointPriorBank | None:
    if not config.uses_bank:
        return None
    if not config.bank_path:
        raise ConfigError(
            "Point-PEFT's prompts read a P2-Bank: build one with `peftkit point-bank CONFIG` and set "
            "bank_path, or set use_bank=false (prompts without the bank)"
        )
    encoder = QueryEncoder(model)
    features, _ = load_bank(config.bank_path, encoder_hash=encoder.fingerprint(), dim=dim)
    norms = load_bank_norms(config.bank_path) if config.cache_query else None
    if config.cache_query and norms is None:
        raise ConfigError(
            f"cache_query needs a P2-Bank that stores its features' norms; rebuild {config.bank_path} with "
            "`peftkit point-bank CONFIG`"
        )
    return PointPriorBank(features, encoder, config.top_k, norms)


def _role_params(model: nn.Module, spec: BackboneSpec, roles: tuple[str, ...],
                 attr: str) -> list[nn.Parameter]:
    """The ``attr`` parameter (``bias`` / ``weight``) of every module in ``roles`` that has one."""
    out: list[nn.Parameter] = []
    for role in roles:
        if spec.has_role(role):
            for path in spec.role_paths(model, role):
                p = getattr(model.get_submodule(path), attr, None)
                if isinstance(p, nn.Parameter):
                    out.append(p)
    return out


def _base_params(model: nn.Module, spec: BackboneSpec, config: PointPEFT) -> list[nn.Parameter]:
    """The backbone parameters the reference trains besides the new modules (the head is core's)."""
    out: list[nn.Parameter] = []
    if config.train_block_biases:
        out.extend(_role_params(model, spec, BIAS_ROLES, "bias"))
    if config.train_block_norm_weights:
        out.extend(_role_params(model, spec, NORM_ROLES, "weight"))
    if config.train_final_norm:
        out.extend(model.get_submodule(spec.model_role("final_norm")).parameters())
    if config.train_cls:
        out.extend(model.get_parameter(spec.model_role(r)) for r in ("cls_token", "cls_pos"))
    return out


def apply_point_peft(model: nn.Module, spec: BackboneSpec, config: PointPEFT) -> Applied:
    """Add Point-PEFT's prompts and adapters to a Point-MAE-family transformer (in place, undoable).

    Raises:
        UnsupportedError: another backbone family, or methods applied before Point-PEFT.
        ConfigError: more prompted layers than blocks, no bank path, K larger than the bank.
        CheckpointError: a bank made by another encoder or of another width.
    """
    if spec.family != "point_mae":
        raise UnsupportedError(f"point_peft needs a point transformer (point_mae family), not {spec.family}")
    state = get_state(model)
    if state is not None and state.applied:
        raise UnsupportedError(
            f"apply point_peft first: it copies the pre-trained encoder for its prompts, and "
            f"{state.method_names()} already edited the model (stack e.g. [point_peft, deft])"
        )
    blocks = model.get_submodule(spec.stack().blocks)
    depth = len(blocks)
    if config.use_prompt and config.prompt_layers > depth:
        raise ConfigError(f"prompt_layers={config.prompt_layers} but the backbone has {depth} blocks")
    for flag, attr in (("checkpoint_blocks", "checkpoint"), ("checkpoint_attention", "checkpoint_attn")):
        if getattr(config, flag) and not all(isinstance(getattr(b, attr, None), bool) for b in blocks):
            raise UnsupportedError(f"{flag} needs point_mae's Block (a `{attr}` switch)")
    dim = int(model.get_submodule(spec.model_role("final_norm")).normalized_shape[0])
    shared = PointPEFTShared(
        dim,
        _bank_for(model, config, dim),
        prompt_coords=config.num_prompt_tokens if config.use_prompt and config.use_adapter else 0,
        prompt_init_std=config.prompt_init_std,
        local_attn=(config.local_heads, config.local_head_dim) if config.use_adapter else None,
        sub_center_ratio=config.sub_center_ratio,
        sub_group_ratio=config.sub_group_ratio,
        interp_eps=config.interp_eps,
        cache_query=config.cache_query,
    )
    record = UndoRecord()
    record.add_module(model, "point_peft", shared)
    layers = []
    rates = torch.linspace(0, config.local_drop_path, depth).tolist()
    last_hooked = depth - 1 if config.use_adapter else config.prompt_layers - 1  # frees the forward's context
    for i, blk in enumerate(blocks):
        prompted = config.use_prompt and i < config.prompt_layers
        prompt = PromptTokens(
            config.num_prompt_tokens, dim, config.prompt_init_std, config.prompt_dropout,
            config.prompt_adapter_dim if config.uses_bank else None, config.adapter_dropout,
        ) if prompted else None
        geo = GeoAdapter(
            dim, config.adapter_dim, config.adapter_dropout, config.mlp_adapter_scale, config.center_coef,
            config.propagate_coef, rates[i],
        ) if config.use_adapter else None
        layer = PointPEFTLayer(prompt, geo)
        record.add_module(blk, "point_peft", layer)
        layers.append(layer)
        if prompt is not None:
            pre = insert_prompts_hook(layer, shared)
            record.on_undo(blk.register_forward_pre_hook(pre, with_kwargs=True).remove)
        if geo is not None:
            mlp = blk.get_submodule(spec.stack().roles["mlp"])
            record.on_undo(mlp.register_forward_hook(lambda m, a, y, g=geo: g.adapt_mlp(y)).remove)
        if prompt is not None or geo is not None:
            hook = after_block_hook(layer, shared, last=i == last_hooked,
                                    checkpoint_adapter=config.checkpoint_adapter)
            record.on_undo(blk.register_forward_hook(hook, with_kwargs=True).remove)
    for flag, attr in (("checkpoint_blocks", "checkpoint"), ("checkpoint_attention", "checkpoint_attn")):
        if getattr(config, flag):
            for blk in blocks:
                before = getattr(blk, attr)
                record.on_undo(lambda blk=blk, attr=attr, before=before: setattr(blk, attr, before))
                setattr(blk, attr, True)
    if hasattr(model, "freeze_bn_stats"):
        before = model.freeze_bn_stats
        model.freeze_bn_stats = config.freeze_encoder_bn
        record.on_undo(lambda: setattr(model, "freeze_bn_stats", before))
    record.on_undo(shared.release)
    params = adapter_parameters([shared, *layers]) + _base_params(model, spec, config)
    buffers = [b for m in (shared, *layers) for b in m.buffers()]
    return Applied(
        "point_peft",
        config,
        params=lambda: params,
        undo=record.undo,
        buffers=lambda: buffers,
        wraps_blocks=True,
    )
