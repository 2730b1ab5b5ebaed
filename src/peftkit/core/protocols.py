"""The two contracts every peftkit module honours.

A module that a method adds to a model declares the parameters it owns through
``adapter_params()``; freezing, counting, saving and the optimizer all derive from that
declaration, never from substrings of parameter names (torchtune's ``AdapterModule``).
A module that contributes a regulariser exposes ``aux_loss()`` (DEFT's density term). A module inside a block
that computes a per-forward term (DEFT's density probe) is a ``RecomputableTerm``: a method that re-runs the
block's forward in its own backward (MEFT) finds it by this protocol, never by its class or module name.
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


@runtime_checkable
class RecomputableTerm(Protocol):
    """A module inside a block whose forward stores an auxiliary term in ``last_term``.

    Contract: a forward under ``torch.enable_grad()`` sets ``last_term`` to a scalar connected to the graph
    of that forward (or leaves it ``None`` when the term does not apply to this input); a method that
    recomputes the block (MEFT's reversible backward) clears ``last_term``, re-runs the forward, and
    back-propagates the gradient the term received into the recomputed graph.
    """

    last_term: torch.Tensor | None
