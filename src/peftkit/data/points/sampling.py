"""Mesh -> point cloud: area-weighted surface sampling, unit-sphere normalisation, FPS ordering.

- Area-weighted sampling: triangle ``j`` is picked with probability ``A_j / sum A``; a point in it is
  ``(1 - sqrt(r1)) a + sqrt(r1) (1 - r2) b + sqrt(r1) r2 c`` with ``r1, r2 ~ U(0, 1)`` (uniform on the
  triangle,
  Osada et al. 2002, "Shape distributions", Sec. 4.2).
- Unit-sphere normalisation as Point-MAE's ``pc_normalize``: subtract the centroid (mean of the points),
  divide by the largest norm.
- FPS ordering: the clouds are stored in farthest-point order, so "FPS to m points" is the first ``m`` rows
  (greedy FPS from a fixed start has the prefix property), which makes Point-MAE's per-step
  "FPS to 1.2 n, then a random n" free at training time.

Shapes: v vertices, f triangles, n points.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from peftkit.core.errors import DataError
from peftkit.core.io import atomic_write
from peftkit.data.points.vrml import Mesh
from peftkit.ops.points import farthest_point_sample


def triangle_areas(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area of every triangle: ``[f]``."""
    a, b, c = (vertices[faces[:, i]] for i in range(3))  # [f, 3] each
    return 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)


def sample_surface(mesh: Mesh, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points uniformly on the surface of ``mesh``.

    Returns:
        (points ``[n, 3]`` float32, the triangle each point lies on ``[n]`` int64).

    Raises:
        DataError: if the mesh has no triangle of positive area or non-finite vertices.
    """
    if not np.isfinite(mesh.vertices).all():
        raise DataError("mesh has NaN or infinite vertex coordinates")
    areas = triangle_areas(mesh.vertices, mesh.faces)
    total = areas.sum()
    if not np.isfinite(total) or total <= 0:
        raise DataError("mesh has no triangle of positive area")
    face = rng.choice(len(areas), size=n, p=areas / total)  # [n]
    r1 = np.sqrt(rng.random(n))[:, None]
    r2 = rng.random(n)[:, None]
    tri = mesh.vertices[mesh.faces[face]]  # [n, 3, 3]
    pts = (1 - r1) * tri[:, 0] + r1 * (1 - r2) * tri[:, 1] + r1 * r2 * tri[:, 2]
    return pts.astype(np.float32), face.astype(np.int64)


def normalize_unit_sphere(points: np.ndarray) -> np.ndarray:
    """Centre on the centroid and scale so the farthest point has norm 1 (``[n, 3] -> [n, 3]``)."""
    centred = points - points.mean(axis=0, keepdims=True)
    radius = float(np.linalg.norm(centred, axis=1).max())
    if not np.isfinite(radius) or radius == 0.0:
        raise DataError("cannot normalise a cloud whose points all coincide")
    return (centred / radius).astype(np.float32)


def fps_order(points: np.ndarray, m: int | None = None) -> np.ndarray:
    """Indices of the first ``m`` (default all) points in farthest-point order, starting at index 0."""
    pts = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32))[None]  # [1, n, 3]
    return farthest_point_sample(pts, m or pts.shape[1])[0].numpy()


def mesh_to_cloud(mesh: Mesh, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sample, normalise and FPS-order a cloud of ``n`` points.

    Returns:
        (points ``[n, 3]`` float32 in FPS order, per-point material index ``[n]`` int16 into
        ``mesh.materials``).
    """
    rng = np.random.default_rng(seed)
    pts, face = sample_surface(mesh, n, rng)
    pts = normalize_unit_sphere(pts)
    order = fps_order(pts)
    return pts[order], mesh.face_material[face[order]].astype(np.int16)


# ---- the on-disk cache of sampled clouds (never committed) ----------------------------------------------


def cache_root() -> Path:
    """peftkit's cache folder: ``$PEFTKIT_CACHE`` or ``~/.cache/peftkit``."""
    return Path(os.environ.get("PEFTKIT_CACHE", Path.home() / ".cache" / "peftkit"))


def save_cloud(path: Path, points: np.ndarray, material: np.ndarray, materials: list[str]) -> None:
    """Write one cloud as ``.npz`` (points, per-point material index, material names), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with tmp.open("wb") as fh:  # a file object: np.savez would otherwise append ".npz" to the name
            np.savez(
                fh,
                points=points.astype(np.float32),
                material=material.astype(np.int16),
                materials=np.array(materials, dtype=str),
            )

    atomic_write(path, write)


def load_cloud(path: Path) -> np.ndarray:
    """The ``[n, 3]`` float32 points of a cached cloud."""
    with np.load(path) as z:
        return z["points"]
