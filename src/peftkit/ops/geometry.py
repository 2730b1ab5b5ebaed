"""The per-forward geometry of a point cloud, computed once by the grouper and handed to every block.

Point-MAE (Pang et al., "Masked Autoencoders for Point Cloud Self-supervised Learning", ECCV 2022,
arXiv 2203.06604) tokenises a cloud into ``g`` local patches: ``g`` centres by farthest point sampling and,
for each centre, its ``k`` nearest points expressed relative to the centre. Methods that need the geometry
(Point-PEFT's geometry-aware adapter, prompts with coordinates) read it from this object instead of
recomputing it or taking a dozen keyword arguments.

Shapes: b batch, n points, g groups (patches), k neighbours per group.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PointGeometry:
    """Geometry of one batch of point clouds.

    Attributes:
        points: the input clouds, ``[b, n, 3]``.
        centers: patch centres (a subset of ``points`` chosen by FPS), ``[b, g, 3]``.
        neighborhood: the ``k`` nearest points of each centre, centre-relative, ``[b, g, k, 3]``.
        knn_idx: indices of those neighbours into ``points`` (per cloud, ``0..n-1``), ``[b, g, k]``.
        example_index: the clouds' indices in their training set, ``[b]`` long, when the batch carries them
            (``data.example_index=true``); methods that cache per-example values read it.
    """

    points: torch.Tensor
    centers: torch.Tensor
    neighborhood: torch.Tensor
    knn_idx: torch.Tensor
    example_index: torch.Tensor | None = None

    @property
    def num_groups(self) -> int:
        return int(self.centers.shape[1])

    @property
    def group_size(self) -> int:
        return int(self.knn_idx.shape[2])

    def select(self, idx: torch.Tensor) -> PointGeometry:
        """The geometry of the groups ``idx`` only (``[b, g']``, long), e.g. the visible patches."""
        b = torch.arange(idx.shape[0], device=idx.device)[:, None]  # [b, 1]
        return PointGeometry(
            points=self.points,
            centers=self.centers[b, idx],  # [b, g', 3]
            neighborhood=self.neighborhood[b, idx],  # [b, g', k, 3]
            knn_idx=self.knn_idx[b, idx],  # [b, g', k]
            example_index=self.example_index,
        )
