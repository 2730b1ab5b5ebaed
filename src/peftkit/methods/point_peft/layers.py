"""Small layers Point-PEFT adds (Tang et al., AAAI 2024, arXiv 2310.03059): the bottleneck adapter (the
shared ``peftkit.layers.Bottleneck`` with the reference's activation and init) and the local self-attention
the Geometry-aware Adapter runs inside each neighbourhood.

Bottleneck adapter (reference ``AdapterSuper``; QuickGELU(x) = x * sigmoid(1.702 x)):

    Adp_r(z)  = z + delta(z),    delta(z) = W_up drop(QuickGELU(W_down z + b_d)) + b_u
    residual=False returns delta(z) only (the reference ``AdapterSuper_f`` on the MLP output)

Init as the reference: xavier-uniform weights, biases N(0, 1e-6).

Local attention (reference ``attn1`` + ``norm3``, shared by every block): multi-head attention whose inner
width ``heads * head_dim`` (6 x 3 = 18) is far below ``d``; logits scaled by ``(heads * head_dim)^-1/2``
as the reference does.

Shapes: b batch, t tokens, d dim, r bottleneck, h heads, e head dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from peftkit.layers.bottleneck import Bottleneck

BIAS_INIT_STD = 1e-6  # reference AdapterSuper: nn.init.normal_(bias, std=1e-6)


def bottleneck_adapter(dim: int, bottleneck: int, dropout: float = 0.0, residual: bool = True) -> Bottleneck:
    """The reference ``AdapterSuper`` (``residual=False``: ``AdapterSuper_f``) as the shared bottleneck:
    QuickGELU, xavier-uniform weights, biases N(0, 1e-6): ``[..., d] -> [..., d]``."""
    return Bottleneck(
        dim, bottleneck, activation="quick_gelu", init="xavier", bias_std=BIAS_INIT_STD, dropout=dropout,
        residual=residual,
    )


class LocalAttention(nn.Module):
    """Pre-LN multi-head self-attention over short sequences (one neighbourhood each): ``[b, t, d]``.

    Returns the attention branch only (no residual); the caller adds it.
    """

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.proj = nn.Linear(inner, dim)
        self.scale = inner ** -0.5  # the reference scales by the full inner width, not the head width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, t, 3, self.heads, self.head_dim)  # [b, t, 3, h, e]
        qkv = qkv.permute(2, 0, 3, 1, 4)                                            # [3, b, h, t, e]
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], scale=self.scale)  # [b, h, t, e]
        return self.proj(y.transpose(1, 2).reshape(b, t, self.heads * self.head_dim))  # [b, t, d]

    def adapter_params(self) -> list[str]:
        return [n for n, _ in self.named_parameters()]
