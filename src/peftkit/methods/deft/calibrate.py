"""Calibration of the per-layer thresholds, the folded means, and the measured MLP density.

CATS (arXiv 2404.08763) / TEAL (arXiv 2408.14690): tau_l is the q-quantile of the rule's statistic over the
calibration tokens of layer l (padding left out when the batch has an ``attention_mask`` aligned with the
activation):

    magnitude: tau_l = quantile_q(|a_l|)        sign: tau_l = quantile_q(x_l)   (x_l the activation's input)
    fold:      mu_l[j] = mean over tokens of h_l[t, j] * (1 - m_l[t, j]),   shift_l = W_out mu_l

q = 0 keeps everything (tau = 0 for magnitude, -inf for sign). Every statistic is taken on the dense model
(``observe`` mode), as CATS does. At most ``MAX_VALUES`` values per layer are kept (a fixed-seed uniform
subsample), so a quantile never needs more than a few tens of MB.

Shape legend: b batch, t positions, d MLP units, n valid tokens.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from peftkit.core.errors import ConfigError
from peftkit.methods.deft.threshold import ActivationThreshold, FoldedBias

MAX_VALUES = 4_000_000  # per layer, for the quantile
SUBSAMPLE_SEED = 0


def thresholds_of(model: nn.Module) -> list[ActivationThreshold]:
    """Every ActivationThreshold of ``model`` in module order."""
    return [m for m in model.modules() if isinstance(m, ActivationThreshold)]


def folds_of(model: nn.Module) -> list[FoldedBias]:
    """Every FoldedBias of ``model`` in module order (one per threshold when ``fold_mean``)."""
    return [m for m in model.modules() if isinstance(m, FoldedBias)]


def _model_inputs(batch: Mapping[str, Any], device: torch.device | None, keep_labels: bool) -> dict[str, Any]:
    """The batch as model keyword inputs on ``device`` (``labels`` only if ``keep_labels``: T5 decoder)."""
    return {k: (v.to(device) if isinstance(v, torch.Tensor) and device is not None else v)
            for k, v in batch.items() if keep_labels or k != "labels"}


def valid_rows(t: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``t`` [b, t, d] (or [b, d], [b, ..., d]) -> [n, d], the rows of valid (non-padding) positions."""
    d = t.shape[-1]
    if mask is not None and t.dim() == 3 and tuple(mask.shape) == tuple(t.shape[:2]):
        return t[mask.to(device=t.device, dtype=torch.bool)]
    return t.reshape(-1, d)


def _forward_all(model: nn.Module, batches: list[Mapping[str, Any]], keep_labels: bool,
                 each: Any, outputs: list[Any] | None = None) -> None:
    p = next(model.parameters(), None)
    device = p.device if p is not None else None
    with torch.no_grad():
        for batch in batches:
            out = model(**_model_inputs(batch, device, keep_labels))
            each(batch.get("attention_mask"))
            if outputs is not None:
                outputs.append(out)


def calibrate(model: nn.Module, batches: list[Mapping[str, Any]], target_sparsity: float,
              fold_mean: bool, keep_labels: bool = False) -> dict[str, float]:
    """Set every threshold (and fold) of ``model`` from ``batches``; returns ``{layer path: tau}``.

    Raises:
        ConfigError: no batch, or the batches hold no valid token.
    """
    if not batches:
        raise ConfigError("sparsify: the calibration set is empty; pass a few batches (a few hundred tokens)")
    layers = thresholds_of(model)
    stats: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(layers))}
    per_batch = max(1, MAX_VALUES // len(batches))
    gen = torch.Generator().manual_seed(SUBSAMPLE_SEED)
    for m in layers:
        m.mode = "observe"
    folds = folds_of(model)
    for f in folds:
        f.enabled = False

    def collect(mask: torch.Tensor | None) -> None:
        for i, m in enumerate(layers):
            src = m.last_output.abs() if m.rule == "magnitude" else m.last_input  # type: ignore[union-attr]
            v = valid_rows(src.float(), mask).reshape(-1).cpu()
            if v.numel() > per_batch:
                v = v[torch.randint(v.numel(), (per_batch,), generator=gen)]
            stats[i].append(v)
            m.last_input = m.last_output = None

    try:
        _forward_all(model, batches, keep_labels, collect)
        taus: dict[str, float] = {}
        for i, m in enumerate(layers):
            v = torch.cat(stats[i])
            if v.numel() == 0:
                raise ConfigError("sparsify: the calibration batches hold no valid token")
            taus[m.name] = quantile(v, target_sparsity, m.rule)
            m.tau.fill_(taus[m.name])
    finally:
        for m in layers:
            m.mode, m.last_input, m.last_output = "apply", None, None
        for f in folds:
            f.enabled, f.observe, f.last_input = True, False, None
    if fold_mean:
        fold_means(model, batches, keep_labels)
    return taus


def quantile(v: torch.Tensor, q: float, rule: str) -> float:
    """The q-quantile of ``v`` (lower value, ``kthvalue``); q = 0 keeps everything."""
    if q <= 0.0:
        return 0.0 if rule == "magnitude" else float("-inf")
    k = min(v.numel(), max(1, int(round(q * v.numel()))))
    # the k-th smallest value zeroes the k-1 below it and keeps ties: take the next value up
    kth = float(v.kthvalue(k).values)
    return float(torch.nextafter(torch.tensor(kth), torch.tensor(float("inf"))))


def fold_means(model: nn.Module, batches: list[Mapping[str, Any]], keep_labels: bool = False) -> None:
    """shift_l = W_out mu_l, mu_l = mean over valid tokens of h * (1 - m) (dense forward, thresholds set)."""
    layers, folds = thresholds_of(model), folds_of(model)
    if len(folds) != len(layers):
        raise ConfigError(f"sparsify fold_mean: {len(layers)} thresholds but {len(folds)} down-projections")
    sums: list[torch.Tensor | None] = [None] * len(layers)
    count = [0] * len(layers)
    for m in layers:
        m.mode = "observe"
    for f in folds:
        f.observe, f.enabled = True, False

    def collect(mask: torch.Tensor | None) -> None:
        for i, (m, f) in enumerate(zip(layers, folds)):
            keep = m.keep(m.last_input, m.last_output)  # type: ignore[arg-type]
            h = f.last_input.float() * (~keep)  # type: ignore[union-attr]  # [b, t, d]: the zeroed part
            rows = valid_rows(h, mask)  # [n, d]
            s = rows.sum(0)
            sums[i] = s if sums[i] is None else sums[i] + s
            count[i] += rows.shape[0]
            m.last_input = m.last_output = f.last_input = None

    try:
        _forward_all(model, batches, keep_labels, collect)
    finally:
        for m in layers:
            m.mode, m.last_input, m.last_output = "apply", None, None
        for f in folds:
            f.enabled, f.observe, f.last_input = True, False, None
    with torch.no_grad():
        for i, f in enumerate(folds):
            mu = (sums[i] / max(count[i], 1)).unsqueeze(0)  # type: ignore[operator]  # [1, d]
            w = next(f.inner.parameters())
            mu = mu.to(dtype=w.dtype, device=w.device)
            f.shift.copy_((f.inner(mu) - f.inner(torch.zeros_like(mu)))[0].to(f.shift.dtype))


def measure_density(model: nn.Module, batches: Iterable[Mapping[str, Any]], keep_labels: bool = False,
                    outputs: list[Any] | None = None) -> dict[str, float]:
    """Measured MLP density (%) after the thresholds: ``{"mean": ..., <layer path>: ...}`` (valid tokens).

    ``outputs``, when given, receives the model's output of every batch (one pass for metrics and density).
    """
    layers = thresholds_of(model)
    kept = [0] * len(layers)
    total = [0] * len(layers)
    for m in layers:
        m.record_keep = True

    def collect(mask: torch.Tensor | None) -> None:
        for i, m in enumerate(layers):
            k = valid_rows(m.last_keep, mask)  # type: ignore[arg-type]
            kept[i] += int(k.sum())
            total[i] += k.numel()
            m.last_keep = None

    try:
        _forward_all(model, list(batches), keep_labels, collect, outputs)
    finally:
        for m in layers:
            m.record_keep, m.last_keep = False, None
    per = {m.name: 100.0 * kept[i] / max(total[i], 1) for i, m in enumerate(layers)}
    return {"mean": sum(per.values()) / max(len(per), 1), **per}
