"""Point-PEFT numerics against brute-force references: retrieval, interpolation weights, batched grouping."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from peftkit.layers.bottleneck import QuickGELU
from peftkit.methods.point_peft.geo_adapter import GeoAdapter, group_tokens, inverse_distance_weights
from peftkit.methods.point_peft.layers import LocalAttention
from peftkit.methods.point_peft.prompt import retrieve
from peftkit.ops.points import farthest_point_sample, knn


def test_retrieval_matches_a_python_loop():
    g = torch.Generator().manual_seed(0)
    bank = F.normalize(torch.randn(30, 8, generator=g, dtype=torch.float64), dim=-1)
    f = torch.randn(4, 8, generator=g, dtype=torch.float64) * 3.0
    k = 5
    got = retrieve(f, bank, k)
    assert got.shape == (4, k + 2, 8)
    for b in range(4):
        q = f[b] / math.sqrt(sum(v * v for v in f[b].tolist()))
        sims = [(float(q @ bank[n]), n) for n in range(bank.shape[0])]
        top = sorted(sims, reverse=True)[:k]
        ex = [math.exp(s) for s, _ in top]
        weights = [e / sum(ex) for e in ex]
        agg = sum(w * bank[n] for w, (_, n) in zip(weights, top))
        torch.testing.assert_close(got[b, 0], f[b])                 # f enters un-normalised
        torch.testing.assert_close(got[b, 1], agg)
        for j, (_, n) in enumerate(top):
            torch.testing.assert_close(got[b, 2 + j], bank[n])


def test_retrieval_k_larger_than_bank_is_an_error():
    from peftkit.core.errors import ConfigError

    with pytest.raises(ConfigError, match="K=4"):
        retrieve(torch.randn(2, 3), F.normalize(torch.randn(3, 3), dim=-1), 4)


def test_inverse_distance_weights_by_hand():
    coords = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 2.0, 0.0]]], dtype=torch.float64)
    sub = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]], dtype=torch.float64)
    eps = 1e-8
    w = inverse_distance_weights(coords, sub, eps)
    # point 0: d2 = 1 and 1 -> 1/2, 1/2; point 1: d2 = 0 and 2; point 2: d2 = 5 and 5 -> 1/2, 1/2
    a, b = 1 / (0 + eps), 1 / (2 + eps)
    expected = torch.tensor([[[0.5, 0.5], [a / (a + b), b / (a + b)], [0.5, 0.5]]], dtype=torch.float64)
    torch.testing.assert_close(w, expected)
    assert torch.allclose(w.sum(-1), torch.ones(1, 3, dtype=torch.float64))


def _propagate_by_hand(geo: GeoAdapter, attn: LocalAttention, tokens, coords, num_sub, k):
    """One cloud, no batching tricks: loops over sub-centres and tokens."""
    sub_idx = farthest_point_sample(coords[None], num_sub)[0]
    _, nbr = knn(coords[sub_idx][None], coords[None], k)
    out = tokens.clone()
    us = []
    for s in range(num_sub):
        x = tokens[nbr[0, s]][None]                                   # [1, k, d]
        x = x + attn(x)
        pooled = x.amax(1)                                            # [1, d]
        u = F.gelu(geo.out_norm(pooled))[0] + geo.center_coef * tokens[sub_idx[s]]
        us.append(u)
    for i in range(tokens.shape[0]):
        inv = [1.0 / (float(((coords[i] - coords[sub_idx[s]]) ** 2).sum()) + 1e-8) for s in range(num_sub)]
        tot = sum(inv)
        out[i] = out[i] + geo.propagate_coef * sum((v / tot) * u for v, u in zip(inv, us))
    return out


def test_batched_propagation_equals_per_cloud_loop():
    torch.manual_seed(0)
    d, n, m, k = 16, 12, 5, 4
    geo = GeoAdapter(d, 4, 0.0, 0.7, 0.3, 0.3, 0.0).double().eval()
    torch.nn.init.normal_(geo.out_norm.running_mean)                  # non-trivial eval statistics
    attn = LocalAttention(d, 2, 3).double()
    tokens = torch.randn(3, n, d, dtype=torch.float64)
    coords = torch.randn(3, n, 3, dtype=torch.float64)
    grouping = group_tokens(coords, m, k, 1e-8)
    got = geo.propagate(tokens, grouping, attn)
    for b in range(3):                                                # a wrong batch offset mixes clouds
        torch.testing.assert_close(got[b], _propagate_by_hand(geo, attn, tokens[b], coords[b], m, k))


def test_grouping_indices_stay_inside_each_cloud():
    coords = torch.randn(4, 20, 3)
    coords[2] += 100.0                                                # cloud 2 far from the others
    gr = group_tokens(coords, 6, 5, 1e-8)
    assert gr.sub_idx.shape == (4, 6) and gr.nbr_idx.shape == (4, 6, 5) and gr.weights.shape == (4, 20, 6)
    for b in range(4):
        ref = group_tokens(coords[b : b + 1], 6, 5, 1e-8)
        assert torch.equal(gr.sub_idx[b], ref.sub_idx[0]) and torch.equal(gr.nbr_idx[b], ref.nbr_idx[0])
        torch.testing.assert_close(gr.weights[b], ref.weights[0])


def test_grouping_too_few_tokens_is_a_data_error():
    from peftkit.core.errors import DataError

    with pytest.raises(DataError, match="tokens to group"):
        group_tokens(torch.randn(1, 4, 3), 2, 8, 1e-8)


def test_quick_gelu():
    x = torch.linspace(-3, 3, 7)
    torch.testing.assert_close(QuickGELU()(x), x * torch.sigmoid(1.702 * x))


def test_local_attention_by_hand():
    torch.manual_seed(0)
    attn = LocalAttention(8, 2, 3).double()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    h = attn.norm(x)
    q, k, v = attn.qkv(h).reshape(2, 5, 3, 2, 3).unbind(2)             # [b, t, h, e] each
    logits = torch.einsum("bthe,bshe->bhts", q, k) * (6 ** -0.5)      # scale (heads * head_dim)^-1/2
    y = torch.einsum("bhts,bshe->bthe", logits.softmax(-1), v).reshape(2, 5, 6)
    torch.testing.assert_close(attn(x), attn.proj(y))
