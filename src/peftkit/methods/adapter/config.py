"""Config of the bottleneck adapters (Houlsby serial, Pfeiffer, parallel). No heavy imports here.

Papers:
    Houlsby et al., "Parameter-Efficient Transfer Learning for NLP", ICML 2019, arXiv 1902.00751.
    Pfeiffer et al., "AdapterFusion: Non-Destructive Task Composition for Transfer Learning", EACL 2021,
        arXiv 2005.00247 (the single adapter after the FFN).
    He et al., "Towards a Unified View of Parameter-Efficient Transfer Learning", ICLR 2022,
        arXiv 2110.04366 (the parallel adapter and its scale s).
"""

from __future__ import annotations

from dataclasses import dataclass

from peftkit.core.errors import ConfigError

KINDS = ("houlsby", "pfeiffer", "parallel")
ACTIVATIONS = ("relu", "gelu", "silu")


@dataclass
class Adapter:
    """A bottleneck adapter ``up(act(down(h)))`` placed by backbone roles.

    Attributes:
        kind: ``houlsby`` (after the attention output and after the FFN output), ``pfeiffer`` (after the
            FFN output only) or ``parallel`` (beside the FFN, fed with the FFN's input).
        bottleneck: bottleneck width m; when None it is ``hidden // reduction_factor``.
        reduction_factor: hidden / m when ``bottleneck`` is None.
        activation: the non-linearity between the two projections.
        init_scale: std of the normal init of the down projection; the up projection starts at zero so the
            adapted model computes exactly the pretrained function at step 0.
        scale: s, the factor on the parallel branch (parallel only).
    """

    kind: str = "pfeiffer"                # Pfeiffer et al. 2021: FFN-only placement as good as Houlsby's
    bottleneck: int | None = None
    reduction_factor: float = 16          # Pfeiffer et al. 2021 default reduction factor 16
    activation: str = "relu"              # Houlsby et al. 2019 and Pfeiffer et al. 2021 use ReLU
    init_scale: float = 1e-3              # Houlsby et al. 2019 near-identity init (std 1e-3 in their code)
    scale: float = 1.0                    # He et al. 2022 use s = 4 for the parallel adapter; 1 = plain sum

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"Adapter.kind must be one of {list(KINDS)}, got {self.kind!r}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(
                f"Adapter.activation must be one of {list(ACTIVATIONS)}, got {self.activation!r}"
            )
        if self.bottleneck is not None and (isinstance(self.bottleneck, bool) or self.bottleneck <= 0):
            raise ConfigError(f"Adapter.bottleneck must be a positive int or null, got {self.bottleneck!r}")
        if self.reduction_factor <= 0:
            raise ConfigError(f"Adapter.reduction_factor must be > 0, got {self.reduction_factor}")
        if self.init_scale < 0:
            raise ConfigError(f"Adapter.init_scale must be >= 0, got {self.init_scale}")

    def bottleneck_for(self, hidden: int) -> int:
        """The bottleneck width m for a site whose model width is ``hidden`` (at least 1)."""
        if self.bottleneck is not None:
            return int(self.bottleneck)
        return max(1, int(hidden // self.reduction_factor))
