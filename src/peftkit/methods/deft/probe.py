"""``DensityProbe``: wraps one MLP activation and keeps this layer's DEFT density term of the last forward.

"From PEFT to DEFT" (Runwal, Pedapati, Chen, arXiv 2402.01911). The probe wraps the block's ``mlp_act``
module (``a = f(x)``, BackboneSpec role) and, on every forward, keeps

    last_term = mean_b d[b, l],   d[b, l] = sum_{t, j} w[b, t] * a[b, t, j]^2 / (a[b, t, j]^2 + eps)

(:func:`peftkit.methods.deft.density.per_sample_density`). A centred probe (``centred=True``, not in the
paper) uses s_tau with the layer's calibrated threshold ``tau`` instead (``centre.calibrate_centres``); until
then it has no term (``last_term`` None). It is a ``core.protocols.RecomputableTerm``: a
method that recomputes the block in its own backward (MEFT) clears ``last_term``, re-runs the forward and
back-propagates ``coef`` times the term's gradient into the recomputed graph.

Shape legend: b batch, t positions, d MLP units.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from peftkit.core.errors import PeftkitError
from peftkit.methods.deft.density import per_sample_density
from peftkit.methods.deft.masks import MaskContext


class DensityProbe(nn.Module):
    """Wraps one MLP activation module; returns its output unchanged and keeps this layer's density term.

    Attributes:
        inner: the wrapped activation module (GELU / SiLU / ...).
        name: its path in the backbone (used in error messages).
        stack: the stack it belongs to (``encoder`` / ``decoder``).
        coef: the loss weight of ``last_term`` (stack weight / number of layers in the stack).
        last_term: ``mean_b d[b]`` of the last forward (fp32 scalar, differentiable when grad is enabled);
            None for a centred probe that is not calibrated yet.
        centred: use the threshold-centred surrogate s_tau (``DEFT(centre="threshold")``).
        centre_q: the target sparsity whose calibrated magnitude threshold is ``tau``.
        tau: the centre (None until calibrated when ``centred``; 0.0 otherwise).
        observe: keep ``last_abs`` (|a|, detached) for the calibration of ``tau``.
    """

    def __init__(self, inner: nn.Module, *, name: str, stack: str, eps: float, coef: float, ctx: MaskContext,
                 exclude_padding: bool = False, exclude_virtual_tokens: bool = False,
                 centred: bool = False, centre_q: float = 0.9) -> None:
        super().__init__()
        self.inner = inner
        self.centred, self.centre_q = centred, centre_q
        self.tau: float | None = None if centred else 0.0
        self.observe = False
        self.last_abs: torch.Tensor | None = None
        self.name, self.stack, self.eps, self.coef, self.ctx = name, stack, eps, coef, ctx
        self.exclude_padding, self.exclude_virtual_tokens = exclude_padding, exclude_virtual_tokens
        self.last_term: torch.Tensor | None = None
        self.fired_at = -1

    def valid(self, a: torch.Tensor) -> torch.Tensor | None:
        """The positions of ``a`` this probe counts in the current forward (None = all)."""
        if not (self.exclude_padding or self.exclude_virtual_tokens) or a.dim() != 3:
            return None
        return self.ctx.valid_for(self.stack, a.shape[0], a.shape[1], padding=self.exclude_padding,
                                  virtual=self.exclude_virtual_tokens, device=a.device)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        a = self.inner(x, *args, **kwargs)
        if self.observe:
            self.last_abs = a.detach().abs()
        valid = self.valid(a)
        self.last_term = None if self.tau is None else per_sample_density(a, self.eps, valid, self.tau).mean()
        self.fired_at = self.ctx.generation
        return a

    def weighted_term(self) -> torch.Tensor:
        """``coef * last_term``: this layer's share of the loss."""
        if self.last_term is None:
            raise PeftkitError(f"DEFT probe at '{self.name}' has not run yet: call the model first")
        return self.coef * self.last_term

    def extra_repr(self) -> str:
        centre = f", tau={self.tau}" if self.centred else ""
        return f"name={self.name!r}, stack={self.stack!r}, eps={self.eps:g}, coef={self.coef:g}{centre}"
