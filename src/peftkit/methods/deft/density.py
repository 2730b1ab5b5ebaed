"""Pure functions of DEFT's density loss and of the density metrics (no module state, no hooks).

"From PEFT to DEFT: Parameter Efficient Finetuning for Reducing Activation Density in Transformers",
Runwal, Pedapati, Chen, arXiv 2402.01911. The loss follows the reference code (IBM/DEFT
``compute_l0_penalty``), in our names:

    s(a)      = a^2 / (a^2 + eps)                          smooth_l0(a, eps)   (smooth surrogate of [a != 0])
    ds/da     = 2 a eps / (a^2 + eps)^2                    smooth_l0_grad(a, eps)
    d[b, l]   = sum_{t, j} w[b, t] * s(a_l[b, t, j])       per_sample_density(a_l, eps, valid)
                w[b, t] = 1 / (T * D)                       (reference: every position counted)
                w[b, t] = valid[b, t] / (n_valid[b] * D)    (padding / virtual tokens left out)
    L_density = mean over (b, l) of d[b, l]                (DeftLoss.aux_loss, one stack)

Not in the paper: the *threshold-centred* surrogate (``DEFT(centre="threshold")``) counts only the excess of
|a| over the layer's calibrated magnitude threshold tau_l (the one ``pk.sparsify`` zeroes below):

    r         = relu(|a| - tau)
    s_tau(a)  = r^2 / (r^2 + eps)                          smooth_l0_excess(a, eps, tau)
    ds_tau/da = sign(a) * 2 r eps / (r^2 + eps)^2          smooth_l0_excess_grad(a, eps, tau)

s_0 is the paper's s (r^2 = a^2), so tau = 0 reproduces it exactly. Units already under tau (zeroed by the
sparsifier) cost nothing and get no gradient; units just above it are pulled under it.

and the metric follows ``compute_eval_sparsity``: ``count_nonzero(a[b]) / (T * D)`` per sample
(``per_sample_fraction(a != 0)``), averaged over samples, then layers, times 100.

Shape legend: b batch (samples), t positions (tokens, point groups), d units of the MLP (D_ff).
"""

from __future__ import annotations

from typing import Any

import torch


def as_btd(a: torch.Tensor) -> torch.Tensor:
    """View an activation as [b, t, d]: [b, d] -> [b, 1, d]; [b, t1, t2, .., d] -> [b, t1*t2*.., d]."""
    if a.dim() < 2:
        raise ValueError(f"an MLP activation needs a batch and a unit dimension, got shape {tuple(a.shape)}")
    if a.dim() == 2:
        return a.unsqueeze(1)  # [b, d] -> [b, 1, d]
    return a.reshape(a.shape[0], -1, a.shape[-1])  # [b, ..., d] -> [b, t, d]


def smooth_l0(a: torch.Tensor, eps: float) -> torch.Tensor:
    """Elementwise a^2 / (a^2 + eps), computed in fp32 (or fp64 for fp64 input)."""
    a = a if a.dtype == torch.float64 else a.float()
    sq = a * a
    return sq / (sq + eps)


def smooth_l0_grad(a: torch.Tensor, eps: float) -> torch.Tensor:
    """Elementwise d/da of a^2 / (a^2 + eps) = 2 a eps / (a^2 + eps)^2 (fp32, or fp64 for fp64 input)."""
    a = a if a.dtype == torch.float64 else a.float()
    den = a * a + eps
    return (2.0 * eps) * a / (den * den)


def smooth_l0_excess(a: torch.Tensor, eps: float, tau: float) -> torch.Tensor:
    """Elementwise r^2 / (r^2 + eps), r = relu(|a| - tau) (fp32, or fp64 for fp64 input)."""
    a = a if a.dtype == torch.float64 else a.float()
    r = (a.abs() - tau).clamp_min(0.0)
    sq = r * r
    return sq / (sq + eps)


def smooth_l0_excess_grad(a: torch.Tensor, eps: float, tau: float) -> torch.Tensor:
    """Elementwise d/da of smooth_l0_excess = sign(a) 2 r eps / (r^2 + eps)^2, r = relu(|a| - tau)."""
    a = a if a.dtype == torch.float64 else a.float()
    r = (a.abs() - tau).clamp_min(0.0)
    den = r * r + eps
    return (2.0 * eps) * torch.sign(a) * r / (den * den)


def position_weights(valid: torch.Tensor | None, b: int, t: int, d: int, device: Any = None,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Per-position weights w [b, t] such that sum_{t, j} w[b, t] * x[b, t, j] is a per-sample mean.

    Args:
        valid: bool [b, t], True where a position counts; None counts every position (the reference).
        b, t, d: sizes of the activation.

    Returns:
        [b, t]: ``1 / (t * d)`` everywhere, or ``valid / (n_valid * d)`` (a sample with no valid position
        gets weight 0 everywhere and contributes 0).
    """
    if valid is None:
        return torch.full((b, t), 1.0 / (t * d), device=device, dtype=dtype)
    if tuple(valid.shape) != (b, t):
        raise ValueError(f"mask shape {tuple(valid.shape)} does not match the activation's (b, t) {(b, t)}")
    v = valid.to(dtype=dtype, device=device)
    n = v.sum(dim=1, keepdim=True).clamp_min(1.0)  # [b, 1]
    return v / (n * d)


class _SmoothL0Density(torch.autograd.Function):
    """d[b] = sum_{t, j} w[b, t] s_tau(a[b, t, j]) with an analytic backward that saves only ``a`` and ``w``
    (plain autograd would also keep a^2 and a^2 + eps, two more activation-sized tensors per layer).
    tau = 0 runs the paper's s and ds/da exactly."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, w: torch.Tensor, eps: float,  # a [b,t,d], w [b,t]
                tau: float) -> torch.Tensor:
        ctx.save_for_backward(a, w)
        ctx.eps, ctx.tau = eps, tau
        s = smooth_l0(a, eps) if tau == 0.0 else smooth_l0_excess(a, eps, tau)
        return (s * w.unsqueeze(-1)).sum(dim=(1, 2))  # [b]

    @staticmethod
    def backward(ctx: Any, grad_d: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        a, w = ctx.saved_tensors  # grad_d [b]
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        scale = (grad_d.to(w.dtype).unsqueeze(1) * w).unsqueeze(-1)  # [b, t, 1]
        g = smooth_l0_grad(a, ctx.eps) if ctx.tau == 0.0 else smooth_l0_excess_grad(a, ctx.eps, ctx.tau)
        return (g * scale).to(a.dtype), None, None, None


def per_sample_density(a: torch.Tensor, eps: float, valid: torch.Tensor | None = None,
                       tau: float = 0.0) -> torch.Tensor:
    """d[b]: the per-sample mean of s_tau(a) over positions and units (differentiable in ``a``).

    Args:
        a: activation [b, t, d] (or [b, d], or [b, ..., d]).
        eps: > 0.
        valid: bool [b, t] of the positions that count, or None for all of them.
        tau: the centre, >= 0: 0 is the paper's a^2 / (a^2 + eps); tau > 0 counts relu(|a| - tau) instead.

    Returns:
        [b], fp32 (fp64 for fp64 input).

    Raises:
        ValueError: tau negative or not finite.
    """
    if not (0.0 <= tau < float("inf")):
        raise ValueError(f"the surrogate's centre tau must be a finite value >= 0, got {tau}")
    a3 = as_btd(a)
    wdtype = torch.float64 if a.dtype == torch.float64 else torch.float32
    w = position_weights(valid, a3.shape[0], a3.shape[1], a3.shape[2], device=a.device, dtype=wdtype)
    return _SmoothL0Density.apply(a3, w, float(eps), float(tau))


def per_sample_fraction(hit: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample fraction of ``hit`` (bool, [b, t, d] or [b, d]) over the valid positions, float64 [b].

    ``per_sample_fraction(a != 0)`` is IBM/DEFT's ``count_nonzero(a[b]) / (T * D)``.
    """
    h3 = as_btd(hit)
    b, t, d = h3.shape
    if valid is None:
        return h3.sum(dim=(1, 2), dtype=torch.int64).to(torch.float64) / (t * d)
    if tuple(valid.shape) != (b, t):
        raise ValueError(f"mask shape {tuple(valid.shape)} does not match the activation's (b, t) {(b, t)}")
    v = valid.to(device=hit.device, dtype=torch.bool)
    count = (h3 & v.unsqueeze(-1)).sum(dim=(1, 2), dtype=torch.int64).to(torch.float64)  # [b]
    n = v.sum(dim=1, dtype=torch.int64).clamp_min(1).to(torch.float64) * d  # [b]
    return count / n
