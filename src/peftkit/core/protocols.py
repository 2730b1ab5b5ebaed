"""The two contracts every peftkit module honours.

A module that a method adds to a model declares the parameters it owns through
``adapter_params()``; freezing, counting, saving and the optimizer all derive from that
declaration, never from substrings of parameter names (torchtune's ``AdapterModule``).
A module that contributes a regulariser exposes ``aux_loss()`` (DEFT's density term).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class AdapterModule(Protocol):
    """A module added by a method; its trainable parameters are declared, not guessed."""

    def adapter_params(self) -> list[str]:
        """Local names (as in ``self.named_parameters()``) of the parameters this module adds."""
        ...


@runtime_checkable
class AuxLossModule(Protocol):
    """A module that accumulates an auxiliary loss during forward (e.g. DEFT's density term)."""

    def aux_loss(self) -> torch.Tensor:
        """The weighted auxiliary loss of the last forward pass (a scalar tensor)."""
        ...
