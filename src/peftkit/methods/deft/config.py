"""Config of DEFT, the activation-density loss.

"From PEFT to DEFT: Parameter Efficient Finetuning for Reducing Activation Density in Transformers",
Runwal, Pedapati, Chen, arXiv 2402.01911. Not peft's unrelated (decompositional) DEFT: ours is ``deft``,
the density loss. No heavy imports here: configs are built before any model is.
"""

from __future__ import annotations

from dataclasses import dataclass

from peftkit.core.configs import coerce_scalar
from peftkit.core.errors import ConfigError

CENTRES = ("zero", "threshold")


@dataclass
class DEFT:
    """Add ``weight * L_density`` to the task loss: a smooth-L0 penalty on every MLP activation.

    ``L_density = mean over (sample b, layer l) of mean over (token t, unit j) of a^2 / (a^2 + eps)``, where
    ``a`` is the output of each block's ``mlp_act`` (BERT ``intermediate_act_fn``, T5 ``DenseReluDense.act``,
    Llama ``mlp.act_fn``, the point transformer's ``mlp.act``). DEFT trains no parameter; it is stacked on a
    PEFT method (``[pk.LoRA(), pk.DEFT()]``) and read through ``pk.aux_loss(model)``.

    Attributes:
        weight: coefficient of the density term (encoder stack of an encoder-decoder, or the only stack).
            1.0 is ``weight_l`` in IBM/DEFT ``glue.sh``.
        eps: the surrogate's epsilon; a^2/(a^2+eps) is 1/2 at |a| = sqrt(eps). 1e-7 is the value of
            ``glue.sh`` / ``squad.sh`` (``prompt_tune.py`` defaults to 20, an L2 penalty: pin it here).
        decoder_weight: coefficient of the decoder stack's term in an encoder-decoder (T5). 1.0 as in the
            reference SQuAD trainer, where the encoder and decoder terms are added unweighted.
        exclude_padding: average only over non-padding positions (needs the attention mask). The reference
            counts padding (False), so the default reproduces it.
        exclude_virtual_tokens: leave out the virtual tokens of prompt tuning (they pass through every MLP).
            The reference counts them (False). Prefix-tuning tokens never reach an MLP.
        prune: fraction of each frozen block ``Linear`` weight zeroed by magnitude (unstructured, per matrix)
            before fine-tuning; 0 = no pruning. The paper reports DEFT on pruned bases (the fraction used
            there is not in the public code; 0.5 is the usual choice).
        check_finite: raise, naming the layer, when the density term is NaN or infinite (one host sync per
            step).
        centre: ``"zero"`` (the paper: a^2 / (a^2 + eps)) or ``"threshold"`` (not in the paper: the
            threshold-aware surrogate r^2 / (r^2 + eps), r = relu(|a| - tau_l), which counts only what lies
            above the layer's calibrated magnitude threshold tau_l; see ``density.py``). A centred DEFT has no
            term until ``calibrate_centres(model, calib)`` sets tau_l (at the start of the sparsity-aware
            phase); ``pk.aux_loss`` raises before that.
        centre_q: target sparsity whose calibrated magnitude threshold is tau_l (``pk.sparsify``'s
            calibration: the q-quantile of |a_l| over the calibration tokens). Used only with
            ``centre="threshold"``.
    """

    weight: float = 1.0              # IBM/DEFT glue.sh: --weight_l 1.0
    eps: float = 1e-7                # IBM/DEFT glue.sh / squad.sh: --eps 1e-7
    decoder_weight: float = 1.0      # IBM/DEFT SQuAD/deft_trainer.py: task + L_enc + L_dec
    exclude_padding: bool = False    # reference: padding positions counted
    exclude_virtual_tokens: bool = False  # reference: prompt-tuning virtual tokens counted
    prune: float = 0.0
    check_finite: bool = True
    centre: str = "zero"             # the paper; "threshold" is ours
    centre_q: float = 0.9

    def __post_init__(self) -> None:
        for name in ("weight", "eps", "decoder_weight", "prune", "centre_q"):
            setattr(self, name, coerce_scalar(getattr(self, name), float, f"DEFT {name}"))
        if not (self.weight >= 0.0):
            raise ConfigError(f"DEFT weight must be >= 0, got {self.weight}")
        if not (self.decoder_weight >= 0.0):
            raise ConfigError(f"DEFT decoder_weight must be >= 0, got {self.decoder_weight}")
        if not (self.eps > 0.0):
            raise ConfigError(f"DEFT eps must be > 0 (a^2/(a^2+eps) is 0/0 at a = 0), got {self.eps}")
        if not (0.0 <= self.prune < 1.0):
            raise ConfigError(f"DEFT prune must be a fraction in [0, 1), got {self.prune}")
        if self.centre not in CENTRES:
            raise ConfigError(f"DEFT centre must be one of {list(CENTRES)}, got {self.centre!r}")
        if not (0.0 < self.centre_q < 1.0):
            raise ConfigError(f"DEFT centre_q must be a target sparsity in (0, 1), got {self.centre_q}")
