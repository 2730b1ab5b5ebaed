"""The optional measurements of a training run; they live in :mod:`peftkit.measure.training` (layer 3)."""

from __future__ import annotations

from peftkit.measure.training import PeakMemory, check_hooks, density, saved_activation_bytes

__all__ = ["PeakMemory", "check_hooks", "density", "saved_activation_bytes"]
