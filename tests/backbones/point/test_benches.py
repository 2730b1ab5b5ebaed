"""The point benches: ops timing report (tiny sizes) and the linear probe of ``bench point``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from peftkit.bench import point, point_ops
from peftkit.core.errors import ConfigError


def test_ops_bench_writes_report(tmp_path: Path) -> None:
    assert point_ops.main([f"out_dir={tmp_path}", "sizes=64x8", "batch=2", "group_size=4", "iters=1"]) == 0
    rows = json.loads((tmp_path / "point_ops.json").read_text())["rows"]
    assert {r["op"] for r in rows} >= {"fps", "knn", "chamfer (masked patches)"}
    assert all(r["ms"] > 0 and r["cpu_ms"] > 0 for r in rows)
    assert (tmp_path / "point_ops.png").is_file() and "median ms" in (tmp_path / "point_ops.md").read_text()
    with pytest.raises(ConfigError, match="unknown option"):
        point_ops.main(["size=1"])


def test_logistic_probe_separates_separable_data() -> None:
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 8, generator=g) * 5
    y = torch.arange(60) % 3
    x = centers[y] + torch.randn(60, 8, generator=g) * 0.1
    assert point.logistic_probe(x[:45], y[:45], x[45:], y[45:], 3, 1e-3) == 1.0
    shuffled = y[torch.randperm(60, generator=g)]
    assert point.logistic_probe(x[:45], shuffled[:45], x[45:], shuffled[45:], 3, 1e-3) < 0.9


def test_point_bench_options() -> None:
    assert point.parse(["epochs=2", "probe=false"]).probe is False
    with pytest.raises(ConfigError):
        point.parse(["epoch=2"])
    with pytest.raises(ConfigError, match="unknown rows"):
        point.main(["rows=full,nope", "probe=false"])
