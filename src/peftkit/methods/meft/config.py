"""Config of MEFT (reversible): "Make Pre-trained Model Reversible: From Parameter to Memory Efficient
Fine-Tuning" (Liao, Tan, Monz; NeurIPS 2023; arXiv 2306.00477).

Not the sparse-adapter "MEFT" of arXiv 2406.04984: peftkit's ``meft`` is the reversible one.

Each converted layer n is the coupling (paper notation -> our names)::

    h1_n = lam  * h1_{n-1} + F_n(h2_{n-1})      (lam  = λ, reference code: x1_factor)
    h2_n = beta * h2_{n-1} + G_n(h1_n)          (beta = β, reference code: x2_factor)

Variants (paper Fig. 4 c/d; defaults from BaohaoLiao/mefts ``scripts/bert_glue.sh``):

| variant | F                              | G                         | lam | beta | streams switched |
|---------|--------------------------------|---------------------------|-----|------|------------------|
| meft1   | PLM layer + parallel FFN adapter | adapter                 | 0.1 | 1    | yes              |
| meft2   | adapter                        | PLM layer + parallel FFN adapter | 1 | 0.1 | yes          |
| meft3   | attention block + adapter      | FFN block + adapter       | 0.1 | 0.1  | no               |
"""

from __future__ import annotations

from dataclasses import dataclass

from peftkit.core.errors import ConfigError

VARIANTS = ("meft1", "meft2", "meft3")
STREAM_DTYPES = ("auto", "model", "float32", "float64")
LOW_PRECISION = ("bfloat16", "float16", "half", "bf16", "fp16")
ON_ERROR = ("warn", "raise")

# (lam, beta, switch) per variant: scripts/bert_glue.sh of BaohaoLiao/mefts (x1_factor, x2_factor) and the
# paper's Fig. 4; "switch" is the stream swap after every layer of MEFT1/2 (cat([y2, y1]) in the reference).
VARIANT_DEFAULTS: dict[str, tuple[float, float, bool]] = {
    "meft1": (0.1, 1.0, True),
    "meft2": (1.0, 0.1, True),
    "meft3": (0.1, 0.1, False),
}


@dataclass
class MEFT:
    """Turn a pretrained transformer into a reversible two-stream one with adapters (only adapters train).

    Attributes:
        variant: ``"meft1"``, ``"meft2"`` or ``"meft3"`` (which callables become F and G; table above).
        lam: λ, the scale of stream 1; None takes the variant's default.
        beta: β, the scale of stream 2; None takes the variant's default.
        adapter_dim: bottleneck width r of every adapter.
        num_rev_layers: the lower k layers use the reversible backward, the rest plain autograd through the
            same coupling; None means all layers, 0 means "MEFT architecture with vanilla gradient".
        use_reversible_backward: False runs the identical maths with plain autograd (the oracle / fallback).
        adapter_init_std: σ of the N(0, σ²) init of both adapter matrices (biases start at zero).
        adapter_dropout: dropout inside each adapter; None takes the backbone's hidden dropout.
        adapter_act: adapter non-linearity (``gelu``, ``gelu_tanh``, ``relu``, ``silu``); None takes the
            backbone's ``hidden_act``.
        stream_dtype: dtype of the two streams and their coupling arithmetic; F and G still compute in the
            model's dtype (or under the caller's autocast). ``"auto"`` (default): float32, for float32 and for
            bf16/fp16 models alike; the reconstruction error is then held under ``tolerance`` by anchors.
            ``"float64"``: near-exact reconstruction at twice the stream memory. ``"model"``: the model's
            dtype, as the reference code (refused for a bf16/fp16 model). bf16/fp16 streams are refused: the
            inverse divides by lam or beta every layer, so their rounding (4e-3 / 5e-4) grows ~10x per layer.
        anchor_every: ``"auto"`` (default): on the first reversible training step, invert the stack once
            (same dropout masks), measure every layer input's reconstruction error, and keep the fewest
            exact stream pairs ("anchors", placed greedily from the top) that hold every layer input under
            ``tolerance / calibration_margin``. An int k >= 1: an anchor at the input of every k-th reversible
            layer (bottom one included); 0: none (the paper: only the two output streams are kept).
        tolerance: the bound on the relative reconstruction error of any layer input, in (0, 0.5].
        calibration_margin: ``"auto"`` anchors aim at ``tolerance / calibration_margin`` on the calibration
            batch, so that other batches (whose rounding differs) stay under ``tolerance``; >= 1. A layer's
            error is measured there in full and on the check's sample (the larger counts), so the check
            agrees with the calibration on the calibration batch.
        calibration_batches: k >= 1: the ``"auto"`` anchors hold on the first k training batches (and after
            each re-calibration, on the k batches that follow): batch 1 chooses them, batches 2..k each keep
            those and add the anchors that batch needs (one extra no-grad forward and inversion per step
            for k steps). Why: under bf16 autocast a layer's one-step inversion error is bimodal, ~3e-7 on
            most batches and 1e-3 to 3e-2 on those where a last-bit difference of the reconstructed input
            rounds to another bf16 value inside F; only an anchor at that layer removes it, and one batch
            may not show which layers do this (docs/methods/meft.md). ``calibration_nudges`` finds them on
            one batch and is the default remedy; k = 4 held the tolerance on 39 of 40 measured steps.
        adaptive_margin: when the check finds an error e > ``tolerance`` (with ``anchor_every="auto"``), the
            margin of the next calibrations is multiplied by ``e / tolerance`` (the measured excess), so it
            grows until the anchors hold; it never shrinks.
        sticky_anchors: with ``anchor_every="auto"``, a re-calibration keeps the anchors in use and adds one
            at the topmost layer whose check failed, so the anchors only grow (at most one per layer) and a
            layer whose inversion failed once is never reconstructed again; False: each re-calibration
            chooses afresh on its batch(es).
        calibration_nudges: R >= 0: each calibration also inverts every layer alone R times from its exact
            outputs times (1 + u eps), u ~ U(-1, 1) (the last-bit difference a reconstructed stream
            carries); a layer whose inversion turns that into an error over ``tolerance`` becomes an
            anchor. This finds, on one batch, the layers where a 16-bit rounding inside F or G can flip
            (costs R forwards per calibration). ``"auto"`` (default): 4 when F and G compute in 16 bits (a
            bf16/fp16 model or a 16-bit autocast; measured on SmolLM2 under bf16 autocast: every one of 40
            training steps within the tolerance, 24 anchors of 30 instead of 15-17), 0 in fp32/fp64.
        recalibrate_at: with ``anchor_every="auto"``, the anchors are chosen again at the next step when the
            check finds an error above ``recalibrate_at * tolerance``, in (0, 1]; 1 (default) = only after an
            error over the tolerance; e.g. 0.5 re-calibrates on drift before it crosses the tolerance (only
            errors over the tolerance warn).
        check_every: every N-th reversible backward compares each reconstructed layer input with a sample of
            its true values saved in forward (4,096 elements per stream, negligible memory) and acts when the
            relative error exceeds ``tolerance`` (0 = off).
        on_error: what the check does then: ``"warn"`` (once per stack, naming the layer and the error;
            with ``anchor_every="auto"`` the anchors are also chosen again at the next step) or
            ``"raise"`` (:class:`~peftkit.methods.meft.checks.ReconstructionError`, from ``loss.backward()``).
        bounded_attention: compute attention with dropout head group by head group inside F and G
            (:mod:`peftkit.methods.meft.attention`), so the recomputed layer never holds the math path's
            [b, h, t, t] graph; costs one more pass over the attention core in backward. False keeps the
            backbone's own attention (less time, a higher step peak when dropout is on).
    """

    variant: str = "meft1"
    lam: float | None = None
    beta: float | None = None
    adapter_dim: int = 8                 # adapter_bottleneck_dim=8 in bert_glue.sh
    num_rev_layers: int | None = None    # REVLAYERS=12 of 12 (all) in bert_glue.sh
    use_reversible_backward: bool = True
    adapter_init_std: float = 0.02       # "W_down, W_up ~ N(0, σ²) and σ = 0.02" (paper, Fig. 4 caption)
    adapter_dropout: float | None = None  # reference adapter: config.hidden_dropout_prob (models/modules.py)
    adapter_act: str | None = None       # reference adapter uses ACT2FN[config.hidden_act]
    stream_dtype: str = "auto"          # not in the paper (the reference keeps the model dtype): fp32 streams
    anchor_every: int | str = "auto"     # not in the paper (0 = its behaviour): anchors chosen by measurement
    tolerance: float = 1e-3              # bound on any layer input's relative reconstruction error
    calibration_margin: float = 4.0
    calibration_batches: int = 1
    adaptive_margin: bool = False
    recalibrate_at: float = 1.0
    sticky_anchors: bool = False
    calibration_nudges: int | str = "auto"
    check_every: int = 1
    on_error: str = "warn"
    bounded_attention: bool = True       # not in the paper: attention dropout in bounded memory (docs)

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ConfigError(f"MEFT variant '{self.variant}' is unknown; choose one of: "
                              f"{', '.join(VARIANTS)}")
        for name in ("lam", "beta"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ConfigError(f"MEFT {name} must be > 0 (the inverse divides by it), got {v}")
        if self.adapter_dim < 1:
            raise ConfigError(f"MEFT adapter_dim must be >= 1, got {self.adapter_dim}")
        if self.num_rev_layers is not None and self.num_rev_layers < 0:
            raise ConfigError(f"MEFT num_rev_layers must be >= 0 or None (all), got {self.num_rev_layers}")
        if self.adapter_init_std < 0:
            raise ConfigError(f"MEFT adapter_init_std must be >= 0, got {self.adapter_init_std}")
        if self.adapter_dropout is not None and not 0.0 <= self.adapter_dropout < 1.0:
            raise ConfigError(f"MEFT adapter_dropout must be in [0, 1), got {self.adapter_dropout}")
        if self.stream_dtype in LOW_PRECISION:
            raise ConfigError(f"MEFT stream_dtype '{self.stream_dtype}' is refused: the inverse divides by "
                              "lam or beta (0.1) every layer, so a 16-bit stream's rounding grows ~10x per "
                              "layer and the gradients go wrong; use 'auto' (float32; the model may stay "
                              "bf16/fp16)")
        if self.stream_dtype not in STREAM_DTYPES:
            raise ConfigError(f"MEFT stream_dtype '{self.stream_dtype}' is unknown; choose one of: "
                              f"{', '.join(STREAM_DTYPES)}")
        k = self.anchor_every
        if k != "auto" and (isinstance(k, bool) or not isinstance(k, int) or k < 0):
            raise ConfigError(f"MEFT anchor_every must be 'auto' or an integer >= 0 (0 = no anchors), got "
                              f"{self.anchor_every!r}")
        if not 0 < self.tolerance <= 0.5:
            raise ConfigError(f"MEFT tolerance must be in (0, 0.5] (a relative error), got {self.tolerance}")
        if not self.calibration_margin >= 1:
            raise ConfigError(f"MEFT calibration_margin must be >= 1, got {self.calibration_margin}")
        k = self.calibration_batches
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"MEFT calibration_batches must be an integer >= 1 (batches the anchors hold "
                              f"on), got {k!r}")
        for name in ("adaptive_margin", "sticky_anchors"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"MEFT {name} must be true or false, got {getattr(self, name)!r}")
        r = self.calibration_nudges
        if r != "auto" and (isinstance(r, bool) or not isinstance(r, int) or r < 0):
            raise ConfigError(f"MEFT calibration_nudges must be 'auto' or an integer >= 0 (nudged inversions "
                              f"per layer), got {r!r}")
        if not 0 < self.recalibrate_at <= 1:
            raise ConfigError(f"MEFT recalibrate_at must be in (0, 1] (a fraction of the tolerance), got "
                              f"{self.recalibrate_at}")
        if self.check_every < 0:
            raise ConfigError(f"MEFT check_every must be >= 0 (0 = off), got {self.check_every}")
        if self.on_error not in ON_ERROR:
            raise ConfigError(f"MEFT on_error must be one of {', '.join(ON_ERROR)}, got '{self.on_error}'")

    def resolved(self) -> tuple[float, float, bool]:
        """(lam, beta, switch) with the variant's defaults filled in."""
        lam, beta, switch = VARIANT_DEFAULTS[self.variant]
        lam = lam if self.lam is None else float(self.lam)
        beta = beta if self.beta is None else float(self.beta)
        return lam, beta, switch
