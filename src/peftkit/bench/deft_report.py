"""Table, notes and per-layer plot of ``peftkit bench deft`` (PEFT vs DEFT), via ``bench/report.py``."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

from peftkit.bench import report as R

COLUMNS = [
    R.Column("pair", "pair"), R.Column("variant", "variant"), R.Column("seeds", "seeds"),
    R.Column("accuracy_cell", "accuracy %"),
    R.Column("exact_cell", "exact-zero density % (pad counted)"),
    R.Column("exact_masked_cell", "exact, pad masked"),
    R.Column("gt1e-06_cell", r"\|a\|>1e-6"), R.Column("gt1e-04_cell", r"\|a\|>1e-4"),
    R.Column("gt1e-02_cell", r"\|a\|>1e-2"), R.Column("preact_pos_cell", "pre-act > 0"),
]


def per_layer_figure(rows: list[dict[str, Any]], title: str) -> Any:
    """One panel per pair: per-layer exact-zero and |a| > 1e-2 density, PEFT (solid) vs DEFT (dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = [r["pair"] for r in rows if r["variant"] == "PEFT"]
    cols = min(3, max(1, len(pairs)))
    nrows = (len(pairs) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.0 * nrows), squeeze=False)
    for ax, pair in zip(axes.flat, pairs):
        for r in rows:
            if r["pair"] != pair or r["variant"] not in ("PEFT", "DEFT"):
                continue
            style = "-" if r["variant"] == "PEFT" else "--"
            for metric, color in (("exact", "tab:blue"), ("gt1e-02", "tab:orange")):
                ys = r["layers"].get(metric, [])
                ax.plot(range(len(ys)), ys, style, color=color, marker=".", lw=1.2,
                        label=f"{r['variant']} {'exact' if metric == 'exact' else '|a|>1e-2'}")
        ax.set_title(pair, fontsize=9)
        ax.set_xlabel("layer", fontsize=8)
        ax.set_ylabel("density % (fp32)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(pairs):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def write(cfg: Any, rows: list[dict[str, Any]], command: str, seconds: float, paper: str,
          reused: tuple[int, int] = (0, 0)) -> dict[str, Path]:
    """Write OUT/deft.{json,md,png}; the notes state the scale, the device and the command."""
    import dataclasses

    notes = [
        f"Scale: BBC News, max_length {cfg.max_length} (articles truncated: almost no padding), "
        f"{cfg.max_train_examples} stratified train articles (SmolLM2: {cfg.smollm2_max_train_examples}), "
        f"{cfg.epochs} epoch(s), batch {cfg.batch_size} (SmolLM2: {cfg.smollm2_batch_size}), linear "
        f"schedule, 6% warm-up; evaluation split '{cfg.eval_split}'. Seeds: {cfg.seeds} "
        f"(SmolLM2: {cfg.smollm2_seeds}).",
        f"DEFT: weight {cfg.weight:g}, eps {cfg.eps:g}, padding "
        f"{'excluded' if cfg.exclude_padding else 'counted'} in the loss. PEFT and DEFT runs share seed, "
        "data, batch, schedule and learning rate.",
        "Densities in percent of MLP activations, fp32, on the evaluation split, mean over samples then "
        "layers (IBM/DEFT compute_eval_sparsity); 'reduction' rows: 100 (PEFT - DEFT) / PEFT per seed, and "
        "the accuracy change in points.",
        f"Target from the paper: {paper}; ours: >= 50% relative reduction at <= 1 point accuracy lost.",
        f"Measured on CPU ({platform.processor() or platform.machine()}), torch threads {cfg.threads}; "
        f"{seconds / 60:.1f} min wall for this invocation ({reused[0]} of {reused[1]} runs reused from "
        f"earlier invocations; each run's train_time_s is in OUT/runs/*/metrics.json). Command: `{command}`",
    ]
    fig = per_layer_figure(rows, "Per-layer MLP activation density\nPEFT (solid) vs DEFT (dashed)")
    from peftkit.bench.deft import variant_name

    title = "PEFT vs DEFT on BBC News"
    meta = {"config": dataclasses.asdict(cfg), "command": command}
    return R.write_report(cfg.out_dir, variant_name(cfg), rows=rows, columns=COLUMNS, title=title,
                          notes=notes, meta=meta, figure=fig)
