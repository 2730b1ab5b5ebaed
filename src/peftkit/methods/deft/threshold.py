"""``ActivationThreshold``: wraps one MLP activation and zeroes what falls below the layer's threshold.

    magnitude rule:  keep m = [|a| >= tau]       sign rule:  keep m = [x >= tau]   (x the activation's input)
    out = a * m                                   (inference)
    out = a + (a * m - a).detach()                (training, straight-through: d out / d a = 1)

``FoldedBias`` wraps the down-projection and adds the constant ``W_out mu`` of the zeroed units
(``fold_mean``). The threshold lives in a buffer, so it is saved with the adapter. ``mode`` is ``"apply"``
(threshold in the forward), ``"observe"`` (dense output; calibration reads ``x`` and ``a``) or ``"off"``.

Shape legend: b batch, t positions, d MLP units, o output features of the down-projection.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

MODES = ("apply", "observe", "off")


class ActivationThreshold(nn.Module):
    """The threshold of one layer's MLP activation.

    Attributes:
        inner: the wrapped activation module (GELU / SiLU / ReLU ...).
        name: its path in the backbone.
        rule: ``"magnitude"`` or ``"sign"``.
        tau: buffer [1], the calibrated threshold (0 until calibrated: magnitude keeps everything; the sign
            rule at 0 keeps x >= 0).
        mode: see the module docstring.
        last_input / last_output: kept in ``"observe"`` mode only (the calibration reads them).
        last_keep: bool mask of the last ``"apply"`` forward when ``record_keep`` (the sparse MLP reads it).
    """

    def __init__(self, inner: nn.Module, *, name: str, rule: str) -> None:
        super().__init__()
        self.inner, self.name, self.rule = inner, name, rule
        self.register_buffer("tau", torch.zeros(1))
        self.mode = "apply"
        self.record_keep = False
        self.last_input: torch.Tensor | None = None
        self.last_output: torch.Tensor | None = None
        self.last_keep: torch.Tensor | None = None

    def keep(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Bool mask (shape of ``a``) of the activations that survive the threshold."""
        tau = self.tau.to(dtype=a.dtype if self.rule == "magnitude" else x.dtype)
        return a.abs() >= tau if self.rule == "magnitude" else x >= tau

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        a = self.inner(x, *args, **kwargs)
        if self.mode == "off":
            return a
        if self.mode == "observe":
            self.last_input, self.last_output = x, a
            return a
        m = self.keep(x, a)
        if self.record_keep:
            self.last_keep = m
        sparse = a * m
        if torch.is_grad_enabled() and a.requires_grad:
            return a + (sparse - a).detach()  # straight-through: the gradient of a passes unchanged
        return sparse

    def extra_repr(self) -> str:
        return f"name={self.name!r}, rule={self.rule!r}, tau={float(self.tau):.4g}, mode={self.mode!r}"


class FoldedBias(nn.Module):
    """Wraps the down-projection: ``inner(h) + shift``, ``shift = W_out mu`` [o] (a buffer, saved).

    Attributes:
        inner: the down-projection (``nn.Linear`` or a PEFT wrapper of it).
        shift: buffer [o]; 0 until calibrated.
        enabled: add ``shift`` (calibration turns it off while it measures mu).
    """

    def __init__(self, inner: nn.Module, out_features: int) -> None:
        super().__init__()
        self.inner = inner
        self.register_buffer("shift", torch.zeros(out_features))
        self.enabled = True
        self.last_input: torch.Tensor | None = None
        self.observe = False

    def forward(self, h: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.observe:
            self.last_input = h
        y = self.inner(h, *args, **kwargs)
        return y + self.shift.to(y.dtype) if self.enabled else y
