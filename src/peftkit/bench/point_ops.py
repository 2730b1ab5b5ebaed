"""``peftkit bench ops``: speed of the pure-PyTorch point ops at the papers' sizes.

Sizes (Point-MAE, arXiv 2203.06604): 1024 points with 64 groups of 32 (ModelNet40, pretraining) and 2048
points with 128 groups of 32 (ScanObjectNN), batch 32. Timed: FPS (n -> g centres), kNN (k = 32 of n for g
centres), the whole grouping (FPS + kNN + gather), Chamfer-L2 over the masked patches of pretraining
(``0.6 g`` patches of 32 points per cloud) and over whole clouds (n vs n). Median of ``iters`` calls after one
warm-up call; on a shared CPU compare rows of one run, not absolute numbers across machines.
"""

from __future__ import annotations

import dataclasses
import platform
import statistics
import time
import typing
from dataclasses import dataclass

import torch

from peftkit.bench._args import parse_overrides
from peftkit.bench.report import Column, Panel, bar_panels, fmt_float, fmt_text, write_report
from peftkit.bench.speed import median_step_time
from peftkit.ops.points import chamfer_l2, farthest_point_sample, group_points, knn


@dataclass
class OpsConfig:
    out_dir: str = "runs/bench"
    name: str = "point_ops"
    batch: int = 32  # paper batch size
    sizes: str = "1024x64,2048x128"  # points x groups (paper sizes)
    group_size: int = 32  # paper k
    iters: int = 3
    threads: int = 1
    device: str = "cpu"


def parse(overrides: list[str]) -> OpsConfig:
    return parse_overrides(OpsConfig, overrides, "ops")


def fps_previous(points: torch.Tensor, m: int) -> torch.Tensor:
    """The earlier FPS loop (array of structures, ``((p - c) ** 2).sum(-1)`` per step): the speed reference
    for ``farthest_point_sample``, which returns the same indices (tests/ops)."""
    b, n, _ = points.shape
    batch, far = torch.arange(b), torch.zeros(b, dtype=torch.long)
    idx, mind = torch.empty(b, m, dtype=torch.long), torch.full((b, n), float("inf"), dtype=points.dtype)
    for i in range(m):
        idx[:, i] = far
        mind = torch.minimum(mind, ((points - points[batch, far][:, None, :]) ** 2).sum(-1))
        far = mind.argmax(-1)
    return idx


def time_ops(b: int, n: int, g: int, k: int, iters: int, device: str) -> list[dict[str, typing.Any]]:
    """Median milliseconds of each op for one size."""
    gen = torch.Generator().manual_seed(0)
    pts = torch.rand(b, n, 3, generator=gen).to(device)
    other = torch.rand(b, n, 3, generator=gen).to(device)
    centers = pts[:, :g]
    m = round(0.6 * g)
    pa = torch.rand(b * m, k, 3, generator=gen).to(device)
    pb = torch.rand(b * m, k, 3, generator=gen).to(device)
    ops = {
        "fps": lambda: farthest_point_sample(pts, g),
        "fps (previous loop, reference)": lambda: fps_previous(pts, g),
        "knn": lambda: knn(centers, pts, k),
        "group (fps+knn+gather)": lambda: group_points(pts, g, k),
        "chamfer (masked patches)": lambda: chamfer_l2(pa, pb),
        "chamfer (whole clouds)": lambda: chamfer_l2(pts, other),
    }
    try:
        from scipy.spatial import cKDTree

        if device == "cpu":
            p_np, c_np = pts.numpy(), centers.numpy()
            ops["knn (scipy cKDTree, reference)"] = lambda: [
                cKDTree(p_np[i]).query(c_np[i], k) for i in range(b)
            ]
    except ImportError:
        pass
    size = f"b{b} n{n} g{g} k{k}"
    rows = []
    for name, fn in ops.items():
        wall = 1000 * median_step_time(fn, warmup=1, iters=iters)
        cpu = []
        for _ in range(iters):  # process CPU time: less sensitive to other jobs on a shared machine
            t0 = time.process_time()
            fn()
            cpu.append(1000 * (time.process_time() - t0))
        rows.append({"op": name, "size": size, "label": f"{name} @ n{n}/g{g}", "ms": wall,
                     "cpu_ms": statistics.median(cpu)})
    return rows


def main(overrides: list[str] | None = None) -> int:
    cfg = parse(overrides or [])
    torch.set_num_threads(cfg.threads)
    rows = []
    with torch.no_grad():
        for s in cfg.sizes.split(","):
            n, g = (int(x) for x in s.lower().split("x"))
            rows += time_ops(cfg.batch, n, g, cfg.group_size, cfg.iters, cfg.device)
    cols = [
        Column("op", "op"),
        Column("size", "size", fmt_text),
        Column("ms", "median ms (wall)", lambda x: fmt_float(x, 4)),
        Column("cpu_ms", "median ms (CPU)", lambda x: fmt_float(x, 4)),
    ]
    fig = bar_panels(
        rows,
        "label",
        [Panel("cpu_ms", "median CPU ms per call", lambda x: fmt_float(x, 3))],
        title=f"point ops, {cfg.device}, {cfg.threads} thread(s)",
    )
    notes = [
        f"device: {cfg.device} ({platform.processor() or platform.machine()}), torch threads {cfg.threads}, "
        f"torch {torch.__version__}",
        f"median of {cfg.iters} calls after 1 warm-up call",
        "command: peftkit bench ops " + " ".join(overrides or []),
    ]
    paths = write_report(
        cfg.out_dir,
        cfg.name,
        rows=rows,
        columns=cols,
        title="Point ops speed (pure PyTorch)",
        notes=notes,
        meta={"config": dataclasses.asdict(cfg)},
        figure=fig,
    )
    from peftkit.bench.report import text_table

    print(text_table(rows, cols))
    print(f"wrote {paths['md']}")
    return 0
