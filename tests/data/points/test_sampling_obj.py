"""Surface sampling, normalisation, FPS ordering, the cloud cache; the OBJ reader; synthetic primitives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from peftkit.core.errors import DataError
from peftkit.data.points.sampling import (
    fps_order,
    load_cloud,
    mesh_to_cloud,
    normalize_unit_sphere,
    sample_surface,
    save_cloud,
    triangle_areas,
)
from peftkit.data.points.synthetic import SHAPES, make_shapes
from peftkit.data.points.urdf_objs import parse_obj
from peftkit.data.points.vrml import Mesh
from peftkit.ops.points import farthest_point_sample

# two triangles: a unit right triangle (area 0.5) at z=0 and one of area 4.5 at z=1
MESH = Mesh(
    vertices=np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [3, 0, 1], [0, 3, 1]], dtype=np.float64),
    faces=np.array([[0, 1, 2], [3, 4, 5]]),
    face_material=np.array([0, 1]),
    materials=["PIN-01", "IC-BODY"],
)


def test_area_weighted_sampling_is_on_the_surface_and_proportional() -> None:
    assert triangle_areas(MESH.vertices, MESH.faces).tolist() == [0.5, 4.5]
    pts, face = sample_surface(MESH, 20000, np.random.default_rng(0))
    assert abs((face == 1).mean() - 0.9) < 0.01  # 4.5 / 5.0 of the area
    z0, z1 = pts[face == 0], pts[face == 1]
    assert np.allclose(z0[:, 2], 0) and np.allclose(z1[:, 2], 1)
    assert (z0[:, 0] + z0[:, 1] <= 1 + 1e-6).all() and (z1[:, 0] + z1[:, 1] <= 3 + 1e-6).all()
    assert abs(z0[:, 0].mean() - 1 / 3) < 0.02  # uniform: centroid of the triangle


def test_normalise_and_fps_order() -> None:
    p = np.random.default_rng(1).normal(size=(100, 3)) * 5 + 3
    q = normalize_unit_sphere(p)
    assert np.allclose(q.mean(0), 0, atol=1e-5) and np.isclose(np.linalg.norm(q, axis=1).max(), 1)
    order = fps_order(q)
    assert sorted(order.tolist()) == list(range(100))
    assert order[:10].tolist() == farthest_point_sample(torch.from_numpy(q)[None], 10)[0].tolist()
    with pytest.raises(DataError, match="coincide"):
        normalize_unit_sphere(np.ones((5, 3)))


def test_mesh_to_cloud_keeps_materials_and_caches(tmp_path: Path) -> None:
    pts, mat = mesh_to_cloud(MESH, 256, seed=0)
    assert pts.shape == (256, 3) and mat.dtype == np.int16 and set(mat.tolist()) == {0, 1}
    save_cloud(tmp_path / "a" / "m.npz", pts, mat, MESH.materials)
    assert np.array_equal(load_cloud(tmp_path / "a" / "m.npz"), pts)
    assert np.array_equal(mesh_to_cloud(MESH, 256, seed=0)[0], pts)  # deterministic per seed


def test_degenerate_meshes() -> None:
    flat = Mesh(np.zeros((3, 3)), np.array([[0, 1, 2]]), np.array([0]), [""])
    with pytest.raises(DataError, match="positive area"):
        sample_surface(flat, 10, np.random.default_rng(0))
    bad = Mesh(np.array([[0, 0, 0], [1, 0, np.nan], [0, 1, 0]]), np.array([[0, 1, 2]]), np.array([0]), [""])
    with pytest.raises(DataError, match="NaN"):
        sample_surface(bad, 10, np.random.default_rng(0))


def test_parse_obj() -> None:
    text = ("# cube corner\nv 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nusemtl red\n"
            "f 1/1/1 2/2/2 3/3/3 4/4/4\nf -4 -3 -2\n")
    mesh = parse_obj(text)
    assert mesh.faces.tolist() == [[0, 1, 2], [0, 2, 3], [0, 1, 2]]
    assert mesh.materials == ["", "red"] and mesh.face_material.tolist() == [1, 1, 1]
    for bad, msg in (
        ("v 0 0\n", "3 coordinates"),
        ("v 0 0 0\nf 1 2 3\n", "bad face"),
        ("v 0 0 0\n", "no faces"),
        ("v a b c\n", "line 1"),
    ):
        with pytest.raises(DataError, match=msg):
            parse_obj(bad)


def test_synthetic_shapes() -> None:
    pts, labels = make_shapes(10, 200, seed=0)
    assert pts.shape == (10, 200, 3) and labels.tolist() == [0, 1, 2, 3, 4] * 2
    assert np.allclose(np.linalg.norm(pts, axis=2).max(1), 1, atol=1e-5)
    again, _ = make_shapes(10, 200, seed=0)
    assert np.array_equal(pts, again) and len(SHAPES) == 5
    # spheres are round: distances to the centroid barely vary (after anisotropic scaling <= 1.3/0.7)
    r = np.linalg.norm(pts[0] - pts[0].mean(0), axis=1)
    assert r.min() > 0.4
