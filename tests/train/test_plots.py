"""``metrics.png``: a run's losses and validation metrics drawn from ``metrics.jsonl``."""

from __future__ import annotations

import json
from pathlib import Path

from peftkit.train.plots import PLOT_NAME, plot_metrics, read_records


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def test_plot_from_metrics_jsonl_skips_torn_lines(tmp_path: Path) -> None:
    recs = [{"step": s, "epoch": 0, "loss": 2.0 / s, "loss/task": 1.5 / s, "loss/aux": 0.5 / s}
            for s in range(1, 9)]
    recs += [{"step": 4, "epoch": 0, "val/accuracy": 0.5}, {"step": 8, "epoch": 1, "val/accuracy": 0.75},
             {"step": 8, "eval/accuracy": 0.7}]
    lines = [json.dumps(r) for r in recs] + ['{"step": 9, "loss": 0.']        # a run killed mid-write
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines))
    assert len(read_records(tmp_path / "metrics.jsonl")) == len(recs)
    out = plot_metrics(tmp_path)
    assert out == tmp_path / PLOT_NAME
    assert _png_size(out) == (1000, 360)                                     # 10 x 3.6 inches at 100 dpi
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl", PLOT_NAME]   # no temp file left


def test_nothing_to_plot(tmp_path: Path) -> None:
    assert plot_metrics(tmp_path) is None
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "epoch": 0}\n')
    assert plot_metrics(tmp_path) is None and not (tmp_path / PLOT_NAME).exists()
