"""Synthetic primitives for unit tests: sphere, cube, cylinder, cone, torus (+ noise), as labelled clouds.

Each shape is sampled uniformly on its surface (area-weighted between faces/caps), given a random
anisotropic scale in [0.7, 1.3] and a random rotation, perturbed with Gaussian noise, and normalised to the
unit sphere. Label = primitive index in ``SHAPES``.

Shapes: c clouds, n points.
"""

from __future__ import annotations

import numpy as np

from peftkit.data.points.sampling import normalize_unit_sphere

SHAPES = ("sphere", "cube", "cylinder", "cone", "torus")


def _sphere(n: int, rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _cube(n: int, rng: np.random.Generator) -> np.ndarray:
    p = rng.uniform(-1, 1, size=(n, 3))
    axis = rng.integers(0, 3, n)
    p[np.arange(n), axis] = rng.choice([-1.0, 1.0], n)  # push one coordinate onto a face
    return p


def _cylinder(n: int, rng: np.random.Generator, r: float = 0.5, h: float = 2.0) -> np.ndarray:
    side, cap = 2 * np.pi * r * h, np.pi * r * r
    on_side = rng.random(n) < side / (side + 2 * cap)
    theta = rng.uniform(0, 2 * np.pi, n)
    rad = np.where(on_side, r, r * np.sqrt(rng.random(n)))
    z = np.where(on_side, rng.uniform(-h / 2, h / 2, n), rng.choice([-h / 2, h / 2], n))
    return np.stack([rad * np.cos(theta), rad * np.sin(theta), z], 1)


def _cone(n: int, rng: np.random.Generator, r: float = 0.8, h: float = 1.6) -> np.ndarray:
    slant = np.hypot(r, h)
    side, base = np.pi * r * slant, np.pi * r * r
    on_side = rng.random(n) < side / (side + base)
    theta = rng.uniform(0, 2 * np.pi, n)
    u = np.sqrt(rng.random(n))  # uniform on the lateral surface / the disc
    rad = r * u
    z = np.where(on_side, h * (1 - u), 0.0) - h / 3
    return np.stack([rad * np.cos(theta), rad * np.sin(theta), z], 1)


def _torus(n: int, rng: np.random.Generator, big: float = 0.7, small: float = 0.25) -> np.ndarray:
    out = np.zeros((0, 3))
    while len(out) < n:  # rejection on the area element (big + small cos phi)
        theta, phi = rng.uniform(0, 2 * np.pi, (2, 2 * n))
        keep = rng.random(2 * n) < (big + small * np.cos(phi)) / (big + small)
        ring = big + small * np.cos(phi[keep])
        pts = np.stack([ring * np.cos(theta[keep]), ring * np.sin(theta[keep]), small * np.sin(phi[keep])], 1)
        out = np.concatenate([out, pts])
    return out[:n]


_SAMPLERS = {"sphere": _sphere, "cube": _cube, "cylinder": _cylinder, "cone": _cone, "torus": _torus}


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def make_shapes(
    count: int, num_points: int, seed: int = 0, noise: float = 0.01, shapes: tuple[str, ...] = SHAPES
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` clouds cycling through ``shapes``.

    Returns:
        (points ``[c, n, 3]`` float32, labels ``[c]`` int64 = index into ``shapes``).
    """
    rng = np.random.default_rng(seed)
    pts = np.zeros((count, num_points, 3), dtype=np.float32)
    labels = np.arange(count) % len(shapes)
    for i, lab in enumerate(labels):
        p = _SAMPLERS[shapes[lab]](num_points, rng) * rng.uniform(0.7, 1.3, 3)
        p = p @ _random_rotation(rng).T + rng.normal(scale=noise, size=p.shape)
        pts[i] = normalize_unit_sphere(p)
    return pts, labels.astype(np.int64)
