"""RevBackprop: the reversible backward of MEFT as one ``torch.autograd.Function``.

"Make Pre-trained Model Reversible" (Liao, Tan, Monz; NeurIPS 2023; arXiv 2306.00477), Listing 1 / Sec. 3.
Forward runs the k reversible couplings without a graph and saves only the two final streams. Backward walks
the couplings top-down; for each it rebuilds G's graph on y1, reconstructs x2 = (y2 - G(y1)) / beta, rebuilds
F's graph on x2, reconstructs x1 = (y1 - F(x2)) / lam, and propagates (chain rule of the coupling):

    dy1_total = dy1 + (dG/dy1)^T dy2
    dx1       = lam  * dy1_total
    dx2       = beta * dy2 + (dF/dx2)^T dy1_total

Every trainable parameter of the couplings (the adapters; also LoRA weights or anything else a stacked method
made trainable inside the blocks) is an input of the Function and its gradient is *returned*, so autograd's
AccumulateGrad and DDP's reducer hooks see it like any other gradient. No upstream module has to be made
trainable to trigger this backward (the reference makes ``embeddings.LayerNorm`` trainable for that).

DEFT: a density probe inside F or G computes its term in forward without a graph. The Function outputs those
terms as a vector; ``rev_apply`` hands each probe its entry (``probe.last_term``), so ``pk.aux_loss`` is
connected to this Function, and backward differentiates the recomputed terms with the gradient they received.

Shape legend: b batch, t tokens, d model width; x, y1, y2 are [b, t, d]; terms is [P] (P density probes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from peftkit.core.errors import UnsupportedError
from peftkit.core.protocols import RecomputableTerm
from peftkit.methods.meft.coupling import Coupling, RngState


def recomputable_terms(coupling: Coupling) -> list[nn.Module]:
    """The :class:`~peftkit.core.protocols.RecomputableTerm` modules (DEFT's density probes, or any other)
    inside the pretrained block a coupling wraps; empty when no method put one there."""
    out: list[nn.Module] = []
    for sub in (coupling.f, coupling.g):
        ops = getattr(sub, "ops", None)
        if ops is not None:
            # hasattr first: a runtime Protocol isinstance is slow, and this runs every step on every module
            out.extend(m for m in ops.block.modules()
                       if hasattr(m, "last_term") and isinstance(m, RecomputableTerm) and m not in out)
    return out


def coupling_params(coupling: Coupling) -> list[nn.Parameter]:
    """Trainable parameters F or G can touch: the adapters and the wrapped block's (deduplicated)."""
    mods: list[nn.Module] = [coupling]
    for sub in (coupling.f, coupling.g):
        ops = getattr(sub, "ops", None)
        if ops is not None:
            mods.append(ops.block)
    seen: dict[int, nn.Parameter] = {}
    for m in mods:
        for p in m.parameters():
            if p.requires_grad:
                seen.setdefault(id(p), p)
    return list(seen.values())


def _leaf_context(ctx: dict[str, Any], keys: Sequence[str], grad: bool) -> dict[str, Any]:
    """A copy of ``ctx`` whose grad-carrying tensors are detached leaves (requiring grad when ``grad``)."""
    out = dict(ctx)
    for k in keys:
        out[k] = ctx[k].detach().requires_grad_(grad)
    return out


def _split_context(ctx: dict[str, Any]) -> tuple[list[torch.Tensor], dict[str, Any]]:
    """The tensors of ``ctx`` (top level, or inside a tuple/list) and a recipe to put them back.

    They go through ``save_for_backward`` so that saved-tensor accounting sees them (an attention mask can be
    [b, 1, t, t]) and autograd frees them with the graph.
    """
    tensors: list[torch.Tensor] = []
    recipe: dict[str, Any] = {}
    for k, v in ctx.items():
        if isinstance(v, torch.Tensor):
            recipe[k] = ("t", len(tensors))
            tensors.append(v.detach())
        elif isinstance(v, (tuple, list)) and v and all(isinstance(t, torch.Tensor) for t in v):
            recipe[k] = ("seq", type(v), list(range(len(tensors), len(tensors) + len(v))))
            tensors.extend(t.detach() for t in v)
        else:
            recipe[k] = ("v", v)
    return tensors, recipe


def _join_context(tensors: Sequence[torch.Tensor], recipe: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, r in recipe.items():
        if r[0] == "t":
            out[k] = tensors[r[1]]
        elif r[0] == "seq":
            out[k] = r[1](tensors[i] for i in r[2])
        else:
            out[k] = r[1]
    return out


@dataclass(frozen=True)
class RevPlan:
    """The non-tensor arguments of one RevBackprop call.

    Attributes:
        couplings: the reversible layers, bottom first.
        context: per-forward block arguments (tensors in it that carry a gradient are named in ``ctx_keys``
            and passed to the Function as inputs instead).
        ctx_keys: names of the context tensors that are Function inputs.
        probes: per coupling, the recomputable terms (DEFT's density probes) inside it.
        anchors: couplings whose two input streams are also saved (exact), so backward restarts from them
            instead of reconstructing; the bottom one (0) costs one tensor, since both streams are ``x``.
        sample: flat indices into one stream [b*t*d]; forward keeps each layer input's values there and
            backward hands ``report`` the relative error of every reconstructed input on them (None = off).
        report: receives ``[(layer, relative error), ...]`` after backward (when ``sample`` is given).
    """

    couplings: tuple[Coupling, ...]
    context: dict[str, Any]
    ctx_keys: tuple[str, ...]
    probes: tuple[tuple[nn.Module, ...], ...]
    anchors: frozenset[int] = frozenset()
    sample: torch.Tensor | None = None
    report: Callable[[list[tuple[int, float]]], None] | None = None


def _sample_error(x: torch.Tensor, idx: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    got = x.reshape(-1)[idx].double()
    return (got - true.double()).norm() / true.double().norm().clamp_min(1e-300)


class RevBackprop(torch.autograd.Function):
    """``(plan, x, *ctx_tensors, *params) -> (y1, y2, terms)``; saves y1, y2 (and the anchors, if any)."""

    @staticmethod
    def forward(fctx: Any, plan: RevPlan, x: torch.Tensor,
                *tensors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n_ctx = len(plan.ctx_keys)
        context = {**plan.context, **dict(zip(plan.ctx_keys, tensors[:n_ctx]))}
        fctx.plan, fctx.params = plan, tensors[n_ctx:]
        dev = x.device.type
        fctx.autocast = (dev, torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev))
        fctx.records, fctx.samples = [], []
        terms: list[torch.Tensor] = []
        anchors: list[torch.Tensor] = []
        fctx.slots = {}
        leaf_ctx = _leaf_context(context, plan.ctx_keys, grad=False)
        with torch.no_grad():
            x1, x2 = x, x
            for i, (c, ps) in enumerate(zip(plan.couplings, plan.probes)):
                if i in plan.anchors:  # both streams are x at i = 0: one tensor
                    fctx.slots[i] = (len(anchors), len(anchors) + (0 if i == 0 else 1))
                    anchors += [x1] if i == 0 else [x1, x2]
                elif plan.sample is not None:
                    fctx.samples.append((i, x1.reshape(-1)[plan.sample], x2.reshape(-1)[plan.sample]))
                rec: list[RngState] = []
                x1, x2 = c(x1, x2, leaf_ctx, rec)
                fctx.records.append(rec)
                terms.extend(p.last_term.detach() for p in ps)
        out_terms = torch.stack(terms) if terms else x.new_zeros(0, dtype=torch.float32)
        ctx_saved, fctx.recipe = _split_context(context)
        fctx.n_anchor_tensors = len(anchors)
        fctx.save_for_backward(x1, x2, *anchors, *ctx_saved)
        return x1, x2, out_terms

    @staticmethod
    def backward(fctx: Any, do1: torch.Tensor, do2: torch.Tensor, dterms: torch.Tensor) -> tuple[Any, ...]:
        plan, params = fctx.plan, fctx.params
        o1, o2, *rest = fctx.saved_tensors
        anchors, ctx_saved = rest[: fctx.n_anchor_tensors], rest[fctx.n_anchor_tensors:]
        del rest
        samples = {i: (s1, s2) for i, s1, s2 in fctx.samples}
        errors: list[tuple[int, torch.Tensor]] = []
        index = {id(p): i for i, p in enumerate(params)}
        g_params: list[torch.Tensor | None] = [None] * len(params)
        g_ctx: list[torch.Tensor | None] = [None] * len(plan.ctx_keys)
        leaf_ctx = _leaf_context(_join_context(ctx_saved, fctx.recipe), plan.ctx_keys, grad=True)
        leaves = [leaf_ctx[k] for k in plan.ctx_keys]
        dev, enabled, dtype = fctx.autocast
        offset = int(dterms.numel())
        for i in reversed(range(len(plan.couplings))):
            c, rec, probes = plan.couplings[i], fctx.records[i], plan.probes[i]
            offset -= len(probes)
            dprobe = {id(p): dterms[offset + j] for j, p in enumerate(probes)}
            lp = [p for p in coupling_params(c) if id(p) in index]
            wrt = [*leaves, *lp]
            y1, y2 = c.unswitch(o1, o2)
            dy1, dy2 = c.unswitch(do1, do2)
            del do1, do2
            saved_terms = [p.last_term for p in probes]
            with torch.enable_grad(), torch.autocast(dev, dtype=dtype, enabled=enabled):
                y1_ = y1.detach().requires_grad_(True)
                g_out, g_terms, g_dt = _recompute(c.g, y1_, leaf_ctx, rec[1], probes, dprobe)
            gg = torch.autograd.grad([g_out, *g_terms], [y1_, *wrt], [dy2, *g_dt], allow_unused=True)
            del y1_, g_terms, g_dt
            if i in plan.anchors:  # exact saved inputs: the reconstruction error stops here
                k1, k2 = fctx.slots[i]
                x1, x2 = anchors[k1], anchors[k2]
            else:
                x2 = (y2 - g_out).div_(c.beta)
            del g_out
            dy1 = dy1 + gg[0]
            with torch.enable_grad(), torch.autocast(dev, dtype=dtype, enabled=enabled):
                x2_ = x2.detach().requires_grad_(True)
                f_out, f_terms, f_dt = _recompute(c.f, x2_, leaf_ctx, rec[0], probes, dprobe)
            gf = torch.autograd.grad([f_out, *f_terms], [x2_, *wrt], [dy1, *f_dt], allow_unused=True)
            del x2_, f_terms, f_dt
            if i not in plan.anchors:
                x1 = (y1 - f_out).div_(c.lam)
                if i in samples:
                    s1, s2 = samples.pop(i)
                    errors.append((i, torch.maximum(_sample_error(x1, plan.sample, s1),
                                                    _sample_error(x2, plan.sample, s2))))
            del f_out, y1, y2
            for p, t in zip(probes, saved_terms):
                p.last_term = t
            for grads in (gg[1:], gf[1:]):
                for j, g in enumerate(grads):
                    if g is None:
                        continue
                    if j < len(leaves):
                        g_ctx[j] = g if g_ctx[j] is None else g_ctx[j] + g
                    else:
                        q = index[id(lp[j - len(leaves)])]
                        g_params[q] = g if g_params[q] is None else g_params[q] + g
            do1, do2 = dy1 * c.lam, gf[0] + c.beta * dy2  # out of place: autograd outputs may alias
            del gg, gf, dy1, dy2
            o1, o2 = x1, x2
        dx = do1 + do2  # both streams start from x
        if plan.report is not None and errors:
            values = torch.stack([e for _, e in errors]).tolist()  # one device sync for all layers
            plan.report([(i, v) for (i, _), v in zip(errors, values)])
        return (None, dx, *g_ctx, *g_params)


def _recompute(sub: nn.Module, inp: torch.Tensor, ctx: dict[str, Any], rng: RngState,
               probes: Sequence[nn.Module], dprobe: dict[int, torch.Tensor]
               ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """``sub(inp)`` with the forward's RNG, plus the density terms of the probes that fired inside it."""
    for p in probes:
        p.last_term = None
    with rng.replay():
        out = sub(inp, ctx)
    fired = [p for p in probes if p.last_term is not None and p.last_term.requires_grad]
    return out, [p.last_term for p in fired], [dprobe[id(p)].to(p.last_term.dtype) for p in fired]


def rev_apply(couplings: Sequence[Coupling], x: torch.Tensor, ctx: dict[str, Any],
              anchors: frozenset[int] = frozenset(), sample: torch.Tensor | None = None,
              report: Callable[[list[tuple[int, float]]], None] | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``couplings`` on ``(x, x)`` with the reversible backward; returns the two streams.

    Args:
        anchors, sample, report: see :class:`RevPlan` (no anchors: only the two output streams are saved,
            as in the paper).

    Raises:
        UnsupportedError: when a context value nested in a container carries a gradient (it cannot be an
            input of the Function).
    """
    keys = [k for k, v in ctx.items() if isinstance(v, torch.Tensor) and v.requires_grad]
    for k, v in ctx.items():
        if isinstance(v, (tuple, list)) and any(isinstance(t, torch.Tensor) and t.requires_grad for t in v):
            raise UnsupportedError(f"MEFT reversible backward: the layer argument '{k}' carries a gradient "
                                   "inside a container; make it frozen or set use_reversible_backward=False")
    probes = [recomputable_terms(c) for c in couplings]
    params: dict[int, nn.Parameter] = {}
    for c in couplings:
        for p in coupling_params(c):
            params.setdefault(id(p), p)
    plan = RevPlan(tuple(couplings), {k: v for k, v in ctx.items() if k not in keys}, tuple(keys),
                   tuple(tuple(ps) for ps in probes), frozenset(anchors), sample, report)
    y1, y2, terms = RevBackprop.apply(plan, x, *[ctx[k] for k in keys], *params.values())
    flat = [p for ps in probes for p in ps]
    for i, p in enumerate(flat):
        p.last_term = terms[i]  # connected to RevBackprop: pk.aux_loss's gradient reaches our backward
    return y1, y2
