"""Freezing and counting come from what methods declare (adapter_params / Applied.params), never names."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

import peftkit as pk
from peftkit.core.params import adapter_parameters, numel, owners


class _Added(nn.Module):
    """A module whose parameter names would fool a substring rule ("weight", "lora"), declared explicitly."""

    def __init__(self) -> None:
        super().__init__()
        self.base_layer = nn.Linear(3, 3)
        self.lora_weight = nn.Parameter(torch.zeros(3))

    def adapter_params(self) -> list[str]:
        return ["lora_weight"]


def test_adapter_parameters_follow_the_declaration() -> None:
    a, b = _Added(), _Added()
    top = nn.Sequential(a, nn.Linear(3, 3), b)
    got = adapter_parameters([top, a])   # a reached twice: counted once
    assert [id(p) for p in got] == [id(a.lora_weight), id(b.lora_weight)]


def test_numel_counts_packed_4bit_logically() -> None:
    p = nn.Parameter(torch.zeros(8, 1, dtype=torch.uint8), requires_grad=False)
    assert numel(p) == 8
    p.quant_state = object()   # what bitsandbytes' Params4bit carries
    assert numel(p) == 16


def test_report_rows_and_freeze(tiny: Any) -> None:
    model = tiny.build("tiny_bert")
    total = sum(p.numel() for p in model.parameters())
    head = sum(p.numel() for h in ("bert.pooler", "classifier") for p in model.get_submodule(h).parameters())
    model = pk.apply(model, pk.LoRA(rank=2))
    lora = 2 * 2 * 2 * (32 + 32)   # 2 layers x (q, v) x r (in + out)
    report = pk.param_report(model)
    assert [r.owner for r in report.rows] == ["base", "lora", "head"]
    assert report.owner("base").params == total - head and report.owner("base").trainable == 0
    assert report.owner("lora").trainable == lora and report.owner("head").trainable == head
    assert report.trainable == lora + head and report.total == total + lora
    assert report.as_dict()["trainable_params"] == lora + head
    assert str(report).startswith(f"trainable params: {lora + head:,d} || all params: {total + lora:,d}")
    own = owners(model)
    assert all(p.requires_grad == (id(p) in own) for p in model.parameters())


def test_train_head_false_freezes_the_head(tiny: Any) -> None:
    model = pk.apply(tiny.build("tiny_bert"), pk.Adapter(), train_head=False)
    assert not any(p.requires_grad for p in model.classifier.parameters())
    assert pk.param_report(model).owner("head").trainable == 0


def test_aux_loss_is_zero_without_aux_modules(tiny: Any) -> None:
    model = pk.apply(tiny.build("tiny_bert"), pk.LoRA())
    assert pk.aux_loss(model).item() == 0.0
