"""Pure-PyTorch Point-MAE backbone: ops (FPS, kNN, Chamfer), the transformer, its spec, pretraining and the
official checkpoint import. Importing this package registers ``point_mae``, ``point_mae_small`` and
``tiny_point``."""

from peftkit.backbones.point import zoo  # noqa: F401  (registers the backbones)
from peftkit.backbones.point.model import Block, PointTransformer
from peftkit.ops.geometry import PointGeometry

__all__ = ["Block", "PointGeometry", "PointTransformer"]
