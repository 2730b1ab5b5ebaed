"""Config of Point-PEFT (Tang et al., "Point-PEFT: Parameter-Efficient Fine-Tuning for 3D Pre-trained
Models", AAAI 2024, arXiv 2310.03059).

Every constant the reference code (``Ivan-Tang-3D/Point-PEFT``, ``MAE/models/Point_Mask_Rev_FT_scan_cp.py``)
hard-codes is a field here whose default is that value; the comment says where it comes from.
"""

from __future__ import annotations

from dataclasses import dataclass

from peftkit.core.errors import ConfigError


@dataclass
class PointPEFT:
    """Point-prior Prompt (fed by a P2-Bank) in the first ``prompt_layers`` blocks + a Geometry-aware Adapter
    after every block, on a frozen Point-MAE-family transformer.

    Ablations: ``use_prompt=False`` (adapter only), ``use_adapter=False`` (prompt only),
    ``use_bank=False`` (prompt tokens without the memory bank).
    """

    # ---- Point-prior Prompt (P2-Prompt) ----
    use_prompt: bool = True
    num_prompt_tokens: int = 10       # MAE code: num_tokens = 10 per prompted block; K = 10 - 2 retrieved
    prompt_layers: int = 6            # L: ``layer_id <= 5``, the first 6 of 12 blocks (paper Fig. 2)
    prompt_dropout: float = 0.1       # Dropout(0.1) on the prompt embeddings
    prompt_init_std: float = 0.02     # trunc_normal_(std=.02) for prompt embeddings and prompt coordinates
    prompt_adapter_dim: int = 8       # cp_adapter = AdapterSuper(384, reduction_dims=8)
    # ---- P2-Bank ----
    use_bank: bool = True             # False: learnable prompts only (the "prompt without bank" ablation)
    bank_path: str | None = None      # directory written by ``peftkit point-bank CONFIG``
    # Not in the paper: in training, read each cloud's query feature from the bank (its un-augmented
    # feature, stored when the bank was built) instead of a second forward of the frozen encoder. Needs
    # ``data.example_index=true`` and a bank built from the same training data. Evaluation is unchanged.
    cache_query: bool = False
    # ---- Geometry-aware Adapter (GA-Adapter) ----
    use_adapter: bool = True
    adapter_dim: int = 16             # adapter / adapter1 bottleneck (config "Adapter dim 16")
    adapter_dropout: float = 0.1      # adapter dropout 0.1 (every bottleneck adapter, cp_adapter included)
    mlp_adapter_scale: float = 0.7    # x = x + y + 0.7 * Adp(y) on the MLP output (hard-coded in MAE code)
    center_coef: float = 0.3          # u_s = GELU(BN(max X_s)) + 0.3 * T[s]   ("center_cof", hard-coded 0.3)
    propagate_coef: float = 0.3       # T_i += 0.3 * sum_s w_is u_s          ("propagate_cof", hard-coded 0.3)
    sub_center_ratio: float = 0.5     # FPS keeps G/2 of the token centres as sub-centres (128 -> 64)
    sub_group_ratio: float = 0.5      # kNN takes group_size/2 neighbours per sub-centre (32 -> 16)
    local_heads: int = 6              # shared local attention attn1: 6 heads ...
    local_head_dim: int = 3           # ... of 3 dims (qkv Linear 384 -> 54, out Linear 18 -> 384)
    local_drop_path: float = 0.1      # DropPath on the local attention, linspace(0, 0.1, depth) as the blocks
    interp_eps: float = 1e-8          # w_is = 1 / (||c_i - s||^2 + 1e-8), normalised over s
    # ---- what else trains (MAE/tools/runner_cache_prompt.py name list) ----
    train_block_biases: bool = True   # proj.bias, fc1.bias, fc2.bias, norm1.bias, norm2.bias (BitFit-style)
    train_final_norm: bool = True     # the final LayerNorm ("norm.")
    train_cls: bool = True            # cls_token and cls_pos
    # Not in the paper: also train the LayerNorm weights of every block (norm1.weight, norm2.weight; their
    # biases already train), 2 d per block. A cheap way to let the frozen features move.
    train_block_norm_weights: bool = False
    freeze_encoder_bn: bool = True    # False: frozen encoder BN stats drift (reference calls train())
    # ---- memory options (not in the paper; same loss and gradients, less memory, more compute) ----
    checkpoint_adapter: bool = False  # recompute each GA-Adapter (local attention on m*k tokens) in backward
    checkpoint_blocks: bool = False   # recompute each frozen block's attention and MLP in backward
    checkpoint_attention: bool = False  # recompute each frozen block's attention branch only in backward

    def __post_init__(self) -> None:
        positive = {
            "num_prompt_tokens": self.num_prompt_tokens, "prompt_layers": self.prompt_layers,
            "prompt_adapter_dim": self.prompt_adapter_dim, "adapter_dim": self.adapter_dim,
            "local_heads": self.local_heads, "local_head_dim": self.local_head_dim,
        }
        for name, v in positive.items():
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"PointPEFT.{name} must be a positive integer, got {v!r}")
        for name in ("prompt_dropout", "adapter_dropout", "local_drop_path"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise ConfigError(f"PointPEFT.{name} must be in [0, 1), got {v!r}")
        for name in ("sub_center_ratio", "sub_group_ratio"):
            v = getattr(self, name)
            if not 0.0 < v <= 1.0:
                raise ConfigError(f"PointPEFT.{name} must be in (0, 1], got {v!r}")
        if self.interp_eps <= 0:
            raise ConfigError(f"PointPEFT.interp_eps must be > 0, got {self.interp_eps!r}")
        if self.cache_query and not self.uses_bank:
            raise ConfigError("PointPEFT.cache_query reads the P2-Bank: it needs use_prompt and use_bank")
        if not (self.use_prompt or self.use_adapter):
            raise ConfigError("PointPEFT needs use_prompt or use_adapter (or both); both are False")
        if self.uses_bank and self.num_prompt_tokens < 3:
            raise ConfigError(
                f"with the P2-Bank, num_prompt_tokens must be >= 3 (f, f_agg and K >= 1 retrieved features), "
                f"got {self.num_prompt_tokens}"
            )

    @property
    def uses_bank(self) -> bool:
        """Whether the prompts read the P2-Bank (prompts on and bank on)."""
        return self.use_prompt and self.use_bank

    @property
    def top_k(self) -> int:
        """K, the number of retrieved bank features: the prompt tokens are [f; f_agg; K retrieved]."""
        return self.num_prompt_tokens - 2
