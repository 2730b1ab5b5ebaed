"""Point-PEFT's memory options (recompute the GA-Adapter / the frozen blocks in backward) and the norm-weight
option: same loss, gradients and BatchNorm statistics as without them, fewer saved activations."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import peftkit as pk
from peftkit.core.errors import UnsupportedError
from peftkit.measure.peak import step_peak
from peftkit.methods.point_peft.bank import QueryEncoder, save_bank

NUM_LABELS = 5

OPTIONS = [{"checkpoint_adapter": True}, {"checkpoint_blocks": True},
           {"checkpoint_adapter": True, "checkpoint_blocks": True},
           {"checkpoint_adapter": True, "checkpoint_attention": True}]


def tiny() -> torch.nn.Module:
    return pk.load_backbone("tiny_point", num_labels=NUM_LABELS, seed=0)


def clouds(b: int, seed: int = 0, n: int = 128) -> torch.Tensor:
    return torch.randn(b, n, 3, generator=torch.Generator().manual_seed(seed))


def cfg(bank: Path, **kw) -> pk.PointPEFT:
    return pk.PointPEFT(bank_path=str(bank), **kw)


@pytest.fixture
def bank(tmp_path: Path) -> Path:
    enc = QueryEncoder(tiny())
    feats = F.normalize(enc(clouds(12, seed=1)), dim=-1)
    meta = {"encoder_hash": enc.fingerprint(), "backbone": "tiny_point", "split": "train"}
    return save_bank(tmp_path / "bank", feats, torch.arange(12) % NUM_LABELS, meta)


def _built(bank: Path, **kw) -> torch.nn.Module:
    torch.manual_seed(3)  # the new modules' init
    model = pk.apply(tiny(), [cfg(bank, prompt_layers=2, **kw)])
    for blk in model.blocks:  # the tiny blocks have no stochastic depth of their own: give them some
        blk.drop_path.drop_prob = 0.2
    return model.train()


def _step(model: torch.nn.Module) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    torch.manual_seed(11)  # dropout, DropPath and prompt dropout masks
    loss = F.cross_entropy(model(clouds(4, seed=2)), torch.arange(4) % NUM_LABELS)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


@pytest.mark.parametrize("kw", OPTIONS, ids=["adapter", "blocks", "both", "adapter+attention"])
def test_recomputation_gives_the_same_loss_grads_and_statistics(bank, kw):
    ref_model, model = _built(bank), _built(bank, **kw)
    ref_loss, ref_grads = _step(ref_model)
    loss, grads = _step(model)
    torch.testing.assert_close(loss, ref_loss)
    assert grads.keys() == ref_grads.keys() and len(grads) > 20
    for name, g in grads.items():
        torch.testing.assert_close(g, ref_grads[name], msg=name)
    for a, b in zip(ref_model.blocks, model.blocks, strict=True):  # BN_l updated once, not again in backward
        bn_a, bn_b = a.point_peft.geo.out_norm, b.point_peft.geo.out_norm
        torch.testing.assert_close(bn_b.running_mean, bn_a.running_mean)
        torch.testing.assert_close(bn_b.running_var, bn_a.running_var)
        assert int(bn_b.num_batches_tracked) == 1


def test_recomputation_lowers_the_step_peak(bank):
    peaks = {}
    for name, kw in [("none", {}), ("adapter", OPTIONS[0]), ("blocks", OPTIONS[1]), ("both", OPTIONS[2])]:
        model = _built(bank, **kw)
        _step(model)  # warm-up: gradients exist, as in every step after the first
        peaks[name] = step_peak(lambda model=model: _step(model)).peak_bytes
    # the GA-Adapter's neighbourhoods hold most of what Point-PEFT adds; the blocks hold the rest
    assert peaks["adapter"] < 0.8 * peaks["none"]
    assert peaks["blocks"] < peaks["none"]
    assert peaks["both"] < min(peaks["adapter"], peaks["blocks"])
    model = _built(bank, **OPTIONS[3])
    _step(model)
    assert peaks["both"] <= step_peak(lambda: _step(model)).peak_bytes < peaks["adapter"]


def test_eval_and_remove(bank):
    model = _built(bank, **OPTIONS[2]).eval()
    with torch.no_grad():
        out = model(clouds(3))
    ref = _built(bank).eval()
    with torch.no_grad():
        torch.testing.assert_close(out, ref(clouds(3)))
    assert all(blk.checkpoint for blk in model.blocks)
    restored = pk.remove(model)
    assert not any(blk.checkpoint for blk in restored.blocks)
    model = pk.remove(_built(bank, **OPTIONS[3]))
    assert not any(blk.checkpoint_attn for blk in model.blocks)


def test_checkpoint_blocks_needs_the_point_mae_block(bank):
    model = tiny()
    del model.blocks[0].checkpoint, model.blocks[1].checkpoint_attn
    with pytest.raises(UnsupportedError, match="checkpoint_blocks"):
        pk.apply(model, [cfg(bank, prompt_layers=1, checkpoint_blocks=True)])
    with pytest.raises(UnsupportedError, match="checkpoint_attention"):
        pk.apply(model, [cfg(bank, prompt_layers=1, checkpoint_attention=True)])


def test_block_norm_weights_train(bank):
    base = pk.param_report(pk.apply(tiny(), [cfg(bank, prompt_layers=1)])).owner("point_peft").trainable
    model = pk.apply(tiny(), [cfg(bank, prompt_layers=1, train_block_norm_weights=True)]).train()
    depth, d = len(model.blocks), 32
    assert pk.param_report(model).owner("point_peft").trainable == base + 2 * depth * d  # norm1, norm2
    F.cross_entropy(model(clouds(4)), torch.arange(4) % NUM_LABELS).backward()
    for blk in model.blocks:
        for norm in (blk.norm1, blk.norm2):
            assert norm.weight.requires_grad and norm.weight.grad.abs().sum() > 0
