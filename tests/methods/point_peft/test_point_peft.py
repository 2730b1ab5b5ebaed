"""Point-PEFT contract on ``tiny_point``: what trains, closed-form counts, save/load, remove, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import peftkit as pk
from peftkit.core.errors import CheckpointError, ConfigError, DataError, UnsupportedError
from peftkit.methods.point_peft.bank import QueryEncoder, load_bank, save_bank

NUM_LABELS = 5


def tiny(seed: int = 0, **kw) -> torch.nn.Module:
    return pk.load_backbone("tiny_point", num_labels=NUM_LABELS, seed=seed, **kw)


def clouds(b: int, seed: int = 0, n: int = 128) -> torch.Tensor:
    return torch.randn(b, n, 3, generator=torch.Generator().manual_seed(seed))


def make_bank(model: torch.nn.Module, path: Path, entries: int = 12) -> Path:
    """A bank of random clouds encoded by ``model``'s own (pre-trained) encoder."""
    enc = QueryEncoder(model)
    feats = F.normalize(enc(clouds(entries, seed=1)), dim=-1)
    meta = {"encoder_hash": enc.fingerprint(), "backbone": "tiny_point", "split": "train"}
    return save_bank(path, feats, torch.arange(entries) % NUM_LABELS, meta)


def cfg(bank: Path | None, **kw) -> pk.PointPEFT:
    kw.setdefault("prompt_layers", 1)
    return pk.PointPEFT(bank_path=str(bank) if bank else None, **kw)


ABLATIONS = [{}, {"use_adapter": False}, {"use_prompt": False}, {"use_bank": False}]


@pytest.fixture
def bank(tmp_path: Path) -> Path:
    return make_bank(tiny(), tmp_path / "bank")


# ---- closed form --------------------------------------------------------------------------------


def adapter_count(d: int, r: int) -> int:
    return d * r + r + r * d + d


def closed_form(d: int, depth: int, hidden: int, c: pk.PointPEFT, qkv_bias: bool = False) -> int:
    """Parameters Point-PEFT trains besides the head (reference MAE code, with unused ones left out)."""
    n = 0
    if c.use_adapter:
        inner = c.local_heads * c.local_head_dim
        n += 2 * d + d * 3 * inner + inner * d + d                        # shared LN3 + attn1 (qkv, proj)
        n += depth * (2 * adapter_count(d, c.adapter_dim) + 2 * d)       # adapter, adapter1, out BN per block
        n += 3 * c.num_prompt_tokens if c.use_prompt else 0              # prompt coordinates
    if c.use_prompt:
        per = c.num_prompt_tokens * d + (adapter_count(d, c.prompt_adapter_dim) if c.use_bank else 0)
        n += c.prompt_layers * per
    n += depth * (d + hidden + d + d + d + (3 * d if qkv_bias else 0))  # proj, fc1, fc2, norm1, norm2 biases
    return n + 2 * d + 2 * d                                            # final norm, cls token + pos


def head_count(d: int, widths: tuple[int, ...], classes: int) -> int:
    n, w = 0, 2 * d
    for h in widths:
        n, w = n + w * h + h + 2 * h, h
    return n + w * classes + classes


@pytest.mark.parametrize(
    "kw", [*ABLATIONS, {"prompt_layers": 2}], ids=["full", "prompt_only", "adapter_only", "no_bank", "L2"]
)
def test_param_report_matches_closed_form(bank, kw):
    c = cfg(bank, **kw)
    model = pk.apply(tiny(), [c])
    rep = pk.param_report(model)
    assert rep.owner("point_peft").trainable == closed_form(32, 2, 128, c)
    assert rep.owner("head").trainable == head_count(32, (32,), NUM_LABELS)
    assert rep.owner("base").trainable == 0


def test_full_size_count_is_the_papers_07m(tmp_path):
    """point_mae (d 384, 12 blocks), 15 classes: ~0.71M trainable of ~22.5M, 3.2% (paper: 0.7M of 22.1M)."""
    model = pk.load_backbone("point_mae", num_labels=15)
    full = sum(p.numel() for p in model.parameters())
    enc = QueryEncoder(model)
    meta = {"encoder_hash": enc.fingerprint(), "backbone": "point_mae"}
    path = save_bank(tmp_path / "b", F.normalize(torch.randn(16, 384), dim=-1), torch.zeros(16), meta)
    c = pk.PointPEFT(bank_path=str(path))
    model = pk.apply(model, [c])
    rep = pk.param_report(model)
    assert rep.owner("point_peft").trainable == closed_form(384, 12, 1536, c) == 443_214
    assert rep.owner("head").trainable == head_count(384, (256, 256), 15) == 267_535
    assert round(full / 1e6, 1) == 22.1                                     # the paper's full-FT count
    assert rep.total == full + closed_form(384, 12, 1536, c) - 12 * 3072 - 4 * 384  # new modules only add
    assert 3.0 < rep.trainable_pct < 3.3


# ---- behaviour --------------------------------------------------------------------------------


@pytest.mark.parametrize("kw", ABLATIONS, ids=["full", "prompt_only", "adapter_only", "no_bank"])
def test_gradients_only_where_they_belong(bank, kw):
    model = pk.apply(tiny(), [cfg(bank, **kw)])
    model.train()
    F.cross_entropy(model(clouds(4)), torch.arange(4) % NUM_LABELS).backward()
    assert model.point_peft._ctx is None                                # per-forward data freed at the end
    state = model.peftkit_state
    owned = {id(p) for p in state.applied[0].params()} | {id(p) for p in state.head_parameters()}
    for name, p in model.named_parameters():
        if id(p) in owned:
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert not p.requires_grad and p.grad is None, name


def test_prompts_live_in_the_first_L_blocks_only(bank):
    model = pk.apply(tiny(), [cfg(bank, num_prompt_tokens=4, prompt_layers=1)])
    lengths = []
    for blk in model.blocks:
        blk.attn.register_forward_hook(lambda m, a, y: lengths.append(y.shape[1]))
    feats = model.forward_features(clouds(2))
    assert lengths == [1 + 4 + 16, 1 + 16]                              # [cls; P; patches], then plain
    assert feats.shape == (2, 17, 32)                                   # prompts dropped after each block


def test_zero_coefficients_and_no_prompts_leave_the_base_output(bank):
    """What the paper's init allows: with the coefficients at 0, a zeroed token adapter and no prompts the
    wrapping is exactly transparent (prompts and the xavier-initialised adapters change it at init)."""
    x = clouds(3)
    base = tiny().eval()
    ref = base(x)
    c = cfg(None, use_prompt=False, mlp_adapter_scale=0.0, propagate_coef=0.0, center_coef=0.0)
    model = pk.apply(base, [c]).eval()
    for blk in model.blocks:
        torch.nn.init.zeros_(blk.point_peft.geo.token_adapter.up.weight)
        torch.nn.init.zeros_(blk.point_peft.geo.token_adapter.up.bias)
    torch.testing.assert_close(model(x), ref)
    c2 = cfg(None, use_prompt=False)
    changed = pk.apply(tiny(), [c2]).eval()
    assert not torch.allclose(changed(x), ref)


def test_save_load_round_trip(bank, tmp_path):
    x = clouds(3)
    model = pk.apply(tiny(), [cfg(bank)])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(2):
        F.cross_entropy(model(clouds(4, seed=5)), torch.arange(4) % NUM_LABELS).backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    out = model(x)
    saved = pk.save_adapter(model, tmp_path / "run")
    keys = set(pk.core.checkpoint.adapter_state_dict(model))
    assert {"point_peft.bank.bank", "blocks.0.point_peft.geo.out_norm.running_mean", "cls_pos", "norm.weight",
            "blocks.1.attn.proj.bias", "point_peft.prompt_coords", "cls_head.1.running_var"} <= keys
    fresh = pk.load_adapter(tiny(), saved).eval()
    torch.testing.assert_close(fresh(x), out)


def test_remove_restores_the_base(bank):
    x = clouds(3)
    model = tiny().eval()
    ref = model(x)
    model = pk.apply(model, [cfg(bank)]).eval()
    assert not torch.allclose(model(x), ref)
    restored = pk.remove(model).eval()
    torch.testing.assert_close(restored(x), ref)
    assert not hasattr(restored.blocks[0], "point_peft") and not hasattr(restored, "point_peft")
    assert all(not blk._forward_hooks and not blk._forward_pre_hooks for blk in restored.blocks)
    assert all(not blk.mlp._forward_hooks for blk in restored.blocks)
    assert all(p.requires_grad for p in restored.parameters())


def test_query_encoder_stays_pretrained_while_biases_train(bank):
    x = clouds(2)
    ref = QueryEncoder(tiny())(x)
    model = pk.apply(tiny(), [cfg(bank)])
    with torch.no_grad():
        for p in model.peftkit_state.applied[0].params():
            p.add_(0.5)
    torch.testing.assert_close(model.point_peft.bank.query_encoder(x), ref)


@pytest.mark.parametrize("freeze", [True, False])
def test_encoder_batchnorm_statistics(bank, freeze):
    model = pk.apply(tiny(), [cfg(bank, freeze_encoder_bn=freeze)]).train()
    bn = model.patch_embed.first_conv[1]
    before = bn.running_mean.clone()
    model(clouds(4))
    assert torch.equal(bn.running_mean, before) == freeze
    assert model.blocks[0].point_peft.geo.out_norm.training                # the adapter's own BN trains


def test_stacks_with_deft(bank):
    model = pk.apply(tiny(), [cfg(bank), pk.DEFT()]).train()
    model(clouds(2))
    loss = pk.aux_loss(model)
    assert loss.item() > 0
    assert pk.param_report(model).owner("point_peft").trainable > 0


# ---- bad input --------------------------------------------------------------------------------


def test_bank_from_another_encoder_is_refused(tmp_path):
    other = make_bank(tiny(seed=1), tmp_path / "other")
    with pytest.raises(CheckpointError, match="another encoder"):
        pk.apply(tiny(seed=0), [cfg(other)])


def test_bank_of_another_width_is_refused(tmp_path):
    enc = QueryEncoder(tiny())
    meta = {"encoder_hash": enc.fingerprint()}
    path = save_bank(tmp_path / "wide", F.normalize(torch.randn(12, 48), dim=-1), torch.zeros(12), meta)
    with pytest.raises(CheckpointError, match="48-d"):
        pk.apply(tiny(), [cfg(path)])


def test_k_larger_than_bank_is_a_config_error(tmp_path):
    path = make_bank(tiny(), tmp_path / "small", entries=3)
    with pytest.raises(ConfigError, match="holds only 3"):
        pk.apply(tiny(), [cfg(path, num_prompt_tokens=10)])


def test_missing_and_corrupt_banks(tmp_path, bank):
    with pytest.raises(ConfigError, match="point-bank"):
        pk.apply(tiny(), [cfg(None)])
    with pytest.raises(CheckpointError, match="no P2-Bank"):
        pk.apply(tiny(), [cfg(tmp_path / "nowhere")])
    (bank / "bank.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_bank(bank)


def test_too_few_points_is_a_data_error(bank):
    model = pk.apply(tiny(), [cfg(bank)])
    with pytest.raises(DataError, match="points"):
        model(clouds(2, n=10))


def test_bad_configs_and_stacks(bank):
    with pytest.raises(ConfigError, match="prompt_layers=6"):
        pk.apply(tiny(), [pk.PointPEFT(bank_path=str(bank))])          # tiny_point has 2 blocks
    with pytest.raises(ConfigError, match="num_prompt_tokens"):
        pk.PointPEFT(num_prompt_tokens=2)
    with pytest.raises(ConfigError, match="use_prompt or use_adapter"):
        pk.PointPEFT(use_prompt=False, use_adapter=False)
    with pytest.raises(UnsupportedError, match="first"):
        pk.apply(tiny(), [pk.HeadOnly(), cfg(bank)])


# ---- cache_query (not in the paper) ---------------------------------------------------------------


def _bank_with_norms(model: torch.nn.Module, path: Path, pts: torch.Tensor) -> Path:
    enc = QueryEncoder(model)
    f = enc(pts)
    meta = {"encoder_hash": enc.fingerprint(), "backbone": "tiny_point", "split": "train"}
    return save_bank(path, F.normalize(f, dim=-1), torch.arange(len(pts)) % NUM_LABELS, meta, f.norm(dim=-1))


def test_cache_query_reads_the_banks_own_feature_and_skips_the_encoder(tmp_path: Path) -> None:
    pts = clouds(12, seed=1)
    base = tiny()
    path = _bank_with_norms(base, tmp_path / "bank", pts)
    model = pk.apply(base, [cfg(path, cache_query=True)])
    bank = model.point_peft.bank
    idx = torch.tensor([3, 0, 7])
    torch.testing.assert_close(bank.from_index(idx), bank(pts[idx]), rtol=1e-5, atol=1e-5)  # same C
    calls = []
    bank.query_encoder.register_forward_hook(lambda *a: calls.append(1))
    model.train()
    model(pts[idx], example_index=idx).sum().backward()
    assert not calls                                                   # training: no second forward
    model.eval()
    with torch.no_grad():
        model(pts[idx])
    assert len(calls) == 1                                             # evaluation: the query is computed


def test_cache_query_bad_input(tmp_path: Path, bank: Path) -> None:
    with pytest.raises(ConfigError, match="cache_query"):
        pk.PointPEFT(use_bank=False, cache_query=True)
    with pytest.raises(ConfigError, match="norms"):
        pk.apply(tiny(), [cfg(bank, cache_query=True)])               # a bank without norms
    pts = clouds(10, seed=1)
    model = pk.apply(tiny(), [cfg(_bank_with_norms(tiny(), tmp_path / "b2", pts), cache_query=True)]).train()
    with pytest.raises(UnsupportedError, match="data.example_index=true"):
        model(pts[:4])
    with pytest.raises(UnsupportedError, match="other training data"):
        model(pts[:4], example_index=torch.tensor([0, 1, 2, 10]))
