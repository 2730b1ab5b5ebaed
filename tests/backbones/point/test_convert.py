"""Official Point-MAE ``pretrain.pth`` import (a state dict written here in that layout) and our format."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import peftkit as pk
from peftkit.backbones.point.convert import encoder_keys, load_pretrained, save_encoder
from peftkit.core.errors import CheckpointError

SIZE = dict(depth=2)  # tiny_point has 2 blocks; keep the official block naming for both


def official_state(model: nn.Module, ddp: bool = True) -> dict:
    """A Point_MAE state dict in the official key layout, filled from ``model``'s encoder plus the decoder."""
    ours = model.state_dict()
    sd: dict[str, torch.Tensor] = {}
    for conv in ("first_conv", "second_conv"):
        for k, v in ours.items():
            if k.startswith(f"patch_embed.{conv}."):
                sd["MAE_encoder.encoder." + k.removeprefix("patch_embed.")] = v.clone() + 1.0
    for k, v in ours.items():
        if k.startswith("pos_embed."):
            sd["MAE_encoder." + k] = v.clone() + 1.0
        elif k.startswith("blocks."):
            sd["MAE_encoder.blocks." + k] = v.clone() + 1.0
        elif k.startswith("norm."):
            sd["MAE_encoder." + k] = v.clone() + 1.0
    d = model.dim
    sd["mask_token"] = torch.zeros(1, 1, d)
    sd["decoder_pos_embed.0.weight"] = torch.zeros(128, 3)
    sd["MAE_decoder.blocks.blocks.0.norm1.weight"] = torch.ones(d)
    sd["MAE_decoder.norm.weight"] = torch.ones(d)
    sd["increase_dim.0.weight"] = torch.zeros(3 * 8, d, 1)
    if ddp:
        sd = {f"module.{k}": v for k, v in sd.items()}
    return {"base_model": sd, "epoch": 300, "optimizer": {}, "metrics": {"acc": 0.0}, "best_metrics": {}}


def test_official_layout_loads(tmp_path: Path) -> None:
    src = pk.load_backbone("tiny_point", num_labels=4, seed=1)
    torch.save(official_state(src), tmp_path / "pretrain.pth")
    dst = pk.load_backbone("tiny_point", num_labels=4, seed=2, checkpoint=str(tmp_path / "pretrain.pth"))
    for k, v in encoder_keys(src).items():
        expect = v + 1.0 if v.is_floating_point() else v + 1
        assert torch.equal(dst.state_dict()[k], expect.to(dst.state_dict()[k].dtype)), k
    assert "MAE_encoder.encoder.first_conv.1.running_var" in official_state(src, ddp=False)["base_model"]


def test_official_without_ddp_prefix(tmp_path: Path) -> None:
    src = pk.load_backbone("tiny_point", num_labels=4)
    torch.save(official_state(src, ddp=False), tmp_path / "p.pth")
    load_pretrained(pk.load_backbone("tiny_point", num_labels=4), tmp_path / "p.pth")


@pytest.mark.parametrize(
    "edit,msg",
    [
        (lambda sd: sd.pop("module.MAE_encoder.norm.weight"), "missing"),
        (lambda sd: sd.__setitem__("module.MAE_encoder.extra.weight", torch.zeros(1)), "unexpected"),
        (lambda sd: sd.__setitem__("module.MAE_encoder.norm.weight", torch.zeros(7)), "shape"),
        (lambda sd: sd.__setitem__("module.cls_head_finetune.0.weight", torch.zeros(1)), "unexpected"),
    ],
)
def test_official_bad_checkpoints(tmp_path: Path, edit, msg: str) -> None:
    src = pk.load_backbone("tiny_point", num_labels=4)
    state = official_state(src)
    edit(state["base_model"])
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=msg):
        load_pretrained(pk.load_backbone("tiny_point", num_labels=4), tmp_path / "bad.pth")


def test_not_a_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "x.pth").write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_pretrained(pk.load_backbone("tiny_point", num_labels=4), tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match="not found"):
        load_pretrained(pk.load_backbone("tiny_point", num_labels=4), tmp_path / "missing.pth")


def test_safetensors_roundtrip_fp16_and_size_mismatch(tmp_path: Path) -> None:
    src = pk.load_backbone("tiny_point", num_labels=4, seed=3)
    save_encoder(encoder_keys(src), tmp_path / "enc.safetensors", {"backbone": "tiny_point"}, fp16=True)
    dst = pk.load_backbone("tiny_point", num_labels=7, seed=4, checkpoint=str(tmp_path / "enc.safetensors"))
    for k, v in encoder_keys(src).items():
        assert torch.allclose(dst.state_dict()[k].float(), v.float(), atol=1e-3, rtol=1e-3), k
    assert not torch.equal(dst.cls_pos, src.cls_pos)  # classifier parts stay fresh
    with pytest.raises(CheckpointError, match="shape"):
        pk.load_backbone(
            "tiny_point", num_labels=4, dim=64, heads=4, checkpoint=str(tmp_path / "enc.safetensors")
        )
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError):
        pk.load_backbone("tiny_point", num_labels=4, checkpoint=str(tmp_path / "junk.safetensors"))


def test_shipped_checkpoint_loads() -> None:
    from peftkit.backbones.point.convert import REPO_ROOT
    from peftkit.backbones.point.zoo import SHIPPED_CHECKPOINTS

    path = REPO_ROOT / SHIPPED_CHECKPOINTS["point_mae_small"]
    if not path.is_file():
        pytest.skip("the shipped checkpoint is not in this checkout")
    assert path.stat().st_size < 50 * 2**20
    model = pk.load_backbone("point_mae_small", num_labels=12, checkpoint=str(path))
    meta = load_pretrained(pk.load_backbone("point_mae_small", num_labels=3), path)
    assert meta["backbone"] == "point_mae_small" and meta["steps"] > 0
    bn = model.patch_embed.first_conv[1]
    assert int(bn.num_batches_tracked) > 0 and bool(torch.isfinite(bn.running_var).all())
