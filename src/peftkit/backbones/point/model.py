"""Point-MAE's point transformer (classification model), pure PyTorch.

Pang et al., "Masked Autoencoders for Point Cloud Self-supervised Learning", ECCV 2022, arXiv 2203.06604.

    centres c, patches N = FPS + kNN(points)             (group_divider -> PointGeometry)
    T_i = PointNet(N_i)                                    (patch_embed, mini-PointNet with BatchNorm)
    P_i = MLP(c_i)                                         (pos_embed: 3 -> 128 -> d, GELU)
    x = [cls ; T],  pos = [cls_pos ; P]
    per block:  h = x + pos;  h = h + Attn(LN1(h));  x = h + MLP(LN2(h))   (pos is re-added every block)
    f = [x_cls ; max_i x_i]  ->  Linear 2d->256, BN, ReLU, Dropout .5, 256->256, BN, ReLU, Dropout .5, ->C

Frozen BatchNorm: with ``freeze_bn_stats=True`` (default) ``train()`` leaves every BatchNorm whose
parameters are all frozen in eval mode, so a frozen patch encoder keeps its pretrained running statistics
while a PEFT method trains; the reference code lets them drift (``freeze_bn_stats=False`` does that).

Shapes: b batch, n points, g groups, k neighbours, t = 1 + g tokens, d dim.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from peftkit.backbones.point.layers import (
    Attention,
    GroupDivider,
    Mlp,
    PatchEmbed,
    cls_head,
    pos_mlp,
)
from peftkit.layers.drop_path import DropPath
from peftkit.ops.geometry import PointGeometry
from peftkit.ops.points import check_points


class Block(nn.Module):
    """Pre-LN transformer block that re-adds the positional embedding: ``(x, pos, geom) -> x``.

    ``geom`` is unused by the plain block; methods that wrap blocks (Point-PEFT's geometry-aware adapter)
    read the patch geometry from it.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.drop_path = DropPath(drop_path)
        # activation checkpointing: keep only the block's input for backward and recompute attention and MLP
        # (and what hooks on its sub-modules add) there; forward pre/post hooks of the block stay outside.
        # checkpoint_attn: the same for the attention branch only (LN1, attention, its DropPath).
        self.checkpoint = False
        self.checkpoint_attn = False

    def forward(self, x: torch.Tensor, pos: torch.Tensor, geom: PointGeometry | None = None) -> torch.Tensor:
        if self.checkpoint and torch.is_grad_enabled():
            return checkpoint(self._body, x, pos, use_reentrant=False)  # recompute in backward, same RNG
        return self._body(x, pos)

    def _body(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        h = x + pos
        if self.checkpoint_attn and not self.checkpoint and torch.is_grad_enabled():
            h = h + checkpoint(self._attn_branch, h, use_reentrant=False)
        else:
            h = h + self._attn_branch(h)
        return h + self.drop_path(self.mlp(self.norm2(h)))

    def _attn_branch(self, h: torch.Tensor) -> torch.Tensor:
        return self.drop_path(self.attn(self.norm1(h)))


def init_weights(module: nn.Module) -> None:
    """Reference init: trunc_normal(std .02) for Linear and Conv1d weights, zero biases, LayerNorm (1, 0)."""
    if isinstance(module, (nn.Linear, nn.Conv1d)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class PointTransformer(nn.Module):
    """Point-MAE classification transformer.

    Args:
        num_points: points per cloud the data pipeline should feed (recorded; any ``n >= num_groups`` works).
        num_groups: patches per cloud (paper: 64 for 1024 points, 128 for 2048).
        group_size: points per patch (paper: 32).
        dim: token width (paper: 384).
        depth: transformer blocks (paper: 12).
        heads: attention heads (paper: 6).
        mlp_ratio: FFN width / dim (paper: 4).
        drop_path: stochastic-depth rate of the last block, linear from 0 (paper fine-tuning: 0.1).
        num_classes: classes of the head.
        cls_head_dims: hidden widths of the head (paper: 256, 256).
        head_dropout: dropout in the head (paper: 0.5).
        embed_hidden: widths of the mini-PointNet (paper: 128, 256, 512).
        pos_hidden: hidden width of the positional MLP (paper: 128).
        qkv_bias: bias on the fused qkv projection (paper config: False).
        fps_start: first FPS index (the reference CUDA kernel uses 0) or ``"random"``.
        freeze_bn_stats: keep BatchNorms with all parameters frozen in eval mode during ``train()``.
    """

    def __init__(
        self,
        num_points: int = 1024,
        num_groups: int = 64,
        group_size: int = 32,
        dim: int = 384,
        depth: int = 12,
        heads: int = 6,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.1,
        num_classes: int = 40,
        cls_head_dims: Sequence[int] = (256, 256),
        head_dropout: float = 0.5,
        embed_hidden: Sequence[int] = (128, 256, 512),
        pos_hidden: int = 128,
        qkv_bias: bool = False,
        fps_start: int | str = 0,
        freeze_bn_stats: bool = True,
    ) -> None:
        super().__init__()
        self.num_points, self.num_classes, self.dim = num_points, num_classes, dim
        self.freeze_bn_stats = freeze_bn_stats
        self.group_divider = GroupDivider(num_groups, group_size, fps_start)
        self.patch_embed = PatchEmbed(dim, embed_hidden)
        self.pos_embed = pos_mlp(dim, pos_hidden)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.cls_pos = nn.Parameter(torch.zeros(1, 1, dim))
        rates = [drop_path * i / max(1, depth - 1) for i in range(depth)]  # linear 0 -> drop_path
        self.blocks = nn.ModuleList(
            Block(dim, heads, mlp_ratio, qkv_bias=qkv_bias, drop_path=r) for r in rates
        )
        self.norm = nn.LayerNorm(dim)
        self.cls_head = cls_head(dim, num_classes, cls_head_dims, head_dropout)
        self.apply(init_weights)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.cls_pos, std=0.02)

    @property
    def num_groups(self) -> int:
        return self.group_divider.num_groups

    @property
    def group_size(self) -> int:
        return self.group_divider.group_size

    def embed(
        self, points: torch.Tensor, example_index: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, PointGeometry]:
        """Tokens and positions before the blocks: ``x, pos`` ``[b, t, d]`` and the geometry (which carries
        ``example_index [b]``, the clouds' training-set indices, when given)."""
        check_points(points, min_points=max(self.num_groups, self.group_size))
        geom = self.group_divider(points)
        geom.example_index = example_index
        tokens = self.patch_embed(geom.neighborhood)  # [b, g, d]
        pos = self.pos_embed(geom.centers)  # [b, g, d]
        b = points.shape[0]
        x = torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1)  # [b, t, d]
        pos = torch.cat([self.cls_pos.expand(b, -1, -1), pos], dim=1)  # [b, t, d]
        return x, pos, geom

    def forward_features(
        self, points: torch.Tensor, example_index: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Tokens after the final LayerNorm, cls first: ``[b, n, 3] -> [b, t, d]``."""
        x, pos, geom = self.embed(points, example_index)
        for blk in self.blocks:
            x = blk(x, pos, geom)
        return self.norm(x)

    def pooled(self, tokens: torch.Tensor) -> torch.Tensor:
        """The head's input ``[x_cls ; max_i x_i]``: ``[b, t, d] -> [b, 2d]``."""
        return torch.cat([tokens[:, 0], tokens[:, 1:].amax(dim=1)], dim=-1)

    def forward_head(self, tokens: torch.Tensor) -> torch.Tensor:
        """Class logits from the final tokens: ``[b, t, d] -> [b, num_classes]``."""
        return self.cls_head(self.pooled(tokens))

    def forward(self, points: torch.Tensor, example_index: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits ``[b, num_classes]`` of clouds ``[b, n, 3]`` (``example_index [b]``: optional
        training-set indices of the clouds, passed on to the blocks in the geometry)."""
        return self.forward_head(self.forward_features(points, example_index))

    def no_weight_decay(self) -> set[str]:
        """Parameter names excluded from weight decay (besides biases and norms), as in the reference code."""
        return {"cls_token", "cls_pos"}

    def train(self, mode: bool = True) -> PointTransformer:
        super().train(mode)
        if mode and self.freeze_bn_stats:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    params = list(m.parameters(recurse=False))
                    if params and not any(p.requires_grad for p in params):
                        m.eval()
        return self
