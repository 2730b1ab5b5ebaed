"""Optional measurements of a run, delegated to the areas that own them (imported only when asked for).

- ``train.measure_density``: ``peftkit.methods.deft.metrics.density_report(model, loader, pad_key=...)``
  on the final evaluation split, stored as ``density/<name>``.
- ``train.measure_memory``: ``peftkit.bench.memory.saved_activation_bytes(model, batch, loss_fn)`` once on
  the first training batch (``batch`` = inputs + labels, ``loss_fn(output, batch) -> loss``; RNG streams and
  gradients left as they were), and the peak memory of the training steps: CUDA ``max_memory_allocated``,
  CPU peak RSS (``ru_maxrss``) over the RSS after the model was built.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import resource
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from peftkit.core.errors import UnsupportedError

DENSITY = ("peftkit.methods.deft.metrics", "density_report")
MEMORY = ("peftkit.bench.memory", "saved_activation_bytes")


def _hook(where: tuple[str, str], flag: str) -> Callable[..., Any]:
    module, fn = where
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        raise UnsupportedError(f"train.{flag} needs {module}.{fn}, which is not available in this install")
    return getattr(importlib.import_module(module), fn)


def check_hooks(measure_density: bool, measure_memory: bool) -> None:
    """Fail before training, not after, when a requested measurement is not available."""
    if measure_density:
        _hook(DENSITY, "measure_density")
    if measure_memory:
        _hook(MEMORY, "measure_memory")


def density(model: nn.Module, loader: Iterable[Any], pad_key: str | None) -> dict[str, float]:
    report = _hook(DENSITY, "measure_density")(model, loader, pad_key=pad_key)
    return {f"density/{k}": float(v) for k, v in report.items()}


def saved_activation_bytes(
    model: nn.Module, inputs: dict[str, torch.Tensor], loss_fn: Callable[[Any], torch.Tensor]
) -> int:
    """Bytes saved for backward by one step on ``inputs``; leaves RNG streams and gradients as they were."""
    fn = _hook(MEMORY, "measure_memory")
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        out = int(fn(model, inputs, loss_fn))
    for p in model.parameters():
        p.grad = None
    return out


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


class PeakMemory:
    """Peak memory of the training steps (see the module docstring)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        self.baseline = _rss_bytes()

    def peak_bytes(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        return max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self.baseline)
