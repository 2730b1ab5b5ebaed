"""``apply_point_peft``: Point-PEFT (Tang et al., AAAI 2024, arXiv 2310.03059) on a frozen point transformer.

The backbone's blocks are not replaced (their role paths stay valid, so DEFT can observe ``mlp.act`` after
Point-PEFT); each block gets a ``point_peft`` child module and three hooks, removed by ``pk.remove``:

    pre-hook  (blocks l < L):  x = [cls; P_l; patches],  pos = [cls_pos; 0; pos]   (prompts carry no pos)
    mlp hook  (every block):   y = MLP(LN2(h))  ->  y + 0.7 * delta(y)              (parallel adapter)
    post-hook (every block):   [cls; T] -> GA-Adapter -> Adp_16 -> drop P_l         (deep prompts)

The model gets one ``point_peft`` module with what the blocks share: the prompts' learnable coordinates,
the local attention and the P2-Bank (with its frozen query encoder). Per-forward data (the retrieved prompt
source C, the token groupings) is computed once from the block's ``PointGeometry`` and reused by all blocks.

Shapes: b batch, t tokens (1 + g, or 1 + T + g in prompted blocks), T prompt tokens, g groups, d dim.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from peftkit.ops.geometry import PointGeometry
from peftkit.core.errors import ConfigError, UnsupportedError
from peftkit.core.params import adapter_parameters
from peftkit.core.spec import BackboneSpec
from peftkit.core.state import Applied, get_state
from peftkit.core.surgery import UndoRecord
from peftkit.methods.point_peft.bank import QueryEncoder, load_bank
from peftkit.methods.point_peft.config import PointPEFT
from peftkit.methods.point_peft.geo_adapter import GeoAdapter, TokenGrouping, group_tokens
from peftkit.methods.point_peft.layers import LocalAttention
from peftkit.methods.point_peft.prompt import PointPriorBank, PromptTokens

# Roles whose bias trains (the reference's ``proj.bias fc1.bias fc2.bias norm1.bias norm2.bias``; a qkv bias
# where the backbone has one, as the M2AE version lists ``qkv.bias``).
BIAS_ROLES = ("attn_qkv", "attn_out", "mlp_in", "mlp_out", "attn_norm", "mlp_norm")


class ForwardContext:
    """What the blocks of one forward share, computed on first use from that forward's geometry."""

    def __init__(self, shared: PointPEFTShared, geom: PointGeometry) -> None:
        self.shared, self.geom = shared, geom
        self._source: torch.Tensor | None = None
        self._groupings: dict[bool, TokenGrouping] = {}

    def prompt_source(self) -> torch.Tensor | None:
        """``C [b, K+2, d]`` from the P2-Bank, or None without the bank."""
        if self.shared.bank is not None and self._source is None:
            self._source = self.shared.bank(self.geom.points)
        return self._source

    def grouping(self, prompted: bool) -> TokenGrouping:
        """The grouping of ``[prompt coordinates; centres]`` (prompted blocks) or of the centres alone."""
        if prompted not in self._groupings:
            cfg, centers = self.shared.config, self.geom.centers                  # [b, g, 3]
            coords = centers
            if prompted:
                pc = self.shared.prompt_coords.to(centers.dtype)
                coords = torch.cat([pc[None].expand(centers.shape[0], -1, -1), centers], dim=1)  # [b, T+g, 3]
            num_sub = max(1, int(coords.shape[1] * cfg.sub_center_ratio))
            k = max(1, int(self.geom.group_size * cfg.sub_group_ratio))
            self._groupings[prompted] = group_tokens(coords, num_sub, k, cfg.interp_eps)
        return self._groupings[prompted]


class PointPEFTShared(nn.Module):
    """Model-level parts: prompt coordinates, the shared local attention, the P2-Bank."""

    def __init__(self, config: PointPEFT, dim: int, bank: PointPriorBank | None) -> None:
        super().__init__()
        object.__setattr__(self, "config", config)
        self.prompt_coords = None
        if config.use_prompt and config.use_adapter:  # coordinates only matter to the adapter's grouping
            self.prompt_coords = nn.Parameter(torch.empty(config.num_prompt_tokens, 3))  # [T, 3]
            nn.init.trunc_normal_(self.prompt_coords, std=config.prompt_init_std)
        self.local_attn = None
        if config.use_adapter:  # attn1 + norm3 of the reference, shared by every block
            self.local_attn = LocalAttention(dim, config.local_heads, config.local_head_dim)
        self.bank = bank
        self._ctx: ForwardContext | None = None

    def context(self, geom: PointGeometry | None) -> ForwardContext:
        if geom is None:
            raise UnsupportedError("Point-PEFT needs the PointGeometry the transformer hands to each block")
        if self._ctx is None or self._ctx.geom is not geom:
            self._ctx = ForwardContext(self, geom)
        return self._ctx

    def release(self) -> None:
        self._ctx = None

    def adapter_params(self) -> list[str]:
        return [n for n, _ in self.named_parameters()]


class PointPEFTLayer(nn.Module):
    """What Point-PEFT adds to one block: its prompts (l < L) and its GA-Adapter."""

    def __init__(self, prompt: PromptTokens | None, geo: GeoAdapter | None) -> None:
        super().__init__()
        self.prompt, self.geo = prompt, geo

    @property
    def num_prompts(self) -> int:
        return 0 if self.prompt is None else int(self.prompt.embeddings.shape[0])

    def adapter_params(self) -> list[str]:
        return [n for n, _ in self.named_parameters()]


def _block_args(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """``Block.forward(x, pos, geom)`` arguments, positional or keyword."""
    names = ("x", "pos", "geom")
    vals = list(args) + [kwargs.get(n) for n in names[len(args):]]
    return vals[0], vals[1], vals[2]


def _insert_prompts(layer: PointPEFTLayer, shared: PointPEFTShared):
    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        x, pos, geom = _block_args(args, kwargs)
        b, _, d = x.shape
        prompts = layer.prompt(shared.context(geom).prompt_source(), b).to(x.dtype)  # [b, T, d]
        x = torch.cat([x[:, :1], prompts, x[:, 1:]], dim=1)                           # [b, 1+T+g, d]
        pos = torch.cat([pos[:, :1], pos.new_zeros(b, prompts.shape[1], d), pos[:, 1:]], dim=1)
        rest = {k: v for k, v in kwargs.items() if k not in ("x", "pos", "geom")}
        return (x, pos, geom), rest

    return hook


def _after_block(layer: PointPEFTLayer, shared: PointPEFTShared, last: bool):
    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: torch.Tensor) -> Any:
        n_prompts = layer.num_prompts
        if layer.geo is not None:
            _, _, geom = _block_args(args, kwargs)
            grouping = shared.context(geom).grouping(prompted=n_prompts > 0)
            tokens = layer.geo.propagate(out[:, 1:], grouping, shared.local_attn)        # [b, T+g, d]
            out = layer.geo.token_adapter(torch.cat([out[:, :1], tokens], dim=1))       # [b, t, d]
        if n_prompts:
            out = torch.cat([out[:, :1], out[:, 1 + n_prompts:]], dim=1)                # [b, 1+g, d]
        if last:
            shared.release()
        return out

    return hook


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
    return PointPriorBank(features, encoder, config.top_k)


def _base_params(model: nn.Module, spec: BackboneSpec, config: PointPEFT) -> list[nn.Parameter]:
    """The backbone parameters the reference trains besides the new modules (the head is core's)."""
    out: list[nn.Parameter] = []
    if config.train_block_biases:
        for role in BIAS_ROLES:
            if spec.has_role(role):
                for path in spec.role_paths(model, role):
                    bias = getattr(model.get_submodule(path), "bias", None)
                    if isinstance(bias, nn.Parameter):
                        out.append(bias)
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
    dim = int(model.get_submodule(spec.model_role("final_norm")).normalized_shape[0])
    shared = PointPEFTShared(config, dim, _bank_for(model, config, dim))
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
            pre = _insert_prompts(layer, shared)
            record.on_undo(blk.register_forward_pre_hook(pre, with_kwargs=True).remove)
        if geo is not None:
            mlp = blk.get_submodule(spec.stack().roles["mlp"])
            record.on_undo(mlp.register_forward_hook(lambda m, a, y, g=geo: g.adapt_mlp(y)).remove)
        if prompt is not None or geo is not None:
            hook = _after_block(layer, shared, last=i == last_hooked)
            record.on_undo(blk.register_forward_hook(hook, with_kwargs=True).remove)
    if hasattr(model, "freeze_bn_stats"):
        before = model.freeze_bn_stats
        model.freeze_bn_stats = config.freeze_encoder_bn
        record.on_undo(lambda: setattr(model, "freeze_bn_stats", before))
    record.on_undo(shared.release)
    params = adapter_parameters([shared, *layers]) + _base_params(model, spec, config)
    buffers = [b for m in (shared, *layers) for b in m.buffers()]
    return Applied("point_peft", config, params=lambda: params, undo=record.undo, buffers=lambda: buffers)
