"""The optional measurements of a training run (``train.measure_density``, ``train.measure_memory``).

- ``density``: DEFT's ``density_report(model, loader, pad_key=...)`` on the final evaluation split, stored
  as ``density/<name>``.
- ``saved_activation_bytes``: :func:`peftkit.measure.saved.saved_activation_bytes` once on the first
  training batch, leaving RNG streams and gradients as they were.
- ``PeakMemory`` (:mod:`peftkit.measure.peak`): the peak memory of the training steps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from peftkit.measure.peak import PeakMemory
from peftkit.measure.saved import saved_activation_bytes as _saved_bytes

__all__ = ["PeakMemory", "check_hooks", "density", "saved_activation_bytes"]


def check_hooks(measure_density: bool, measure_memory: bool) -> None:
    """Fail before training, not after, when a requested measurement is not available (both ship with
    peftkit, so this only imports DEFT's metrics early)."""
    if measure_density:
        from peftkit.methods.deft.metrics import density_report  # noqa: F401


def density(model: nn.Module, loader: Iterable[Any], pad_key: str | None) -> dict[str, float]:
    from peftkit.methods.deft.metrics import density_report

    report = density_report(model, loader, pad_key=pad_key)
    return {f"density/{k}": float(v) for k, v in report.items()}


def saved_activation_bytes(
    model: nn.Module, inputs: dict[str, torch.Tensor], loss_fn: Callable[[Any], torch.Tensor]
) -> int:
    """Bytes saved for backward by one step on ``inputs``; leaves RNG streams and gradients as they were."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        out = int(_saved_bytes(model, inputs, loss_fn))
    for p in model.parameters():
        p.grad = None
    return out
