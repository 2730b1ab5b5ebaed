"""Point-prior Prompt (P2-Prompt) of Point-PEFT (Tang et al., AAAI 2024, arXiv 2310.03059).

A frozen query encoder gives the cloud feature ``f`` (:class:`~peftkit.methods.point_peft.bank.QueryEncoder`);
parameter-free attention over the P2-Bank ``M`` (rows L2-normalised) retrieves prior knowledge:

    q = f / ||f||,   s = M q                      (cosine similarity to every bank entry)   s: [b, N]
    (s_K, I) = topK(s),   a = softmax(s_K)         (no temperature, no weights)             a: [b, K]
    f_agg = sum_k a_k M[I_k]                                                               [b, d]
    C = [f ; f_agg ; M[I_1] ; ... ; M[I_K]]         (K + 2 = num_prompt_tokens tokens)      [b, K+2, d]

and the prompts of block ``l < L`` are  ``P_l = Dropout(E_l) + Adp_r^{(l)}(C)``  (``E_l`` learnable, ``Adp``
a residual bottleneck adapter with r = 8). Without the bank (ablation) ``P_l = Dropout(E_l)``.
``f`` enters un-normalised, as in the reference code.

Shapes: b batch, n points, N bank entries, K retrieved, T prompt tokens (= K + 2), d dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from peftkit.core.errors import ConfigError, UnsupportedError
from peftkit.methods.point_peft.bank import QueryEncoder
from peftkit.methods.point_peft.layers import bottleneck_adapter


def retrieve(f: torch.Tensor, bank: torch.Tensor, k: int) -> torch.Tensor:
    """The prompt source ``C = [f; f_agg; K retrieved]`` of query features ``f [b, d]`` over ``bank [N, d]``.

    Batched (one matmul, ``topk`` and an index gather); ``bank`` rows are expected unit-norm.

    Returns:
        ``[b, k + 2, d]``.
    """
    if k > bank.shape[0]:
        raise ConfigError(f"cannot retrieve K={k} features from a P2-Bank of {bank.shape[0]} entries")
    sims = F.normalize(f, dim=-1) @ bank.t()                           # [b, N]
    top, idx = sims.topk(k, dim=-1)                                    # [b, K], [b, K]
    feats = bank[idx]                                                  # [b, K, d]
    weights = top.softmax(dim=-1)                                      # [b, K]
    f_agg = torch.einsum("bk,bkd->bd", weights, feats)                 # [b, d]
    return torch.cat([f[:, None], f_agg[:, None], feats], dim=1)       # [b, K+2, d]


class PointPriorBank(nn.Module):
    """The P2-Bank (a non-trainable buffer) and the frozen query encoder that reads it.

    The query encoder is held outside the module tree (it is a frozen copy of the pre-trained backbone, not a
    part of the model: it is neither counted nor saved); it follows the bank's device and dtype lazily.
    """

    def __init__(
        self, bank: torch.Tensor, encoder: QueryEncoder, top_k: int, norms: torch.Tensor | None = None
    ) -> None:
        super().__init__()
        if top_k > bank.shape[0]:
            raise ConfigError(
                f"Point-PEFT retrieves K = num_prompt_tokens - 2 = {top_k} bank features but the P2-Bank "
                f"holds only {bank.shape[0]}; lower num_prompt_tokens or build the bank from more clouds"
            )
        self.register_buffer("bank", bank.detach().clone().float())   # [N, d]
        # ||f(x_n)|| of each entry, for cache_query (not in the paper): then f(x_n) = norms[n] * bank[n]
        self.norms = None if norms is None else norms.detach().clone().float()  # [N], not saved
        self.top_k = top_k
        object.__setattr__(self, "query_encoder", encoder)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """``points [b, n, 3] -> C [b, K+2, d]`` (no gradient: encoder and bank are frozen)."""
        enc: QueryEncoder = self.query_encoder
        p = next(enc.parameters())
        if p.device != self.bank.device or p.dtype != self.bank.dtype:
            enc.to(device=self.bank.device, dtype=self.bank.dtype)
        with torch.no_grad():
            f = enc(points.to(self.bank.dtype))                        # [b, d]
            return retrieve(f, self.bank, self.top_k)

    def from_index(self, example_index: torch.Tensor) -> torch.Tensor:
        """``C [b, K+2, d]`` with the cached query features of training examples ``example_index [b]``
        (entry n of the bank is training example n, un-augmented): no encoder forward."""
        if self.norms is None:
            raise UnsupportedError(
                "cache_query needs a P2-Bank that stores its features' norms; rebuild it with "
                "`peftkit point-bank CONFIG`"
            )
        if int(example_index.max()) >= self.bank.shape[0] or int(example_index.min()) < 0:
            raise UnsupportedError(
                f"example_index {int(example_index.max())} is outside the P2-Bank's {self.bank.shape[0]} "
                "entries: the bank was built from other training data than this run's"
            )
        idx = example_index.to(self.bank.device)
        f = self.bank[idx] * self.norms.to(self.bank.device)[idx, None]  # [b, d]
        return retrieve(f, self.bank, self.top_k)

    def adapter_params(self) -> list[str]:
        return []

    def extra_repr(self) -> str:
        return f"entries={self.bank.shape[0]}, dim={self.bank.shape[1]}, top_k={self.top_k}"


class PromptTokens(nn.Module):
    """The prompts of one block: ``P_l = Dropout(E_l) (+ Adp_l(C))``, ``[b, T, d]``."""

    def __init__(self, num_tokens: int, dim: int, init_std: float, dropout: float,
                 adapter_dim: int | None, adapter_dropout: float = 0.0) -> None:
        super().__init__()
        self.embeddings = nn.Parameter(torch.empty(num_tokens, dim))  # E_l: [T, d]
        nn.init.trunc_normal_(self.embeddings, std=init_std)
        self.drop = nn.Dropout(dropout)
        self.adapter = bottleneck_adapter(dim, adapter_dim, adapter_dropout) if adapter_dim else None

    def forward(self, source: torch.Tensor | None, batch: int) -> torch.Tensor:
        prompts = self.drop(self.embeddings[None].expand(batch, -1, -1))  # [b, T, d], a mask per cloud
        if self.adapter is None:
            return prompts
        if source is None:
            raise RuntimeError("prompt tokens built with a bank adapter need the retrieved features C")
        return prompts + self.adapter(source)

    def adapter_params(self) -> list[str]:
        return [n for n, _ in self.named_parameters()]
