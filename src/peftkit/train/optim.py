"""AdamW over the trainable parameters (with a no-decay group) and the learning-rate schedule.

No weight decay on 1-D parameters (biases, norm scales) nor on parameters a module lists in its
``no_weight_decay()`` (local names or the parameters themselves; timm's convention), e.g. prompt tokens
or positional embeddings a method adds.

Schedule, for optimizer step s (0-based) of S, with W = ceil(warmup_ratio * S) warm-up steps:
    s < W:      lr * (s + 1) / (W + 1)                 linear warm-up from lr / (W + 1)
    linear:     lr * max(0, (S - s) / (S - W))
    cosine:     lr * 0.5 * (1 + cos(pi * (s - W) / (S - W)))
    constant:   lr
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from peftkit.core.errors import ConfigError


def no_decay_ids(model: nn.Module) -> set[int]:
    """Ids of the parameters exempt from weight decay."""
    out = {id(p) for p in model.parameters() if p.ndim <= 1}
    for m in model.modules():
        fn = getattr(m, "no_weight_decay", None)
        if not callable(fn):
            continue
        local = dict(m.named_parameters())
        for item in fn():
            if isinstance(item, torch.Tensor):
                out.add(id(item))
            elif item in local:
                out.add(id(local[item]))
            else:
                raise ConfigError(
                    f"{type(m).__name__}.no_weight_decay() names '{item}', which is not one of its parameters"
                )
    return out


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, object]]:
    """Two AdamW groups over ``requires_grad`` parameters: decayed, and not decayed."""
    skip = no_decay_ids(model)
    decay, plain, seen = [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (plain if id(p) in skip else decay).append(p)
    if not decay and not plain:
        raise ConfigError("the model has no trainable parameters: the method stack trains nothing")
    return [
        g
        for g in ({"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0})
        if g["params"]
    ]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr)


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (see the module docstring)."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    span = max(total - warmup, 1)
    progress = min((step - warmup) / span, 1.0)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ConfigError(f"unknown schedule '{schedule}'; choose linear, cosine or constant")


def build_scheduler(
    opt: torch.optim.Optimizer, total_steps: int, warmup_ratio: float, schedule: str
) -> LambdaLR:
    warmup = math.ceil(warmup_ratio * total_steps)
    lr_factor(0, total_steps, warmup, schedule)  # validates the name now
    return LambdaLR(opt, lambda s: lr_factor(s, total_steps, warmup, schedule))


def clip_grad(params: Iterable[nn.Parameter], max_norm: float | None) -> None:
    if max_norm is not None and max_norm > 0:
        torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], max_norm)
