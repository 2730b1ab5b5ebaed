"""Layers of Point-MAE's point transformer: grouper, mini-PointNet patch embedding, attention, MLP, head.

Pang et al., "Masked Autoencoders for Point Cloud Self-supervised Learning", ECCV 2022, arXiv 2203.06604.

See :mod:`peftkit.backbones.point.model` for how they fit together.

Shapes: b batch, n points, g groups, k neighbours, t = 1 + g tokens, d dim.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from peftkit.ops.geometry import PointGeometry
from peftkit.ops.points import group_points


class GroupDivider(nn.Module):
    """FPS centres + kNN neighbourhoods; no parameters."""

    def __init__(self, num_groups: int, group_size: int, fps_start: int | str = 0) -> None:
        super().__init__()
        self.num_groups, self.group_size, self.fps_start = num_groups, group_size, fps_start

    def forward(self, points: torch.Tensor) -> PointGeometry:
        return group_points(points, self.num_groups, self.group_size, start=self.fps_start)

    def extra_repr(self) -> str:
        return f"num_groups={self.num_groups}, group_size={self.group_size}"


class PatchEmbed(nn.Module):
    """Mini-PointNet over each patch: ``[b, g, k, 3] -> [b, g, d]``.

    ``first_conv``: Conv 3->h1, BN, ReLU, Conv h1->h2; max over the patch; concatenate the max (global) with
    each point's feature; ``second_conv``: Conv 2*h2->h3, BN, ReLU, Conv h3->d; max over the patch.
    Paper widths ``hidden=(128, 256, 512)`` (Point-MAE ``Encoder``).
    """

    def __init__(self, dim: int, hidden: Sequence[int] = (128, 256, 512)) -> None:
        super().__init__()
        h1, h2, h3 = hidden
        self.first_conv = nn.Sequential(
            nn.Conv1d(3, h1, 1), nn.BatchNorm1d(h1), nn.ReLU(inplace=True), nn.Conv1d(h1, h2, 1)
        )
        self.second_conv = nn.Sequential(
            nn.Conv1d(2 * h2, h3, 1), nn.BatchNorm1d(h3), nn.ReLU(inplace=True), nn.Conv1d(h3, dim, 1)
        )
        self.dim = dim

    def forward(self, neighborhood: torch.Tensor) -> torch.Tensor:
        b, g, k, _ = neighborhood.shape
        x = neighborhood.reshape(b * g, k, 3).transpose(1, 2)  # [b*g, 3, k]
        f = self.first_conv(x)  # [b*g, h2, k]
        glob = f.amax(dim=2, keepdim=True)  # [b*g, h2, 1]
        f = torch.cat([glob.expand(-1, -1, k), f], dim=1)  # [b*g, 2*h2, k]
        f = self.second_conv(f)  # [b*g, d, k]
        return f.amax(dim=2).reshape(b, g, self.dim)  # [b, g, d]


def pos_mlp(dim: int, hidden: int = 128) -> nn.Sequential:
    """Positional embedding of a centre: Linear 3->hidden, GELU, Linear hidden->dim (paper hidden = 128)."""
    return nn.Sequential(nn.Linear(3, hidden), nn.GELU(), nn.Linear(hidden, dim))


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection: ``[b, t, d] -> [b, t, d]``."""

    def __init__(
        self, dim: int, heads: int, qkv_bias: bool = False, attn_drop: float = 0.0, proj_drop: float = 0.0
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads, self.attn_drop = heads, attn_drop
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        qkv = (
            self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        )  # [3, b, h, t, dh]
        p = self.attn_drop if self.training else 0.0
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], dropout_p=p)  # [b, h, t, dh]
        y = y.transpose(1, 2).reshape(b, t, d)  # [b, t, d]
        return self.proj_drop(self.proj(y))


class Mlp(nn.Module):
    """``fc2(act(fc1(x)))``; ``act`` is a module so methods (DEFT) can observe or wrap it."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class HeadBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d that uses its running statistics for a training batch of one (instead of raising)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] == 1:
            return F.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        return super().forward(x)


def cls_head(
    dim: int, num_classes: int, hidden: Sequence[int] = (256, 256), dropout: float = 0.5
) -> nn.Sequential:
    """Point-MAE head on ``[x_cls ; max x]`` (2d): (Linear, BN, ReLU, Dropout) per hidden width, Linear."""
    layers: list[nn.Module] = []
    width = 2 * dim
    for h in hidden:
        layers += [nn.Linear(width, h), HeadBatchNorm1d(h), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)
