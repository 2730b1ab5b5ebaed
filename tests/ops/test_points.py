"""FPS, kNN, grouping and Chamfer-L2 against brute-force references written independently here."""

from __future__ import annotations

import itertools

import pytest
import torch

from peftkit.bench.point_ops import fps_previous
from peftkit.core.errors import DataError
from peftkit.ops.points import (
    chamfer_l2,
    check_points,
    farthest_point_sample,
    gather_points,
    group_points,
    knn,
    square_distance,
)


def _fps_reference(p: torch.Tensor, m: int, start: int = 0) -> list[int]:
    """Textbook FPS with python loops over points, float64."""
    chosen = [start]
    for _ in range(m - 1):
        best, best_d = -1, -1.0
        for i in range(len(p)):
            d = min(float(((p[i] - p[j]) ** 2).sum()) for j in chosen)
            if d > best_d:
                best, best_d = i, d
        chosen.append(best)
    return chosen


def test_fps_matches_brute_force() -> None:
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(3, 40, 3, generator=g, dtype=torch.float64)
    idx = farthest_point_sample(pts, 10)
    for b in range(3):
        assert idx[b].tolist() == _fps_reference(pts[b], 10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fps_fast_path_parity_with_the_previous_implementation(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(1)
    pts = torch.rand(4, 600, 3, generator=g).to(dtype)
    pts[:, 300:310] = pts[:, 0:1]  # duplicates: ties go to the lowest index in both
    grid = torch.stack(torch.meshgrid(*[torch.arange(5.0)] * 3, indexing="ij"), -1).reshape(1, 125, 3)
    for cloud, m in ((pts, 64), (grid.to(dtype), 40)):
        assert torch.equal(farthest_point_sample(cloud, m), fps_previous(cloud, m))


def test_fps_start_index_and_random_start() -> None:
    pts = torch.rand(2, 30, 3, dtype=torch.float64)
    assert farthest_point_sample(pts, 5, start=7)[:, 0].tolist() == [7, 7]
    assert farthest_point_sample(pts, 5, start=7)[0].tolist() == _fps_reference(pts[0], 5, start=7)
    gen = torch.Generator().manual_seed(3)
    r = farthest_point_sample(pts, 30, start="random", generator=gen)
    assert sorted(r[0].tolist()) == list(range(30))  # a full FPS is a permutation


def test_fps_prefix_property() -> None:
    pts = torch.rand(1, 64, 3)
    full = farthest_point_sample(pts, 64)
    assert torch.equal(full[:, :16], farthest_point_sample(pts, 16))


def test_knn_matches_brute_force_and_is_sorted() -> None:
    g = torch.Generator().manual_seed(1)
    q, r = (
        torch.rand(2, 7, 3, generator=g, dtype=torch.float64),
        torch.rand(2, 50, 3, generator=g, dtype=torch.float64),
    )
    d, idx = knn(q, r, 5, max_block_elems=2 * 3 * 50)  # forces 3 chunks over the queries
    for b, i in itertools.product(range(2), range(7)):
        ref = sorted(range(50), key=lambda j: float(((q[b, i] - r[b, j]) ** 2).sum()))[:5]
        assert idx[b, i].tolist() == ref
        assert torch.allclose(d[b, i], ((r[b, ref] - q[b, i]) ** 2).sum(-1))


def test_square_distance() -> None:
    x, y = torch.rand(2, 5, 3, dtype=torch.float64), torch.rand(2, 6, 3, dtype=torch.float64)
    ref = ((x[:, :, None] - y[:, None]) ** 2).sum(-1)
    assert torch.allclose(square_distance(x, y), ref)


def test_group_points_neighbourhoods() -> None:
    pts = torch.rand(2, 64, 3)
    geom = group_points(pts, num_groups=8, group_size=4)
    assert geom.centers.shape == (2, 8, 3) and geom.neighborhood.shape == (2, 8, 4, 3)
    assert geom.knn_idx.shape == (2, 8, 4)
    # the nearest neighbour of a centre is the centre itself (distance 0)
    assert torch.allclose(geom.neighborhood[:, :, 0], torch.zeros(2, 8, 3), atol=1e-6)
    rebuilt = gather_points(pts, geom.knn_idx) - geom.centers[:, :, None]
    assert torch.equal(rebuilt, geom.neighborhood)
    sub = geom.select(torch.tensor([[0, 2], [1, 3]]))
    assert torch.equal(sub.centers[1, 0], geom.centers[1, 1]) and sub.num_groups == 2


def test_chamfer_l2_matches_brute_force() -> None:
    x, y = torch.rand(3, 9, 3, dtype=torch.float64), torch.rand(3, 11, 3, dtype=torch.float64)
    d1 = torch.stack(
        [
            torch.stack([min(((x[b, i] - y[b, j]) ** 2).sum() for j in range(11)) for i in range(9)])
            for b in range(3)
        ]
    )
    d2 = torch.stack(
        [
            torch.stack([min(((y[b, j] - x[b, i]) ** 2).sum() for i in range(9)) for j in range(11)])
            for b in range(3)
        ]
    )
    assert torch.allclose(chamfer_l2(x, y, max_block_elems=20), d1.mean() + d2.mean())
    assert chamfer_l2(x, x).abs() < 1e-12


def test_chamfer_gradient_finite_at_zero_distance() -> None:
    x = torch.rand(1, 8, 3, requires_grad=True)
    chamfer_l2(x, x.detach().clone()).backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize(
    "bad,msg",
    [
        (torch.rand(4, 3), "shape"),
        (torch.rand(1, 10, 2), "shape"),
        (torch.full((1, 10, 3), float("nan")), "NaN"),
        (torch.zeros(1, 10, 3, dtype=torch.long), "floating"),
        (torch.rand(1, 3, 3), "at least"),
    ],
)
def test_bad_points(bad: torch.Tensor, msg: str) -> None:
    with pytest.raises(DataError, match=msg):
        check_points(bad, min_points=4)


def test_fps_and_knn_reject_impossible_sizes() -> None:
    with pytest.raises(DataError, match="cannot sample"):
        farthest_point_sample(torch.rand(1, 5, 3), 6)
    with pytest.raises(DataError, match="nearest"):
        knn(torch.rand(1, 2, 3), torch.rand(1, 3, 3), 4)
    with pytest.raises(DataError, match="start"):
        farthest_point_sample(torch.rand(1, 5, 3), 2, start=9)
