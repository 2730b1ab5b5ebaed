"""AdamW groups (no decay on 1-D params and declared ones) and the learning-rate schedules."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from peftkit.core.errors import ConfigError
from peftkit.train.optim import build_optimizer, build_scheduler, lr_factor, param_groups


class _WithPrompt(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.prompt = nn.Parameter(torch.zeros(4, 8))  # 2-D, but declared no-decay
        self.pos = nn.Parameter(torch.zeros(4, 8))  # 2-D, declared as a tensor
        self.proj = nn.Linear(8, 8)

    def no_weight_decay(self) -> list[object]:
        return ["prompt", self.pos]


def test_groups_split_by_dimension_and_declaration() -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8), _WithPrompt())
    model[0].weight.requires_grad_(False)  # frozen: in no group
    groups = param_groups(model, weight_decay=0.1)
    decay = {id(p) for p in groups[0]["params"]}
    plain = {id(p) for p in groups[1]["params"]}
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    assert decay == {id(model[2].proj.weight)}
    assert plain == {
        id(p)
        for p in (
            model[0].bias,
            model[1].weight,
            model[1].bias,
            model[2].prompt,
            model[2].pos,
            model[2].proj.bias,
        )
    }


def test_bad_no_weight_decay_name_and_nothing_trainable() -> None:
    class Bad(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.zeros(2, 2))

        def no_weight_decay(self) -> list[str]:
            return ["nope"]

    with pytest.raises(ConfigError, match="'nope'"):
        param_groups(Bad(), 0.1)
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable parameters"):
        param_groups(frozen, 0.1)


def test_schedules_by_hand() -> None:
    total, warm = 10, 2
    assert [lr_factor(s, total, warm, "constant") for s in range(4)] == [1 / 3, 2 / 3, 1.0, 1.0]
    assert lr_factor(2, total, warm, "linear") == 1.0
    assert lr_factor(6, total, warm, "linear") == pytest.approx(0.5)  # (10 - 6) / 8
    assert lr_factor(10, total, warm, "linear") == 0.0
    assert lr_factor(6, total, warm, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    with pytest.raises(ConfigError, match="schedule"):
        lr_factor(5, total, warm, "step")


def test_scheduler_drives_optimizer_lr() -> None:
    model = nn.Linear(3, 3)
    opt = build_optimizer(model, lr=1.0, weight_decay=0.0)
    sched = build_scheduler(
        opt, total_steps=10, warmup_ratio=0.15, schedule="linear"
    )  # warm-up ceil(1.5) = 2
    seen = []
    for _ in range(4):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([1 / 3, 2 / 3, 1.0, 7 / 8])
