"""Config of calibrated activation sparsity (``pk.sparsify``): which rule, which target, whether to fold.

CATS (Lee et al., arXiv 2404.08763) and TEAL (Liu et al., arXiv 2408.14690) zero every MLP activation below a
per-layer threshold calibrated as a quantile on a few hundred tokens. No heavy imports here.
"""

from __future__ import annotations

from dataclasses import dataclass

from peftkit.core.errors import ConfigError

RULES = ("magnitude", "sign")


@dataclass
class Sparsify:
    """Zero the MLP activations below a per-layer threshold tau_l (role ``mlp_act``; gated MLPs: the gate).

    magnitude rule (CATS / TEAL):  a' = a * [|a| >= tau_l],  tau_l = quantile_q(|a_l|) on calibration tokens
    sign rule (pre-activation):    a' = a * [x >= tau_l],    tau_l = quantile_q(x_l), x the activation's input

    With ``fold_mean`` the calibration mean of the zeroed part, mu_l[j] = E[h_j * (1 - m_j)] (h the
    down-projection's input, m the keep mask), is added back as a constant through the down-projection:
    ``y = W_out (h * m) + (b + W_out mu_l)``.

    Attributes:
        target_sparsity: q, the fraction of activations zeroed on the calibration tokens, in [0, 1).
        rule: ``"magnitude"`` or ``"sign"``.
        fold_mean: fold mu_l into the down-projection's bias.
        allow_training: let a model in training mode be sparsified (sparsity-aware fine-tuning: the threshold
            applies in the forward pass, gradients pass straight through it).
    """

    target_sparsity: float = 0.5
    rule: str = "magnitude"
    fold_mean: bool = False
    allow_training: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.target_sparsity, bool) or not isinstance(self.target_sparsity, (int, float)):
            raise ConfigError(f"target_sparsity must be a number in [0, 1), got {self.target_sparsity!r}")
        self.target_sparsity = float(self.target_sparsity)
        if not 0.0 <= self.target_sparsity < 1.0:
            raise ConfigError(f"target_sparsity must be in [0, 1) (the fraction of MLP activations zeroed), "
                              f"got {self.target_sparsity}")
        if self.rule not in RULES:
            raise ConfigError(f"sparsify rule must be one of {RULES}, got {self.rule!r}")
