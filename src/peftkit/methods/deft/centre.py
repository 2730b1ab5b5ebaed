"""``calibrate_centres``: the per-layer centre tau_l of the threshold-aware DEFT surrogate (not in the paper).

``DEFT(centre="threshold")`` replaces the paper's a^2 / (a^2 + eps) by r^2 / (r^2 + eps),
r = relu(|a| - tau_l) (``density.py``). tau_l is calibrated exactly as ``pk.sparsify`` calibrates its
magnitude threshold (CATS, arXiv 2404.08763; TEAL, arXiv 2408.14690): the ``centre_q``-quantile of |a_l|
over the valid calibration tokens of the dense model, with the same subsample cap and the same quantile
(``calibrate.quantile``):

    tau_l = quantile_q(|a_l|),   q = DEFT.centre_q

so with the same batches and q the centres equal the thresholds ``pk.sparsify`` installs. Call it at the start
of the sparsity-aware phase (the thresholds the model is then trained under); it can be called again.

Shape legend: b batch, t positions, d MLP units.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from peftkit.core.errors import ConfigError
from peftkit.methods.deft.apply import deft_probes
from peftkit.methods.deft.calibrate import MAX_VALUES, SUBSAMPLE_SEED, _forward_all, quantile, valid_rows
from peftkit.methods.deft.threshold import ActivationThreshold


def calibrate_centres(model: nn.Module, batches: list[Mapping[str, Any]],
                      keep_labels: bool = False) -> dict[str, float]:
    """Set tau_l of every centred DEFT probe of ``model`` from ``batches``; returns ``{layer path: tau_l}``.

    The forward runs without gradient and, if ``pk.sparsify`` thresholds are installed, with them in
    ``observe`` mode (dense), so the statistics are those of the dense model.

    Raises:
        ConfigError: the model has no centred DEFT probe (``DEFT(centre="threshold")``), no batch, or the
            batches hold no valid token.
    """
    probes = [p for p in deft_probes(model) if p.centred]
    if not probes:
        raise ConfigError("calibrate_centres: the model has no DEFT with centre='threshold'; apply "
                          "pk.DEFT(centre='threshold') first")
    if not batches:
        raise ConfigError("calibrate_centres: the calibration set is empty; pass a few batches")
    per_batch = max(1, MAX_VALUES // len(batches))
    gen = torch.Generator().manual_seed(SUBSAMPLE_SEED)
    stats: list[list[torch.Tensor]] = [[] for _ in probes]
    thresholds = [m for m in model.modules() if isinstance(m, ActivationThreshold)]
    modes = [m.mode for m in thresholds]

    def collect(mask: torch.Tensor | None) -> None:
        for i, p in enumerate(probes):
            v = valid_rows(p.last_abs.float(), mask).reshape(-1).cpu()  # type: ignore[union-attr]
            if v.numel() > per_batch:
                v = v[torch.randint(v.numel(), (per_batch,), generator=gen)]
            stats[i].append(v)
            p.last_abs = None

    for p in probes:
        p.observe = True
    for m in thresholds:
        m.mode = "observe"
    try:
        _forward_all(model, batches, keep_labels, collect)
    finally:
        for p in probes:
            p.observe, p.last_abs = False, None
        for m, mode in zip(thresholds, modes):
            m.mode, m.last_input, m.last_output = mode, None, None
    taus: dict[str, float] = {}
    for i, p in enumerate(probes):
        v = torch.cat(stats[i])
        if v.numel() == 0:
            raise ConfigError("calibrate_centres: the calibration batches hold no valid token")
        taus[p.name] = p.tau = quantile(v, p.centre_q, "magnitude")
    return taus
