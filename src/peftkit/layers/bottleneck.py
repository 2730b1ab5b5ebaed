"""The one bottleneck module every adapter-style method builds on, and the one activation table.

    delta(h) = s * W_up drop(f(W_down h + b_down)) + s * b_up            (..., d_in) -> (..., d_out)
    Bottleneck(h) = h + delta(h)   if residual   else   delta(h)

W_down: ``down`` (d_in -> m), f: ``act`` (from :data:`ACTIVATIONS`), drop: dropout with probability p,
W_up: ``up`` (m -> d_out), s: ``scale``. Users:
    Houlsby et al. 2019 (arXiv 1902.00751), Pfeiffer et al. 2021 (arXiv 2005.00247) and He et al. 2022
        (arXiv 2110.04366): ``init="near_identity"``, W_down ~ N(0, std^2), W_up = 0 and both biases 0,
        so the branch is exactly zero at step 0 (Houlsby's code uses std 1e-3).
    MEFT (Liao et al. 2023, arXiv 2306.00477): ``init="normal"``, both W ~ N(0, std^2), biases 0
        (std 0.02), so the branch is near zero at step 0.
    Point-PEFT (Tang et al. 2024, arXiv 2310.03059): ``init="xavier"``, both W xavier-uniform, biases
        N(0, bias_std^2) (bias_std 1e-6), QuickGELU, ``residual=True``.

Shapes: ... any leading dims, d_in input width, m bottleneck width, d_out output width.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from peftkit.core.errors import ConfigError


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``: the CLIP approximation of GELU (Point-PEFT's reference adapters)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


# name -> module factory; HF config ``hidden_act`` names map to the same modules.
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "gelu_new": lambda: nn.GELU(approximate="tanh"),
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "gelu_pytorch_tanh": lambda: nn.GELU(approximate="tanh"),
    "quick_gelu": QuickGELU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
}

INITS = ("near_identity", "normal", "xavier")


def activation(name: str, who: str = "activation") -> nn.Module:
    """A fresh activation module by name.

    Raises:
        ConfigError: an unknown name (the message names ``who`` and lists the known names).
    """
    if name not in ACTIVATIONS:
        raise ConfigError(f"{who} '{name}' is unknown; choose one of: {', '.join(sorted(ACTIVATIONS))}")
    return ACTIVATIONS[name]()


class Bottleneck(nn.Module):
    """``[h +] s * up(drop(act(down(h))))``: (..., d_in) -> (..., d_out).

    Args:
        d_in: input width.
        m: bottleneck width.
        d_out: output width (default ``d_in``; ``residual`` needs ``d_out == d_in``).
        activation: a name in :data:`ACTIVATIONS`.
        init: ``near_identity`` (W_down ~ N(0, init_std^2), rest 0), ``normal`` (both W ~ N(0, init_std^2),
            biases 0) or ``xavier`` (both W xavier-uniform, biases N(0, bias_std^2)).
        init_std: std of the normal weight init.
        bias_std: std of the bias init of ``xavier``.
        dropout: p of the dropout between the activation and the up projection.
        scale: s, the factor on the branch.
        residual: return ``h + delta(h)`` instead of ``delta(h)``.
        dtype: dtype of the projections.
        device: device of the projections.
    """

    def __init__(self, d_in: int, m: int, d_out: int | None = None, *, activation: str = "relu",
                 init: str = "near_identity", init_std: float = 1e-3, bias_std: float = 0.0,
                 dropout: float = 0.0, scale: float = 1.0, residual: bool = False,
                 dtype: torch.dtype | None = None, device: torch.device | None = None) -> None:
        super().__init__()
        d_out = d_in if d_out is None else d_out
        if init not in INITS:
            raise ConfigError(f"bottleneck init '{init}' is unknown; choose one of: {', '.join(INITS)}")
        if residual and d_out != d_in:
            raise ConfigError(f"a residual bottleneck needs d_out == d_in, got {d_in} -> {d_out}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"bottleneck dropout must be in [0, 1), got {dropout}")
        self.down = nn.Linear(d_in, m, dtype=dtype, device=device)
        self.act = _activation(activation)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.up = nn.Linear(m, d_out, dtype=dtype, device=device)
        self.scale, self.residual = scale, residual
        _initialise(self.down, self.up, init, init_std, bias_std)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        delta = self.up(self.drop(self.act(self.down(h))))  # (..., d_out)
        if self.scale != 1.0:
            delta = self.scale * delta
        return h + delta if self.residual else delta

    def adapter_params(self) -> list[str]:
        """Every parameter of the bottleneck is trained (``core.protocols.AdapterModule``)."""
        return [n for n, _ in self.named_parameters()]

    def extra_repr(self) -> str:
        return f"scale={self.scale}, residual={self.residual}"


def _activation(name: str) -> nn.Module:
    return activation(name, "bottleneck activation")


@torch.no_grad()
def _initialise(down: nn.Linear, up: nn.Linear, init: str, init_std: float, bias_std: float) -> None:
    """Initialise both projections in place; the draw order (down, then up) is part of the contract."""
    if init == "near_identity":
        nn.init.normal_(down.weight, std=init_std)
        for t in (down.bias, up.weight, up.bias):
            nn.init.zeros_(t)
        return
    for lin in (down, up):
        if init == "normal":
            nn.init.normal_(lin.weight, std=init_std)
            nn.init.zeros_(lin.bias)
        else:
            nn.init.xavier_uniform_(lin.weight)
            nn.init.normal_(lin.bias, std=bias_std)
