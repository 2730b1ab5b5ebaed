"""``DeftLoss``: the AuxLossModule ``pk.aux_loss`` finds; sums the weighted terms of DEFT's probes.

"From PEFT to DEFT" (Runwal, Pedapati, Chen, arXiv 2402.01911):

    aux_loss = sum over stacks g of weight_g * mean over (b, l in g) of d[b, l] = sum_l coef_l * last_term_l

with ``coef_l = weight_g / L_g`` for the ``L_g`` probes of stack ``g``.
"""

from __future__ import annotations

import torch
from torch import nn

from peftkit.core.errors import PeftkitError, UnsupportedError
from peftkit.methods.deft.masks import MaskContext
from peftkit.methods.deft.probe import DensityProbe


class DensityNaNError(PeftkitError, FloatingPointError):
    """DEFT's density term is NaN or infinite; the message names the layer."""


class DeftLoss(nn.Module):
    """The AuxLossModule of DEFT: the weighted density term of the last forward, checked for NaN / inf."""

    def __init__(self, probes: list[DensityProbe], ctx: MaskContext, check_finite: bool = True) -> None:
        super().__init__()
        self.probes = tuple(probes)  # a plain attribute: the probes live (and are registered) in the blocks
        self.ctx = ctx
        self.check_finite = check_finite

    def _current(self) -> list[DensityProbe]:
        stale = [p.name for p in self.probes if p.fired_at != self.ctx.generation]
        if self.ctx.generation == 0 and all(p.last_term is None for p in self.probes):
            raise PeftkitError("DEFT has no density term yet: run a forward pass before pk.aux_loss(model)")
        if stale:
            raise UnsupportedError(
                f"DEFT: the MLP activations at {stale[:3]}{'...' if len(stale) > 3 else ''} did not run in "
                "the last forward; a method applied with DEFT bypasses the backbone's mlp_act modules"
            )
        uncal = [p.name for p in self.probes if p.last_term is None and p.centred and p.tau is None]
        if uncal:
            raise PeftkitError(
                f"DEFT centre='threshold' has no threshold yet at {uncal[0]} ({len(uncal)} layers): call "
                "peftkit.methods.deft.centre.calibrate_centres(model, calib) (at the start of the "
                "sparsity-aware phase) before pk.aux_loss"
            )
        return list(self.probes)

    def stack_terms(self) -> dict[str, torch.Tensor]:
        """Stack -> its unweighted ``L_density`` (mean over samples and layers) of the last forward."""
        out: dict[str, list[torch.Tensor]] = {}
        for p in self._current():
            out.setdefault(p.stack, []).append(p.last_term)  # type: ignore[arg-type]
        return {k: torch.stack(v).mean() for k, v in out.items()}

    def aux_loss(self) -> torch.Tensor:
        """``sum_g weight_g * mean_{b, l in g} d[b, l]`` of the last forward (a scalar)."""
        probes = self._current()
        terms = torch.stack([p.last_term for p in probes])  # type: ignore[misc]  # [L]
        if self.check_finite and not bool(torch.isfinite(terms.detach()).all()):
            self._raise_non_finite(probes, terms.detach())
        coefs = torch.tensor([p.coef for p in probes], dtype=terms.dtype, device=terms.device)  # [L]
        return (coefs * terms).sum()

    def _raise_non_finite(self, probes: list[DensityProbe], terms: torch.Tensor) -> None:
        bad = [i for i in range(len(probes)) if not bool(torch.isfinite(terms[i]))]
        p = probes[bad[0]]
        raise DensityNaNError(
            f"DEFT density term is {terms[bad[0]].item()} at layer '{p.name}' ({p.stack} stack; "
            f"{len(bad)} of {len(probes)} layers non-finite). a^2/(a^2+eps) (eps={p.eps:g}) is finite for "
            "every |a| < 1e19, so that layer's activation holds NaN/inf or overflows: look upstream of DEFT "
            "(learning rate, dtype)"
        )
