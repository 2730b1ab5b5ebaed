"""Registered point backbones: ``point_mae`` (paper size), ``point_mae_small`` (CPU-pretrainable) and
``tiny_point`` (tests).

Every builder takes ``num_labels`` (the head's classes), ``checkpoint`` (our safetensors, e.g. the shipped
``checkpoints/point_mae_small_kicad.safetensors``, or the official Point-MAE ``pretrain.pth``), ``seed`` (the
random init, forked so the global RNG is untouched) and any :class:`PointTransformer` size override.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from peftkit.backbones.point.model import PointTransformer
from peftkit.backbones.point.spec import finish_point_model
from peftkit.core.errors import ConfigError
from peftkit.core.registry import register_backbone
from peftkit.ops.point_sizes import POINT_SIZES

SIZES = POINT_SIZES  # the size table lives in peftkit.ops.point_sizes (the data pipeline reads it too)
SHIPPED_CHECKPOINTS = {"point_mae_small": "checkpoints/point_mae_small_kicad.safetensors"}


def build_point_model(
    backbone_id: str,
    num_labels: int | None = None,
    checkpoint: str | None = None,
    seed: int = 0,
    task: str = "classification",
    **overrides: Any,
) -> nn.Module:
    """Build a registered point transformer, optionally loading pretrained encoder weights.

    Raises:
        ConfigError: for an unknown size field, a task other than classification, or ``num_labels < 2``.
        CheckpointError: when the checkpoint does not fit the model (see ``convert.py``).
    """
    if task != "classification":
        raise ConfigError(f"point backbones support task 'classification' only, got '{task}'")
    kwargs = dict(SIZES[backbone_id])
    unknown = sorted(set(overrides) - set(PointTransformer.__init__.__code__.co_varnames[1:]))
    if unknown:
        raise ConfigError(f"unknown {backbone_id} option(s) {unknown}; see peftkit.backbones.point.model")
    kwargs.update(overrides)
    num_classes = int(num_labels if num_labels is not None else kwargs.pop("num_classes", 40))
    kwargs.pop("num_classes", None)
    if num_classes < 2:
        raise ConfigError(f"num_labels must be >= 2, got {num_classes}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = PointTransformer(num_classes=num_classes, **kwargs)
    if checkpoint:
        from peftkit.backbones.point.convert import load_pretrained

        load_pretrained(model, checkpoint)
    model.eval()
    return finish_point_model(model, backbone_id)


@register_backbone("point_mae", "Point-MAE transformer (1024 pts, 64x32 patches, d=384, 12 blocks, 22.1M)")
def point_mae(
    num_labels: int | None = None, checkpoint: str | None = None, seed: int = 0, **kw: Any
) -> nn.Module:
    return build_point_model("point_mae", num_labels, checkpoint, seed, **kw)


@register_backbone(
    "point_mae_small", "small Point-MAE (1024 pts, 64x32, d=192, 8 blocks); CPU-pretrained on KiCad"
)
def point_mae_small(
    num_labels: int | None = None, checkpoint: str | None = None, seed: int = 0, **kw: Any
) -> nn.Module:
    return build_point_model("point_mae_small", num_labels, checkpoint, seed, **kw)


@register_backbone("tiny_point", "random tiny point transformer (128 pts, 16x8, d=32, 2 blocks) for tests")
def tiny_point(
    num_labels: int | None = None, checkpoint: str | None = None, seed: int = 0, **kw: Any
) -> nn.Module:
    return build_point_model("tiny_point", num_labels, checkpoint, seed, **kw)
