"""The reversible coupling of MEFT and the RNG record that makes its recomputation exact.

"Make Pre-trained Model Reversible" (Liao, Tan, Monz; NeurIPS 2023; arXiv 2306.00477), Sec. 3, in our names
(h1 = x1, h2 = x2 going in, y1, y2 coming out):

    forward:  y1 = lam  * x1 + F(x2)            inverse:  x2 = (y2 - G(y1)) / beta
              y2 = beta * x2 + G(y1)                      x1 = (y1 - F(x2)) / lam

MEFT1/2 swap the streams after each layer (the layer outputs (y2, y1)); MEFT3 does not.
RevNet is lam = beta = 1.

Dropout inside F and G must draw the same masks when backward recomputes them: the RNG state before each of
F and G is recorded in forward and replayed inside ``torch.random.fork_rng``, so the global generator is never
reseeded and is left as it was after the replay.

Shape legend: b batch, t tokens, d model width (each stream is [b, t, d]).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class RngState:
    """The CPU generator state and, for a CUDA tensor, that device's generator state."""

    cpu: torch.Tensor
    device: torch.device
    accel: torch.Tensor | None

    @classmethod
    def capture(cls, device: torch.device) -> RngState:
        accel = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        return cls(torch.get_rng_state(), device, accel)

    @contextmanager
    def replay(self) -> Iterator[None]:
        """Run the body with the recorded state; the global state afterwards is what it was before."""
        devices = [self.device] if self.accel is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu)
            if self.accel is not None:
                torch.cuda.set_rng_state(self.accel, self.device)
            yield


class Coupling(nn.Module):
    """One reversible layer: ``(x1, x2) -> (y1, y2)`` (or ``(y2, y1)`` when ``switch``), both [b, t, d]."""

    def __init__(self, f: nn.Module, g: nn.Module, lam: float, beta: float, switch: bool) -> None:
        super().__init__()
        self.f, self.g = f, g
        self.lam, self.beta, self.switch = float(lam), float(beta), bool(switch)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, ctx: dict[str, Any],
                record: list[RngState] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply the coupling; when ``record`` is a list, append the RNG state before F and before G."""
        if record is not None:
            record.append(RngState.capture(x2.device))
        y1 = self.lam * x1 + self.f(x2, ctx)
        if record is not None:
            record.append(RngState.capture(y1.device))
        y2 = self.beta * x2 + self.g(y1, ctx)
        return (y2, y1) if self.switch else (y1, y2)

    def unswitch(self, o1: torch.Tensor, o2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The coupling's own (y1, y2) from what it output (also maps output gradients the same way)."""
        return (o2, o1) if self.switch else (o1, o2)

    def inverse(self, o1: torch.Tensor, o2: torch.Tensor, ctx: dict[str, Any],
                record: list[RngState] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstruct ``(x1, x2)`` from the outputs; ``record`` replays the forward's dropout masks."""
        y1, y2 = self.unswitch(o1, o2)
        with record[1].replay() if record else _nothing():
            x2 = (y2 - self.g(y1, ctx)) / self.beta
        with record[0].replay() if record else _nothing():
            x1 = (y1 - self.f(x2, ctx)) / self.lam
        return x1, x2

    def extra_repr(self) -> str:
        return f"lam={self.lam:g}, beta={self.beta:g}, switch={self.switch}"


@contextmanager
def _nothing() -> Iterator[None]:
    yield
