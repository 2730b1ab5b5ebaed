"""``metrics.png`` in every run folder: the training losses and the validation metrics from ``metrics.jsonl``.

Left panel: ``loss`` per logged step (and its parts ``loss/task``, ``loss/aux`` when the run has an aux term).
Right panel: every ``val/<metric>`` over the steps it was evaluated at (the final ``eval/<metric>`` of the
run as a marker at the last step). Written atomically with matplotlib's Agg backend.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from peftkit.core.io import atomic_write

PLOT_NAME = "metrics.png"
LOSS_KEYS = ("loss", "loss/task", "loss/aux")


def read_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``; a torn or foreign line (a killed run) is skipped."""
    out = []
    for line in Path(path).read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int):
            out.append(rec)
    return out


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], float(r[key])) for r in records if isinstance(r.get(key), (int, float))]
    return [s for s, _ in pts], [v for _, v in pts]


def plot_metrics(run_dir: str | os.PathLike[str]) -> Path | None:
    """Draw ``run_dir/metrics.jsonl`` into ``run_dir/metrics.png``; None when there is nothing to draw."""
    run = Path(run_dir)
    src = run / "metrics.jsonl"
    if not src.is_file():
        return None
    records = read_records(src)
    losses = {k: _series(records, k) for k in LOSS_KEYS}
    losses = {k: v for k, v in losses.items() if v[0]}
    metrics = sorted({k for r in records for k in r if k.startswith("val/") and k != "val/loss"})
    finals = sorted({k for r in records for k in r if k.startswith("eval/") and k != "eval/loss"})
    if not losses and not metrics and not finals:
        return None

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key, (steps, values) in losses.items():
        left.plot(steps, values, label=key, lw=1.2 if key == "loss" else 0.8)
    left.set(xlabel="step", ylabel="loss", title="training loss")
    if losses:
        left.legend(fontsize=8)
    for key in metrics:
        steps, values = _series(records, key)
        right.plot(steps, values, marker="o", ms=3, label=key)
    for key in finals:
        steps, values = _series(records, key)
        right.scatter(steps[-1:], values[-1:], marker="*", s=80, label=key, zorder=3)
    right.set(xlabel="step", title="validation (o) and final evaluation (*)")
    if metrics or finals:
        right.legend(fontsize=8)
    fig.suptitle(run.name, fontsize=10)
    fig.tight_layout()
    try:
        return atomic_write(run / PLOT_NAME, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    finally:
        plt.close(fig)


__all__ = ["plot_metrics", "read_records", "PLOT_NAME"]
