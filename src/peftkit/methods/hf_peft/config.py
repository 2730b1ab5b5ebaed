"""Configs of the methods peftkit runs through Hugging Face peft (not rewritten). No heavy imports here.

Papers:
    LoRA   Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022, arXiv 2106.09685.
    DoRA   Liu et al., "DoRA: Weight-Decomposed Low-Rank Adaptation", ICML 2024, arXiv 2402.09353.
    QLoRA  Dettmers et al., "QLoRA: Efficient Finetuning of Quantized LLMs", NeurIPS 2023, arXiv 2305.14314.
    IA3    Liu et al., "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context
           Learning", NeurIPS 2022, arXiv 2205.05638.
    Prompt Lester et al., "The Power of Scale for Parameter-Efficient Prompt Tuning", EMNLP 2021,
           arXiv 2104.08691.
    Prefix Li & Liang, "Prefix-Tuning: Optimizing Continuous Prompts for Generation", ACL 2021,
           arXiv 2101.00190.

Targets are backbone *roles* (``attn_q``, ``mlp_out`` ...), resolved to exact module paths by the spec (so the
defaults work on every family: on a backbone with a fused qkv projection, ``attn_q`` / ``attn_v`` adapt it),
or peft's own spellings: module names (``["q_proj", "v_proj"]``) and ``"all-linear"``.
"""

from __future__ import annotations

from dataclasses import dataclass

from peftkit.core.errors import ConfigError


def _targets(cls: str, targets: tuple[str, ...] | list[str] | str) -> tuple[str, ...]:
    """Targets as a tuple: roles (``attn_q``), peft-style module names (``q_proj``) or ``"all-linear"``."""
    if isinstance(targets, str):
        targets = (targets,)
    ok = isinstance(targets, (list, tuple)) and targets and all(isinstance(t, str) and t for t in targets)
    if not ok:
        raise ConfigError(
            f"{cls}.targets must be a non-empty list of role names (attn_q, mlp_out, ...), module names "
            f"(q_proj, ...) or 'all-linear', got {targets!r}"
        )
    return tuple(targets)


@dataclass
class _LowRank:
    """Fields shared by LoRA, DoRA and QLoRA: W x + (alpha / rank) * B A x (Hu et al. 2022, eq. 3)."""

    rank: int = 8                                   # r; Hu et al. 2022 use r = 8 in their GLUE runs
    alpha: float = 16                               # the update is scaled by alpha / r; alpha = 2r is common
    dropout: float = 0.0                            # dropout on the LoRA branch input
    targets: tuple[str, ...] = ("attn_q", "attn_v")  # Hu et al. 2022 adapt W_q and W_v

    def __post_init__(self) -> None:
        name = type(self).__name__
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank <= 0:
            raise ConfigError(f"{name}.rank must be a positive int, got {self.rank!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"{name}.dropout must be in [0, 1), got {self.dropout}")
        self.targets = _targets(name, self.targets)


@dataclass
class LoRA(_LowRank):
    """Low-rank update ``B A`` on each target Linear, B initialised to zero (peft's LoRA layer)."""


@dataclass
class DoRA(_LowRank):
    """LoRA on the direction of W plus a trained magnitude vector m: W' = m * (W + BA) / ||W + BA||_c."""


QUANT_BACKENDS = ("bnb", "torchao")


@dataclass
class QLoRA(_LowRank):
    """LoRA on a frozen 4-bit NF4 base: every Linear inside the blocks is quantised, then LoRA is injected.

    Attributes:
        backend: ``bnb`` (bitsandbytes ``Linear4bit``, runs on CPU) or ``torchao`` (``NF4Tensor`` weights).
        quant_type: ``nf4`` (QLoRA's NormalFloat4) or ``fp4`` (bnb only).
        block_size: weights per quantisation block.
        double_quant: also quantise the per-block scales (bnb: ``compress_statistics``).
        scaler_block_size: block size of that second quantisation (torchao only).
    """

    backend: str = "bnb"
    quant_type: str = "nf4"          # Dettmers et al. 2023: 4-bit NormalFloat
    block_size: int = 64             # Dettmers et al. 2023: block size 64 for the weights
    double_quant: bool = True        # Dettmers et al. 2023: double quantisation of the constants
    scaler_block_size: int = 256     # Dettmers et al. 2023: block size 256 for the quantised constants

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.backend not in QUANT_BACKENDS:
            raise ConfigError(f"QLoRA.backend must be one of {list(QUANT_BACKENDS)}, got {self.backend!r}")
        if self.quant_type not in ("nf4", "fp4") or (self.backend == "torchao" and self.quant_type != "nf4"):
            raise ConfigError(
                f"QLoRA.quant_type {self.quant_type!r} is not available with backend {self.backend!r}"
            )
        if self.block_size <= 0 or self.scaler_block_size <= 0:
            raise ConfigError("QLoRA.block_size and scaler_block_size must be positive")


@dataclass
class IA3:
    """Learned rescaling vectors: k <- l_k * k, v <- l_v * v, and the FFN input of ``mlp_out`` by l_ff.

    Attributes:
        targets: roles whose Linear gets a vector (on its output, or its input for feedforward roles).
        feedforward: the subset of ``targets`` scaled on the input (IA3's l_ff before W_2).
    """

    targets: tuple[str, ...] = ("attn_k", "attn_v", "mlp_out")   # Liu et al. 2022: keys, values, FFN
    feedforward: tuple[str, ...] = ("mlp_out",)                  # l_ff rescales the FFN's inner activation

    def __post_init__(self) -> None:
        self.targets = _targets("IA3", self.targets)
        self.feedforward = tuple(self.feedforward) if isinstance(self.feedforward, (list, tuple)) else (
            (self.feedforward,) if isinstance(self.feedforward, str) else self.feedforward)
        extra = sorted(set(self.feedforward) - set(self.targets))
        if extra:
            raise ConfigError(
                f"IA3.feedforward roles {extra} must also be in IA3.targets {list(self.targets)}"
            )


@dataclass
class PromptTuning:
    """Trainable soft-prompt embeddings prepended to the input (needs a Hugging Face model).

    Attributes:
        num_virtual_tokens: prompt length.
        init: ``random`` or ``text`` (copy the embeddings of ``init_text``'s tokens, repeated to the length).
        init_text: the text for ``init="text"``.
        tokenizer: tokenizer folder for ``init="text"``; None = the backbone's own tokenizer.
    """

    num_virtual_tokens: int = 20     # Lester et al. 2021 study lengths 1-150; 20 is peft's common choice
    init: str = "random"
    init_text: str = ""
    tokenizer: str | None = None

    def __post_init__(self) -> None:
        if self.num_virtual_tokens <= 0:
            raise ConfigError(f"PromptTuning.num_virtual_tokens must be > 0, got {self.num_virtual_tokens}")
        if self.init not in ("random", "text"):
            raise ConfigError(f"PromptTuning.init must be 'random' or 'text', got {self.init!r}")
        if self.init == "text" and not self.init_text:
            raise ConfigError("PromptTuning.init='text' needs a non-empty init_text")


@dataclass
class PrefixTuning:
    """Trainable key/value prefixes in every attention layer (needs a Hugging Face model).

    Attributes:
        num_virtual_tokens: prefix length.
        projection: reparametrise the prefix through an MLP (Li & Liang 2021, section 4.3).
        projection_dim: that MLP's hidden width.
    """

    num_virtual_tokens: int = 20     # Li & Liang 2021 use lengths 10-200 by task; 20 is our default
    projection: bool = False         # Li & Liang 2021 train through an MLP reparametrisation for stability
    projection_dim: int = 512        # our default width of that MLP (peft's encoder_hidden_size)

    def __post_init__(self) -> None:
        if self.num_virtual_tokens <= 0:
            raise ConfigError(f"PrefixTuning.num_virtual_tokens must be > 0, got {self.num_virtual_tokens}")
        if self.projection_dim <= 0:
            raise ConfigError(f"PrefixTuning.projection_dim must be > 0, got {self.projection_dim}")
