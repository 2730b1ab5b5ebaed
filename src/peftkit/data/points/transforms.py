"""Point-cloud augmentation and resampling, batched in torch (as the Point-MAE code applies them).

- ``scale_and_translate``: ``x' = s * x + t`` per cloud, ``s ~ U[2/3, 3/2]^3`` (anisotropic),
  ``t ~ U[-0.2, 0.2]^3``
  (Point-BERT/Point-MAE ``PointcloudScaleAndTranslate`` defaults).
- ``rotate_up``: rotation about the up axis by ``theta ~ U[-pi, pi]`` (``PointcloudRotate`` rotates about y,
  the up axis of ShapeNet; KiCad models are z-up).
- ``jitter``: ``x' = x + clip(sigma * N(0, 1), -c, c)`` (sigma 0.01, c 0.05, PointNet's jitter).
- ``resample``: training takes FPS to ``ratio * n`` points (ratio 1.2) then a random ``n`` of them;
  evaluation takes FPS to ``n``. On clouds stored in FPS order both are prefixes (no FPS at run time).
- ``vote_logits``: test-time voting, the mean of the logits over ``votes`` scale-and-translate copies
  (Point-MAE's ``validate_vote`` uses 10).

Shapes: b batch, n points.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from peftkit.core.errors import DataError
from peftkit.ops.points import farthest_point_sample, gather_points

SCALE_LOW, SCALE_HIGH, TRANSLATE = 2.0 / 3.0, 3.0 / 2.0, 0.2  # Point-MAE PointcloudScaleAndTranslate
FPS_RATIO = 1.2  # Point-MAE fine-tuning: FPS 1200 -> 1024
_AXES = {"x": 0, "y": 1, "z": 2}


def _uniform(shape: tuple[int, ...], low: float, high: float, g: torch.Generator | None, like: torch.Tensor):
    return torch.rand(shape, generator=g, dtype=like.dtype).to(like.device) * (high - low) + low


def scale_and_translate(
    points: torch.Tensor,
    generator: torch.Generator | None = None,
    scale_low: float = SCALE_LOW,
    scale_high: float = SCALE_HIGH,
    translate: float = TRANSLATE,
) -> torch.Tensor:
    """Random anisotropic scale and translation per cloud: ``[b, n, 3] -> [b, n, 3]``."""
    b = points.shape[0]
    s = _uniform((b, 1, 3), scale_low, scale_high, generator, points)
    t = _uniform((b, 1, 3), -translate, translate, generator, points)
    return points * s + t


def rotate_up(points: torch.Tensor, generator: torch.Generator | None = None, up: str = "y") -> torch.Tensor:
    """Random rotation about the ``up`` axis per cloud: ``[b, n, 3] -> [b, n, 3]``."""
    if up not in _AXES:
        raise DataError(f"up axis must be one of x, y, z, got {up!r}")
    b = points.shape[0]
    theta = _uniform((b,), -math.pi, math.pi, generator, points)
    c, s = torch.cos(theta), torch.sin(theta)
    i, j = [a for a in range(3) if a != _AXES[up]]  # the plane that rotates
    rot = torch.zeros(b, 3, 3, dtype=points.dtype, device=points.device)
    rot[:, _AXES[up], _AXES[up]] = 1.0
    rot[:, i, i], rot[:, i, j], rot[:, j, i], rot[:, j, j] = c, -s, s, c
    return points @ rot.transpose(1, 2)  # [b, n, 3]


def jitter(
    points: torch.Tensor, generator: torch.Generator | None = None, sigma: float = 0.01, clip: float = 0.05
) -> torch.Tensor:
    """Clipped Gaussian noise on every coordinate."""
    noise = torch.randn(points.shape, generator=generator, dtype=points.dtype).to(points.device)
    return points + (sigma * noise).clamp(-clip, clip)


def resample(
    points: torch.Tensor,
    n: int,
    train: bool,
    generator: torch.Generator | None = None,
    ratio: float = FPS_RATIO,
    fps_ordered: bool = False,
) -> torch.Tensor:
    """Point-MAE's resampling of ``[b, m, 3]`` clouds to ``[b, n, 3]``.

    Args:
        points: the clouds; with ``fps_ordered`` their rows are already in farthest-point order.
        n: points out.
        train: FPS to ``ceil(ratio * n)`` then a random ``n`` (train), or FPS to ``n`` (eval).
        generator: RNG of the random subset.
        ratio: oversampling before the random subset (paper: 1.2).
        fps_ordered: take prefixes instead of running FPS.
    """
    b, m, _ = points.shape
    if m < n:
        raise DataError(f"clouds have {m} points but {n} are needed")
    pool = min(m, math.ceil(ratio * n)) if train else n
    if fps_ordered:
        sub = points[:, :pool]
    else:
        sub = gather_points(points, farthest_point_sample(points, pool))  # [b, pool, 3]
    if not train or pool == n:
        return sub
    keep = torch.rand(b, pool, generator=generator).argsort(dim=1)[:, :n].to(points.device)  # [b, n]
    return gather_points(sub, keep)


@torch.no_grad()
def vote_logits(
    model: nn.Module, points: torch.Tensor, votes: int = 10, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Mean logits over ``votes`` scale-and-translate copies of each cloud (the first copy is unchanged)."""
    out = model(points=points)
    for _ in range(votes - 1):
        out = out + model(points=scale_and_translate(points, generator))
    return out / votes
