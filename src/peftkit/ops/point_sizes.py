"""Sizes of the registered point transformers (constants only).

The backbone builders (``peftkit.backbones.point.zoo``) build from these tables and the point datasets read
``num_points`` from them for their default, so the table sits below both layers.
"""

from __future__ import annotations

from typing import Any

# Sizes. point_mae = Point-MAE paper (arXiv 2203.06604, Sec. 4 / cfgs/finetune_modelnet.yaml).
POINT_MAE_SIZE: dict[str, Any] = dict(
    num_points=1024, num_groups=64, group_size=32, dim=384, depth=12, heads=6
)
# Small: pretrains on one CPU thread in about an hour (docs/point.md). Depth 8 >= the 6 layers Point-PEFT
# prompts; the mini-PointNet is halved because on CPU it costs more than the transformer.
POINT_MAE_SMALL_SIZE: dict[str, Any] = dict(
    num_points=1024, num_groups=64, group_size=32, dim=192, depth=8, heads=3, embed_hidden=(64, 128, 256)
)
TINY_POINT_SIZE: dict[str, Any] = dict(
    num_points=128,
    num_groups=16,
    group_size=8,
    dim=32,
    depth=2,
    heads=4,
    embed_hidden=(16, 32, 64),
    pos_hidden=16,
    cls_head_dims=(32,),
    drop_path=0.0,
)
POINT_SIZES: dict[str, dict[str, Any]] = {
    "point_mae": POINT_MAE_SIZE,
    "point_mae_small": POINT_MAE_SMALL_SIZE,
    "tiny_point": TINY_POINT_SIZE,
}


def default_num_points(backbone: str) -> int:
    """Input points of a registered point backbone (1024, Point-MAE's, for any other id)."""
    return int(POINT_SIZES.get(backbone, {}).get("num_points", 1024))
