"""DropoutAttention: the math-path function with dropout, one head group at a time, masks replayed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from peftkit.methods.meft import attention
from peftkit.methods.meft.attention import DropoutAttention, bounded_attention


def _qkv(h: int = 4, t: int = 6) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(2, h, t, 8, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3)]


def test_no_dropout_keeps_the_fused_kernel_bit_for_bit() -> None:
    q, k, v = _qkv()
    mask = torch.zeros(2, 1, 6, 6, dtype=torch.float64)
    mask[1, ..., -2:] = -1e9
    with bounded_attention():
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0)
    assert torch.equal(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))


@pytest.mark.parametrize("causal", [False, True])
def test_gradients_match_finite_differences_with_the_same_masks(causal: bool,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(attention, "GROUP_BYTES", 2 * 36 * 8)  # one head per group: 4 groups

    def f(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(3)  # every evaluation draws the same masks
        return DropoutAttention.apply(q, k, v, None, 0.3, causal, 0.35)

    assert torch.autograd.gradcheck(f, _qkv())


def test_same_seed_same_output_and_dropout_is_on() -> None:
    q, k, v = _qkv()
    outs = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        with bounded_attention():
            outs.append(F.scaled_dot_product_attention(q, k, v, dropout_p=0.5))
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])
    ref = F.scaled_dot_product_attention(q, k, v)
    assert not torch.allclose(outs[0], ref)


def test_bool_mask_and_grouped_query_heads() -> None:
    q, _, _ = _qkv(h=4)
    k, v = (x[:, :2].detach().clone() for x in _qkv(h=4)[1:])  # 2 key/value heads for 4 query heads
    mask = torch.ones(2, 1, 6, 6, dtype=torch.bool).tril()
    with bounded_attention():
        torch.manual_seed(0)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=1e-12, enable_gqa=True)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    assert torch.allclose(out, ref, atol=1e-10)
