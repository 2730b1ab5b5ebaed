"""The two reference points every PEFT table needs: full fine-tuning and head-only (linear probe)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class FullFineTune:
    """Train every parameter of the backbone (and the head)."""


@dataclass
class HeadOnly:
    """Train the task head only (a linear probe on frozen features)."""
