"""DEFT on the point transformer (the contract table in tests/methods covers LoRA, adapters and MEFT)."""

from __future__ import annotations

from typing import Any

import torch

import peftkit as pk
from peftkit.core.state import get_state


def test_deft_observes_the_point_mlp_act(tiny: Any, tmp_path: Any) -> None:
    model = tiny.build("tiny_point")
    ref = tiny.output(model, "tiny_point")
    model = pk.apply(model, [pk.LoRA(rank=2, targets=["attn_qkv", "attn_out"]), pk.DEFT()])
    assert torch.equal(tiny.output(model, "tiny_point"), ref)            # LoRA B = 0, DEFT adds no layer
    model.train()
    out = tiny.forward(model, "tiny_point")
    aux = pk.aux_loss(model)
    assert aux.item() > 0 and aux.requires_grad
    (out.pow(2).mean() + aux).backward()
    lora = [p for a in get_state(model).applied for p in a.params()]
    assert lora and all(p.grad is not None for p in lora)
    assert all(p.grad is None for n, p in model.named_parameters() if n.startswith("patch_embed"))
    pk.save_adapter(model, tmp_path / "deft")
    fresh = pk.load_adapter(tiny.build("tiny_point"), tmp_path / "deft")
    assert torch.equal(tiny.output(fresh.eval(), "tiny_point"), tiny.output(model.eval(), "tiny_point"))
