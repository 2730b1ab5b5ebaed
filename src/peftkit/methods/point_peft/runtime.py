"""Point-PEFT's runtime modules and block hooks (Tang et al., AAAI 2024, arXiv 2310.03059).

Each block gets a ``point_peft`` child (:class:`PointPEFTLayer`) and up to three hooks:

    pre-hook  (blocks l < L):  x = [cls; P_l; patches],  pos = [cls_pos; 0; pos]   (prompts carry no pos)
    mlp hook  (every block):   y = MLP(LN2(h))  ->  y + 0.7 * delta(y)              (parallel adapter)
    post-hook (every block):   [cls; T] -> GA-Adapter -> Adp_16 -> drop P_l         (deep prompts)

The model gets one :class:`PointPEFTShared` with what the blocks share: the prompts' learnable coordinates,
the local attention and the P2-Bank (with its frozen query encoder). Per-forward data (the retrieved prompt
source C, the token groupings) is computed once from the block's ``PointGeometry`` (:class:`ForwardContext`)
and reused by all blocks. Every module takes its sizes and constants as explicit arguments.

Shapes: b batch, t tokens (1 + g, or 1 + T + g in prompted blocks), T prompt tokens, g groups, d dim.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from peftkit.core.errors import UnsupportedError
from peftkit.methods.point_peft.geo_adapter import GeoAdapter, TokenGrouping, group_tokens
from peftkit.methods.point_peft.layers import LocalAttention
from peftkit.methods.point_peft.prompt import PointPriorBank, PromptTokens
from peftkit.ops.geometry import PointGeometry


class ForwardContext:
    """What the blocks of one forward share, computed on first use from that forward's geometry."""

    def __init__(self, shared: PointPEFTShared, geom: PointGeometry) -> None:
        self.shared, self.geom = shared, geom
        self._source: torch.Tensor | None = None
        self._groupings: dict[bool, TokenGrouping] = {}

    def prompt_source(self) -> torch.Tensor | None:
        """``C [b, K+2, d]`` from the P2-Bank, or None without the bank. With ``cache_query`` in training,
        the query features come from the bank rows of the batch's ``example_index`` (no encoder forward)."""
        bank = self.shared.bank
        if bank is not None and self._source is None:
            if self.shared.cache_query and self.shared.training:
                if self.geom.example_index is None:
                    raise UnsupportedError(
                        "Point-PEFT cache_query needs the training clouds' indices in the batch: set "
                        "data.example_index=true"
                    )
                self._source = bank.from_index(self.geom.example_index)
            else:
                self._source = bank(self.geom.points)
        return self._source

    def grouping(self, prompted: bool) -> TokenGrouping:
        """The grouping of ``[prompt coordinates; centres]`` (prompted blocks) or of the centres alone."""
        if prompted not in self._groupings:
            shared, centers = self.shared, self.geom.centers                       # [b, g, 3]
            coords = centers
            if prompted:
                pc = self.shared.prompt_coords.to(centers.dtype)
                coords = torch.cat([pc[None].expand(centers.shape[0], -1, -1), centers], dim=1)  # [b, T+g, 3]
            num_sub = max(1, int(coords.shape[1] * shared.sub_center_ratio))
            k = max(1, int(self.geom.group_size * shared.sub_group_ratio))
            self._groupings[prompted] = group_tokens(coords, num_sub, k, shared.interp_eps)
        return self._groupings[prompted]


class PointPEFTShared(nn.Module):
    """Model-level parts: prompt coordinates, the shared local attention, the P2-Bank.

    Args:
        dim: token width d.
        bank: the P2-Bank with its frozen query encoder, or None.
        prompt_coords: number of prompt tokens T that get learnable coordinates (0: none; only the
            adapter's grouping reads them), initialised trunc-normal with ``prompt_init_std``.
        local_attn: ``(heads, head_dim)`` of the shared local attention, or None without the adapter.
        sub_center_ratio: share of the token centres FPS keeps as sub-centres.
        sub_group_ratio: share of the patch size kNN takes as neighbours per sub-centre.
        interp_eps: epsilon of the inverse-squared-distance interpolation weights.
        cache_query: in training, read the query features from the bank by example index.
    """

    def __init__(
        self,
        dim: int,
        bank: PointPriorBank | None,
        prompt_coords: int,
        prompt_init_std: float,
        local_attn: tuple[int, int] | None,
        sub_center_ratio: float,
        sub_group_ratio: float,
        interp_eps: float,
        cache_query: bool = False,
    ) -> None:
        super().__init__()
        self.prompt_coords = None
        if prompt_coords:
            self.prompt_coords = nn.Parameter(torch.empty(prompt_coords, 3))  # [T, 3]
            nn.init.trunc_normal_(self.prompt_coords, std=prompt_init_std)
        self.local_attn = None
        if local_attn is not None:  # attn1 + norm3 of the reference, shared by every block
            self.local_attn = LocalAttention(dim, *local_attn)
        self.bank = bank
        self.sub_center_ratio, self.sub_group_ratio = sub_center_ratio, sub_group_ratio
        self.interp_eps, self.cache_query = interp_eps, cache_query
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


def block_args(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """``Block.forward(x, pos, geom)`` arguments, positional or keyword."""
    names = ("x", "pos", "geom")
    vals = list(args) + [kwargs.get(n) for n in names[len(args):]]
    return vals[0], vals[1], vals[2]


def insert_prompts_hook(layer: PointPEFTLayer, shared: PointPEFTShared) -> Callable[..., Any]:
    """Forward pre-hook of a prompted block: ``[cls; patches] -> [cls; P_l; patches]`` (pos 0 for P_l)."""
    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        x, pos, geom = block_args(args, kwargs)
        b, _, d = x.shape
        prompts = layer.prompt(shared.context(geom).prompt_source(), b).to(x.dtype)  # [b, T, d]
        x = torch.cat([x[:, :1], prompts, x[:, 1:]], dim=1)                           # [b, 1+T+g, d]
        pos = torch.cat([pos[:, :1], pos.new_zeros(b, prompts.shape[1], d), pos[:, 1:]], dim=1)
        rest = {k: v for k, v in kwargs.items() if k not in ("x", "pos", "geom")}
        return (x, pos, geom), rest

    return hook


def after_block_hook(
    layer: PointPEFTLayer, shared: PointPEFTShared, last: bool, checkpoint_adapter: bool = False
) -> Callable[..., Any]:
    """Forward hook of a block: GA-Adapter and ``Adp_16`` on the tokens, then drop the prompts.

    ``checkpoint_adapter``: with gradients on, recompute the GA-Adapter in backward instead of keeping its
    neighbourhood activations (the grouping is computed once, outside the recomputed part)."""
    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: torch.Tensor) -> Any:
        n_prompts = layer.num_prompts
        if layer.geo is not None:
            _, _, geom = block_args(args, kwargs)
            grouping = shared.context(geom).grouping(prompted=n_prompts > 0)
            if checkpoint_adapter and torch.is_grad_enabled():
                out = layer.geo.checkpointed(out, grouping, shared.local_attn)            # [b, t, d]
            else:
                tokens = layer.geo.propagate(out[:, 1:], grouping, shared.local_attn)    # [b, T+g, d]
                out = layer.geo.token_adapter(torch.cat([out[:, :1], tokens], dim=1))   # [b, t, d]
        if n_prompts:
            out = torch.cat([out[:, :1], out[:, 1 + n_prompts:]], dim=1)                # [b, 1+g, d]
        if last:
            shared.release()
        return out

    return hook
