"""The point transformer: interface used by the methods, numerics of one block, BN freezing, builders."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import peftkit as pk
from peftkit.backbones.point.model import Block, PointTransformer
from peftkit.backbones.point.spec import POINT_MAE_ROLES, POINT_MAE_SPEC
from peftkit.backbones.point.zoo import SIZES
from peftkit.core.errors import ConfigError, DataError


def tiny(**kw: object) -> nn.Module:
    return pk.load_backbone("tiny_point", num_labels=5, **kw)


def test_forward_shapes_and_interface() -> None:
    m = tiny()
    pts = torch.rand(3, 128, 3)
    tokens = m.forward_features(pts)
    assert tokens.shape == (3, 1 + 16, 32)
    assert m(points=pts).shape == (3, 5)
    assert torch.equal(m.forward_head(tokens), m(points=pts))  # eval mode: deterministic
    assert m.cls_token.shape == m.cls_pos.shape == (1, 1, 32)
    assert isinstance(m.blocks, nn.ModuleList) and all(isinstance(b, Block) for b in m.blocks)
    assert isinstance(m.blocks[0].mlp.act, nn.GELU)
    assert m.blocks[0].attn.qkv.bias is None and m.blocks[0].attn.qkv.out_features == 96
    assert set(m.no_weight_decay()) <= {n for n, _ in m.named_parameters()}


def test_spec_roles_resolve() -> None:
    m = tiny()
    spec = pk.get_spec(m)
    assert spec is POINT_MAE_SPEC and spec.layout == "pre_ln" and m.peftkit_backbone_id == "tiny_point"
    for role in POINT_MAE_ROLES:
        for path in spec.role_paths(m, role):
            m.get_submodule(path)
    for role, path in spec.model_roles.items():
        assert (
            m.get_submodule(path)
            if role not in ("cls_token", "cls_pos")
            else isinstance(getattr(m, path), nn.Parameter)
        )
    m.get_submodule(spec.head[0])


def test_block_matches_hand_computation() -> None:
    torch.manual_seed(0)
    blk = Block(8, 2, mlp_ratio=2.0).eval()
    x, pos = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    h = x + pos
    a = blk.norm1(h)
    q, k, v = blk.attn.qkv(a).split(8, dim=-1)
    heads = [
        F.softmax(q[..., i : i + 4] @ k[..., i : i + 4].transpose(1, 2) / 2.0, -1) @ v[..., i : i + 4]
        for i in (0, 4)
    ]
    h = h + blk.attn.proj(torch.cat(heads, -1))
    ref = h + blk.mlp.fc2(F.gelu(blk.mlp.fc1(blk.norm2(h))))
    assert torch.allclose(blk(x, pos, None), ref, atol=1e-5)


def test_head_input_is_cls_and_max() -> None:
    m = tiny()
    t = torch.randn(2, 17, 32)
    assert torch.equal(m.pooled(t), torch.cat([t[:, 0], t[:, 1:].max(1).values], -1))


def test_freeze_bn_stats() -> None:
    m = tiny()
    for p in m.patch_embed.parameters():
        p.requires_grad_(False)
    m.train()
    bn = m.patch_embed.first_conv[1]
    before = bn.running_mean.clone()
    m(points=torch.rand(4, 128, 3))
    assert not bn.training and torch.equal(bn.running_mean, before)
    assert m.cls_head[1].training  # trainable head BN still trains
    m2 = tiny(freeze_bn_stats=False)
    for p in m2.patch_embed.parameters():
        p.requires_grad_(False)
    m2.train()
    m2(points=torch.rand(4, 128, 3))
    assert not torch.equal(m2.patch_embed.first_conv[1].running_mean, before)


def test_train_batch_of_one() -> None:
    m = tiny().train()
    assert m(points=torch.rand(1, 128, 3)).shape == (1, 5)


def test_builders_seed_sizes_and_errors() -> None:
    a, b, c = tiny(seed=1), tiny(seed=1), tiny(seed=2)
    assert torch.equal(a.cls_pos, b.cls_pos) and not torch.equal(a.cls_pos, c.cls_pos)
    assert len(tiny(depth=3).blocks) == 3
    with pytest.raises(ConfigError, match="unknown"):
        tiny(width=3)
    with pytest.raises(ConfigError, match="num_labels"):
        pk.load_backbone("tiny_point", num_labels=1)
    with pytest.raises(DataError, match="at least"):
        tiny()(points=torch.rand(1, 8, 3))
    assert SIZES["point_mae_small"]["depth"] >= 8 and SIZES["point_mae"]["dim"] == 384


def test_point_mae_size_matches_paper_param_count() -> None:
    with torch.device("meta"):
        m = PointTransformer(num_classes=40, **SIZES["point_mae"])
    n = sum(p.numel() for p in m.parameters())
    assert 22.0e6 < n < 22.2e6  # Point-MAE reports 22.1M for its classifier


def test_block_checkpoint_gives_the_same_loss_and_grads() -> None:
    """``Block.checkpoint`` recomputes attention and MLP in backward: same loss and every gradient (full FT,
    stochastic depth on, its RNG replayed), fewer bytes at the step's peak."""
    from peftkit.measure.peak import step_peak

    x = torch.randn(4, 128, 3, generator=torch.Generator().manual_seed(0))
    y = torch.arange(4) % 3
    runs = []
    for ckpt in (False, True):
        model = pk.load_backbone("tiny_point", num_labels=3, seed=0).train()
        for blk in model.blocks:
            blk.drop_path.drop_prob, blk.checkpoint = 0.3, ckpt

        def step(model: nn.Module = model) -> torch.Tensor:
            model.zero_grad(set_to_none=True)
            torch.manual_seed(5)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss.detach()

        loss = step()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        runs.append((loss, grads, step_peak(step).peak_bytes))
    (l0, g0, p0), (l1, g1, p1) = runs
    torch.testing.assert_close(l1, l0)
    for name, g in g0.items():
        torch.testing.assert_close(g1[name], g, msg=name)
    assert p1 < p0
