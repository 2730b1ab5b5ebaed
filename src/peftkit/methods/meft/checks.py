"""Reconstruction-drift check of MEFT's reversible layers.

"Make Pre-trained Model Reversible" (Liao, Tan, Monz; NeurIPS 2023; arXiv 2306.00477). The inverse divides
by lam and beta (0.1 in every variant), so each layer of reconstruction can amplify rounding error by about
``|J_F| / lam`` or ``|J_G| / beta``. This module measures it: run the couplings forward keeping every true
layer input, invert from the top with the same dropout masks, and compare, layer by layer,

    err_n = max over streams s of  |x_s,n(reconstructed) - x_s,n(true)| / |x_s,n(true)|      (Frobenius norms)

Nothing here changes the model, the global RNG, or DEFT's last density terms.

``calibrate_anchors`` chooses MEFT's anchors (``anchor_every="auto"``) from one such inversion: walking down
from the exact output, it reconstructs each layer input from the one above and, where the relative error
would exceed the threshold, keeps that layer's exact input instead (an anchor), so the error restarts at 0.
Placing each anchor as low as the threshold allows is optimal for this chain: no other placement holds
every layer under the threshold with fewer anchors. The cost is one forward that keeps every layer input
and one inversion, once.

Shape legend: b batch, t tokens, d model width.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from peftkit.core.errors import PeftkitError
from peftkit.methods.meft.autograd import recomputable_terms
from peftkit.methods.meft.coupling import Coupling, RngState


class ReconstructionError(PeftkitError, ArithmeticError):
    """A reconstructed layer input of MEFT's reversible backward is further from the true one than the
    tolerance (raised when ``MEFT.on_error="raise"``)."""


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a64, b64 = a.double(), b.double()
    return float((a64 - b64).norm() / b64.norm().clamp_min(1e-300))


@torch.no_grad()
def _invert(couplings: Sequence[Coupling], hidden: torch.Tensor, ctx: dict[str, Any],
            threshold: float | None) -> tuple[list[int], list[float]]:
    """Forward keeping every layer input, then invert from the top with the same dropout masks; with a
    ``threshold``, keep the true input (an anchor) wherever the reconstructed one is further than that.
    Returns (anchors ascending, per-layer relative errors bottom first, before any anchor decision)."""
    probes: list[nn.Module] = [p for c in couplings for p in recomputable_terms(c)]
    saved_terms = [p.last_term for p in probes]
    dev = hidden.device
    anchors: list[int] = []
    errs = [0.0] * len(couplings)
    try:
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            inputs: list[tuple[torch.Tensor, torch.Tensor]] = []
            records: list[list[RngState]] = []
            x1, x2 = hidden, hidden
            for c in couplings:
                inputs.append((x1, x2))
                rec: list[RngState] = []
                x1, x2 = c(x1, x2, ctx, rec)
                records.append(rec)
            for i in reversed(range(len(couplings))):
                x1, x2 = couplings[i].inverse(x1, x2, ctx, records[i])
                t1, t2 = inputs.pop()
                err = max(_rel(x1, t1), _rel(x2, t2))
                errs[i] = err if err == err else float("inf")  # NaN: overflowed
                if threshold is not None and not errs[i] <= threshold:
                    anchors.append(i)
                    x1, x2 = t1, t2
    finally:
        for p, t in zip(probes, saved_terms):
            p.last_term = t
    return sorted(anchors), errs


def reconstruction_errors(couplings: Sequence[Coupling], hidden: torch.Tensor,
                          ctx: dict[str, Any]) -> list[float]:
    """Relative error of each coupling's reconstructed input without anchors; index 0 = the lowest layer
    (inverted last; inf where the inversion overflowed).

    Args:
        couplings: the reversible layers, bottom first.
        hidden: the stack input [b, t, d] (both streams start from it).
        ctx: the per-forward block arguments (as :meth:`ReversibleStack.context` builds them).
    """
    return _invert(couplings, hidden, ctx, None)[1]


def calibrate_anchors(couplings: Sequence[Coupling], hidden: torch.Tensor, ctx: dict[str, Any],
                      threshold: float) -> tuple[list[int], list[float]]:
    """The fewest anchors that keep every reconstructed layer input within ``threshold`` on this batch.

    Args:
        couplings: the reversible layers, bottom first.
        hidden: the stack input [b, t, d] in the stream dtype.
        ctx: the per-forward block arguments.
        threshold: the largest relative error of a reconstructed layer input that is accepted.

    Returns:
        (anchors, errors): the layer indices whose inputs are kept (ascending), and per layer (bottom first)
        the relative error its reconstructed input had before that decision (the measured amplification:
        ``errors[i] / errors[i + 1]`` between anchors).
    """
    return _invert(couplings, hidden, ctx, threshold)


def stack_reconstruction_errors(model: nn.Module, *args: Any, **kwargs: Any) -> list[float]:
    """Per-layer reconstruction errors of the MEFT stack in ``model`` on one batch ``model(*args, **kwargs)``.

    Captures the stack input and per-forward arguments with one no-grad forward, then runs
    :func:`reconstruction_errors` over all couplings (reversible or not).
    """
    from peftkit.methods.meft.stack import ReversibleStack

    stacks = [m for m in model.modules() if isinstance(m, ReversibleStack)]
    if len(stacks) != 1:
        raise ValueError(f"expected one MEFT stack in the model, found {len(stacks)}")
    stack = stacks[0]
    seen: dict[str, Any] = {}
    run = stack.run

    def spy(hidden: torch.Tensor, *a: Any, **kw: Any) -> Any:
        seen["hidden"] = hidden.to(stack.stream_dtype_for(hidden.dtype))
        seen["ctx"] = stack.context(a, kw, recompute=True)
        return run(hidden, *a, **kw)

    object.__setattr__(stack, "run", spy)
    try:
        with torch.no_grad():
            model(*args, **kwargs)
    finally:
        object.__delattr__(stack, "run")
    return reconstruction_errors(list(stack.couplings), seen["hidden"], seen["ctx"])

