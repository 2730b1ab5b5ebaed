"""Geometry-aware Adapter (GA-Adapter) of Point-PEFT (Tang et al., AAAI 2024, arXiv 2310.03059).

After every block, with tokens ``T`` (prompts and patches; cls kept apart) at coordinates ``c`` (the prompts'
learnable coordinates, then the patch centres):

    S    = FPS(c, m)          m = sub_center_ratio * #tokens sub-centres               sub_idx [b, m]
    N(s) = kNN(c, s, k)       k = sub_group_ratio * group_size neighbours               nbr_idx [b, m, k]
    X_s  = T[N(s)];  X_s += DropPath(A(LN(X_s)))       (local attention A, shared by all blocks)
    u_s  = GELU(BN_l(max_j X_s[j])) + center_coef * T[s]                               u       [b, m, d]
    T_i += propagate_coef * sum_s w_is u_s,  w_is = (||c_i - s||^2 + eps)^-1 / sum_s'   w       [b, n, m]
    x    = Adp_r([cls; T])    (residual bottleneck adapter, r = 16)

and, inside the block, a parallel adapter on the MLP output: ``x = x + y + mlp_adapter_scale * delta(y)``.
The interpolation runs over all ``m`` sub-centres, as the reference code does (not PointNet++'s 3 nearest).
The grouping (FPS, kNN, weights) depends only on the coordinates, so it is computed once per forward and
token layout and shared by the blocks.

Shapes: b batch, n tokens grouped (prompts + patches), m sub-centres, k neighbours, d dim.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from peftkit.core.errors import DataError
from peftkit.layers.drop_path import DropPath
from peftkit.methods.point_peft.layers import LocalAttention, bottleneck_adapter
from peftkit.ops.points import farthest_point_sample, gather_points, knn


@dataclass
class TokenGrouping:
    """Sub-centres, their neighbourhoods and the interpolation weights of one token layout."""

    sub_idx: torch.Tensor   # [b, m] indices of the sub-centre tokens
    nbr_idx: torch.Tensor   # [b, m, k] indices of each sub-centre's neighbour tokens
    weights: torch.Tensor   # [b, n, m] inverse-squared-distance weights, rows sum to 1


def inverse_distance_weights(coords: torch.Tensor, sub: torch.Tensor, eps: float) -> torch.Tensor:
    """``w_is = (||c_i - s||^2 + eps)^-1`` normalised over s: ``[b, n, 3], [b, m, 3] -> [b, n, m]``."""
    d2 = (coords[:, :, None, :] - sub[:, None, :, :]).square().sum(-1)  # [b, n, m], exact (no expansion)
    w = 1.0 / (d2 + eps)
    return w / w.sum(dim=-1, keepdim=True)


def group_tokens(coords: torch.Tensor, num_sub: int, k: int, eps: float) -> TokenGrouping:
    """FPS sub-centres, their kNN token neighbourhoods and the interpolation weights of ``coords [b, n, 3]``.

    Raises:
        DataError: fewer tokens than sub-centres or neighbours.
    """
    n = coords.shape[1]
    if not 1 <= num_sub <= n or not 1 <= k <= n:
        raise DataError(
            f"the geometry-aware adapter needs {max(num_sub, k)} tokens to group ({num_sub} sub-centres of "
            f"{k} neighbours) but has {n}; use more patches (num_groups) or lower sub_center_ratio / "
            "sub_group_ratio"
        )
    sub_idx = farthest_point_sample(coords, num_sub)                    # [b, m]
    sub = gather_points(coords, sub_idx)                                # [b, m, 3], differentiable in coords
    _, nbr_idx = knn(sub.detach(), coords.detach(), k)                  # [b, m, k]
    return TokenGrouping(sub_idx, nbr_idx, inverse_distance_weights(coords, sub, eps))


class GeoAdapter(nn.Module):
    """The per-block part of the GA-Adapter: the out-transform norm, the MLP adapter and the token adapter."""

    def __init__(self, dim: int, adapter_dim: int, dropout: float, mlp_scale: float, center_coef: float,
                 propagate_coef: float, drop_path: float) -> None:
        super().__init__()
        self.out_norm = nn.BatchNorm1d(dim)                             # BN_l of the pooled neighbourhoods
        self.mlp_adapter = bottleneck_adapter(dim, adapter_dim, dropout, residual=False)
        self.token_adapter = bottleneck_adapter(dim, adapter_dim, dropout, residual=True)
        self.drop_path = DropPath(drop_path)
        self.mlp_scale, self.center_coef, self.propagate_coef = mlp_scale, center_coef, propagate_coef

    def adapt_mlp(self, y: torch.Tensor) -> torch.Tensor:
        """The block's MLP output plus the scaled parallel adapter: ``y + s * delta(y)``."""
        return y + self.mlp_scale * self.mlp_adapter(y)

    def propagate(
        self, tokens: torch.Tensor, grouping: TokenGrouping, local_attn: LocalAttention,
        update_stats: bool = True,
    ) -> torch.Tensor:
        """Local attention in each neighbourhood, pooled per sub-centre and propagated back: ``[b, n, d]``.

        ``update_stats=False`` normalises with the batch statistics as training does but leaves BN_l's
        running statistics alone (a recomputation in backward must not update them a second time).
        """
        b, n, d = tokens.shape
        m, k = grouping.nbr_idx.shape[1:]
        x = gather_points(tokens, grouping.nbr_idx).reshape(b * m, k, d)  # [b*m, k, d]
        x = x + self.drop_path(local_attn(x))
        pooled = x.amax(dim=1)                                             # [b*m, d]
        u = F.gelu(self._norm(pooled, update_stats)).reshape(b, m, d)     # [b, m, d]
        u = u + self.center_coef * gather_points(tokens, grouping.sub_idx)
        return tokens + self.propagate_coef * torch.bmm(grouping.weights.to(u.dtype), u)  # [b, n, d]

    def _norm(self, pooled: torch.Tensor, update_stats: bool) -> torch.Tensor:
        bn = self.out_norm
        if update_stats or not bn.training:
            return bn(pooled)
        # batch statistics as in training; momentum 0 leaves the running statistics as they are
        return F.batch_norm(pooled, bn.running_mean, bn.running_var, bn.weight, bn.bias, True, 0.0, bn.eps)

    def checkpointed(
        self, cls_tokens: torch.Tensor, grouping: TokenGrouping, local_attn: LocalAttention
    ) -> torch.Tensor:
        """``token_adapter([cls; propagate(T)])`` recomputed in backward (``torch.utils.checkpoint``): only
        the block output ``[b, t, d]`` and the grouping are kept, not the ``m * k`` neighbourhood activations
        of the local attention. Same values and gradients (dropout and DropPath replay their RNG state)."""
        calls = [0]

        def run(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
            calls[0] += 1
            g = TokenGrouping(grouping.sub_idx, grouping.nbr_idx, weights)
            tokens = self.propagate(x[:, 1:], g, local_attn, update_stats=calls[0] == 1)
            return self.token_adapter(torch.cat([x[:, :1], tokens], dim=1))

        return checkpoint(run, cls_tokens, grouping.weights, use_reentrant=False)

    def adapter_params(self) -> list[str]:
        return [n for n, _ in self.named_parameters()]

    def extra_repr(self) -> str:
        return f"mlp_scale={self.mlp_scale}, center={self.center_coef}, propagate={self.propagate_coef}"
