"""Activation-density metrics of a model on a data loader (what DEFT lowers), per layer and overall.

DEFT (Runwal, Pedapati, Chen, arXiv 2402.01911) reports the density of the MLP intermediate output
``a = f(x W1)`` as the reference code computes it (IBM/DEFT ``compute_eval_sparsity``):

    density[b, l] = count_nonzero(a_l[b]) / (T * D_ff)          exact zeros, padding counted
    density       = 100 * mean over l of (mean over samples b of density[b, l])

GELU is exactly 0 in fp32 only for x < about -5.5 (bf16: about -3), so beside it we report, all per sample,
then averaged like the above (percent):

    exact         [a != 0]                      every position (the reference)
    gt<tau>       [|a| > tau], tau in 1e-6, 1e-4, 1e-2 (compared in fp32)
    preact_pos    [x > 0], x the input of the activation (pre-activation)
    <m>_masked    the same over real tokens only (padding and prompt-tuning virtual tokens left out)

Keys (the training loop stores them under ``density/``): ``<metric>@<dtype>`` (mean over layers) and
``<metric>/L<i>@<dtype>`` (layer i); encoder-decoder models get ``<stack>/...`` per stack and no pooled
figure. ``<dtype>`` is the dtype of the observed activations (fp32, bf16, ...): the same weights give
different exact-zero densities in different dtypes.

Shape legend: b batch, t positions, d MLP units.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from peftkit.core.spec import get_spec
from peftkit.core.state import get_state
from peftkit.core.surgery import UndoRecord
from peftkit.methods.deft.density import per_sample_fraction
from peftkit.methods.deft.masks import MaskContext

THRESHOLDS = (1e-6, 1e-4, 1e-2)  # tau of the thresholded density (CATS-style |a| > tau; docs/design.md)
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}


def metric_names() -> list[str]:
    """Names of the per-sample metrics, in report order."""
    base = ["exact", *[f"gt{tau:.0e}" for tau in THRESHOLDS], "preact_pos"]
    return [m for b in base for m in (b, f"{b}_masked")]


def sample_metrics(x: torch.Tensor, a: torch.Tensor, valid: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Per-sample fractions (float64 [b], in [0, 1]) of every metric for one layer and one batch.

    Args:
        x: the activation's input (pre-activation), same shape as ``a``.
        a: the activation's output [b, t, d] (or [b, d]).
        valid: bool [b, t] of the real tokens (None: all of them).
    """
    a32 = a.float()
    hits = {"exact": a != 0, **{f"gt{tau:.0e}": a32.abs() > tau for tau in THRESHOLDS}, "preact_pos": x > 0}
    out: dict[str, torch.Tensor] = {}
    for name, hit in hits.items():
        out[name] = per_sample_fraction(hit)
        out[f"{name}_masked"] = per_sample_fraction(hit, valid)
    return out


class _Capture(nn.Module):
    """Wraps an activation module during a density evaluation; accumulates per-sample sums per metric."""

    def __init__(self, inner: nn.Module, stack: str, ctx: MaskContext) -> None:
        super().__init__()
        self.inner, self.stack, self.ctx = inner, stack, ctx
        self.sums: dict[str, float] = {}
        self.samples = 0
        self.dtype: torch.dtype | None = None

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        a = self.inner(x, *args, **kwargs)
        valid = None
        if a.dim() == 3:
            valid = self.ctx.valid_for(self.stack, a.shape[0], a.shape[1], padding=True, virtual=True,
                                       device=a.device)
        for name, per_sample in sample_metrics(x, a, valid).items():
            self.sums[name] = self.sums.get(name, 0.0) + float(per_sample.sum())
        self.samples += a.shape[0]
        if self.dtype is None:
            self.dtype = a.dtype
        return a


def _model_inputs(batch: Mapping[str, Any], keep_labels: bool, device: torch.device,
                  dtype: torch.dtype | None) -> dict[str, Any]:
    out = {}
    for k, v in batch.items():
        if k == "labels" and not keep_labels:
            continue
        if isinstance(v, torch.Tensor):
            v = v.to(device)
            if dtype is not None and v.is_floating_point():
                v = v.to(dtype)
        out[k] = v
    return out


@torch.no_grad()
def density_report(model: nn.Module, loader: Iterable[Mapping[str, Any]],
                   pad_key: str | None = "attention_mask", *, dtype: torch.dtype | None = None,
                   max_batches: int | None = None) -> dict[str, float]:
    """Density metrics of ``model``'s MLP activations over ``loader`` (eval mode, no grad), in percent.

    Works with or without DEFT applied (any method stack; the ``mlp_act`` modules are wrapped for the
    duration of the call and unwrapped after).

    Args:
        model: a backbone, or what ``pk.apply`` returned.
        loader: batches as the training loop sees them (model inputs + ``labels``).
        pad_key: the input holding the attention mask (None: no padding to mask).
        dtype: evaluate a copy of the model cast to this dtype (e.g. ``torch.bfloat16``); None keeps it.
        max_batches: stop after this many batches.

    Returns:
        ``{"[<stack>/]<metric>[/L<i>]@<dtype>": percent, ..., "samples": n}`` (see the module doc).
    """
    p0 = next(model.parameters(), None)
    if dtype is not None and p0 is not None and dtype != p0.dtype:
        model = copy.deepcopy(model).to(dtype)
    state = get_state(model)
    base = state.base if state is not None else model
    spec = state.spec if state is not None else get_spec(model)
    encdec = len(spec.stacks) > 1
    record = UndoRecord()
    captures: dict[str, list[_Capture]] = {}
    was_training = model.training
    try:
        ctx = MaskContext.install(base, spec, record, mask_key=pad_key or "\0no-mask")
        for s in spec.stacks:
            if "mlp_act" not in s.roles:
                continue
            for path in spec.role_paths(base, "mlp_act", stack=s.name):
                cap = _Capture(base.get_submodule(path), s.name, ctx)
                record.replace(base, path, cap)
                captures.setdefault(s.name, []).append(cap)
        model.eval()
        device = p0.device if p0 is not None else torch.device("cpu")
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            model(**_model_inputs(batch, encdec, device, dtype))
    finally:
        record.undo()
        model.train(was_training)
    return _summarise(captures, encdec)


def _summarise(captures: dict[str, list[_Capture]], encdec: bool) -> dict[str, float]:
    out: dict[str, float] = {}
    all_caps = [c for caps in captures.values() for c in caps]
    if not all_caps or all_caps[0].samples == 0:
        return out
    dt = DTYPE_NAMES.get(all_caps[0].dtype, str(all_caps[0].dtype).replace("torch.", ""))  # type: ignore[arg-type]
    for stack, caps in captures.items():
        prefix = f"{stack}/" if encdec else ""
        for name in metric_names():
            per_layer = [100.0 * c.sums[name] / max(c.samples, 1) for c in caps]
            out[f"{prefix}{name}@{dt}"] = sum(per_layer) / len(per_layer)
            for i, v in enumerate(per_layer):
                out[f"{prefix}{name}/L{i}@{dt}"] = v
    out["samples"] = float(all_caps[0].samples)
    return out
