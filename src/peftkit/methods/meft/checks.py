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


def _sampled_rel(a: torch.Tensor, b: torch.Tensor, sample: torch.Tensor) -> float:
    return _rel(a.reshape(-1)[sample], b.reshape(-1)[sample])


@torch.no_grad()
def _invert(couplings: Sequence[Coupling], hidden: torch.Tensor, ctx: dict[str, Any],
            threshold: float | None, keep: frozenset[int] = frozenset(),
            sample: torch.Tensor | None = None, nudges: int = 0,
            nudge_threshold: float | None = None) -> tuple[list[int], list[float]]:
    """Forward keeping every layer input, then invert from the top with the same dropout masks; keep the true
    input (an anchor) at the layers in ``keep`` and, with a ``threshold``, wherever the reconstructed one is
    further than that. With a ``sample`` (flat indices into one stream, the run-time check's), a layer's error
    is the larger of the full one and the one on those elements. With ``nudges`` = R, each layer is also
    inverted alone R times from its exact outputs moved by a random last-bit difference (:func:`_nudge`),
    and becomes an anchor when the worst of those errors exceeds ``nudge_threshold``.
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
            above = (x1, x2)  # the exact outputs of the layer being inverted
            for i in reversed(range(len(couplings))):
                x1, x2 = couplings[i].inverse(x1, x2, ctx, records[i])
                t1, t2 = inputs.pop()
                err = _layer_error(x1, x2, t1, t2, sample)
                flips = 0.0
                for r in range(nudges):
                    n1, n2 = couplings[i].inverse(*_nudge(above, 1000 * i + r), ctx, records[i])
                    flips = max(flips, _layer_error(n1, n2, t1, t2, sample))
                above = (t1, t2)
                errs[i] = err if err == err else float("inf")  # NaN: overflowed
                flipped = nudges > 0 and nudge_threshold is not None and not flips <= nudge_threshold
                if i in keep or flipped or (threshold is not None and not errs[i] <= threshold):
                    anchors.append(i)
                    x1, x2 = t1, t2
    finally:
        for p, t in zip(probes, saved_terms):
            p.last_term = t
    return sorted(anchors), errs


def _layer_error(x1: torch.Tensor, x2: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor,
                 sample: torch.Tensor | None) -> float:
    err = max(_rel(x1, t1), _rel(x2, t2))
    if sample is not None:
        err = max(err, _sampled_rel(x1, t1, sample), _sampled_rel(x2, t2, sample))
    return err


def _nudge(streams: tuple[torch.Tensor, torch.Tensor], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Both streams times (1 + u eps) elementwise, u ~ U(-1, 1) from a private generator: after rounding,
    about half the elements move by one unit in the last place, the difference a reconstructed stream
    carries; used to find layers whose inversion turns it into a large error (a 16-bit rounding inside F or
    G that flips)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for s in streams:
        u = (torch.rand(s.shape, generator=g, dtype=torch.float64) * 2 - 1).to(s.device, s.dtype)
        out.append(s + s.abs() * u * torch.finfo(s.dtype).eps)
    return out[0], out[1]


def reconstruction_errors(couplings: Sequence[Coupling], hidden: torch.Tensor, ctx: dict[str, Any],
                          anchors: frozenset[int] = frozenset()) -> list[float]:
    """Relative error of each coupling's reconstructed input; index 0 = the lowest layer (inverted last; inf
    where the inversion overflowed).

    Args:
        couplings: the reversible layers, bottom first.
        hidden: the stack input [b, t, d] (both streams start from it).
        ctx: the per-forward block arguments (as :meth:`ReversibleStack.context` builds them).
        anchors: layers whose exact inputs are kept, as the reversible backward does (their error is 0 and
            the reconstruction below restarts from them); empty = the paper's (no anchors).
    """
    errs = _invert(couplings, hidden, ctx, None, frozenset(anchors))[1]
    return [0.0 if i in anchors else e for i, e in enumerate(errs)]


def calibrate_anchors(couplings: Sequence[Coupling], hidden: torch.Tensor, ctx: dict[str, Any],
                      threshold: float, keep: frozenset[int] = frozenset(),
                      sample: torch.Tensor | None = None, nudges: int = 0,
                      nudge_threshold: float | None = None) -> tuple[list[int], list[float]]:
    """The fewest anchors, besides ``keep``, that hold every reconstructed layer input within ``threshold``
    on this batch.

    Walking down from the exact output, layer n's input is reconstructed from layer n+1's (exact at an
    anchor) and becomes an anchor when ``err_n > threshold`` (or ``n`` is in ``keep``). Calling it on batches
    1..k in turn, each time with ``keep`` = the anchors chosen so far, gives anchors that hold the threshold
    on every one of the k batches (an anchor only lowers the error of the layers below it).

    Args:
        couplings: the reversible layers, bottom first.
        hidden: the stack input [b, t, d] in the stream dtype.
        ctx: the per-forward block arguments.
        threshold: the largest relative error of a reconstructed layer input that is accepted.
        keep: anchors already chosen (kept whatever this batch measures).
        sample: the run-time check's flat indices into one stream; the error of a layer is then also
            measured on them (the larger of the two counts), so the check agrees on this batch.
        nudges: R >= 0 extra one-layer inversions per layer from its exact outputs nudged by a random
            last-bit difference: a layer whose inversion turns that into an error over ``nudge_threshold``
            (a bf16 rounding inside F or G that flips, which this batch's own reconstruction may not show)
            becomes an anchor. Costs R forwards.
        nudge_threshold: the bound for the nudged errors; None = ``threshold``.

    Returns:
        (anchors, errors): the layer indices whose inputs are kept (ascending, ``keep`` included), and per
        layer (bottom first) the relative error its reconstructed input had before that decision (the
        measured amplification: ``errors[i] / errors[i + 1]`` between anchors).
    """
    return _invert(couplings, hidden, ctx, threshold, frozenset(keep), sample, nudges,
                   threshold if nudge_threshold is None else nudge_threshold)


def stack_input(model: nn.Module, *args: Any, **kwargs: Any) -> tuple[Any, torch.Tensor, dict[str, Any]]:
    """(stack, stack input [b, t, d] in the stream dtype, per-forward block arguments) of the MEFT stack in
    ``model`` on one batch ``model(*args, **kwargs)``, captured with one no-grad forward (run it under the
    autocast the training uses)."""
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
    return stack, seen["hidden"], seen["ctx"]


def stack_reconstruction_errors(model: nn.Module, *args: Any, **kwargs: Any) -> list[float]:
    """Per-layer reconstruction errors of the MEFT stack in ``model`` on one batch ``model(*args, **kwargs)``.

    Captures the stack input and per-forward arguments with one no-grad forward (:func:`stack_input`), then
    runs :func:`reconstruction_errors` over all couplings (reversible or not), without anchors.
    """
    stack, hidden, ctx = stack_input(model, *args, **kwargs)
    return reconstruction_errors(list(stack.couplings), hidden, ctx)
