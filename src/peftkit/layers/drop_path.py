"""Stochastic depth (Huang et al. 2016, arXiv 1603.09382) per sample, as timm's ``DropPath``:

    DropPath(x) = x * m / (1 - p),   m ~ Bernoulli(1 - p) per sample (one draw for all other dims)

in training; the identity in eval mode or when ``p == 0``. Shapes: ``[b, ...] -> [b, ...]``.
"""

from __future__ import annotations

import torch
from torch import nn


class DropPath(nn.Module):
    """Drop a residual branch per sample with probability ``p`` (scaled by ``1 / (1 - p)``)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"
