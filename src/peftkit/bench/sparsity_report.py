"""Summary of ``peftkit bench sparsity``: selection on validation, the table, and the Pareto plot."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from peftkit.bench.report import MISSING, Column, write_report

WITHIN = 1.0       # points of accuracy below dense that still count as "no loss"
ALPHA = 0.05       # McNemar level


def fixed(digits: int) -> Callable[[Any], str]:
    """Formatter with ``digits`` decimals (``–`` for a missing value)."""
    return lambda x: f"{x:.{digits}f}" if isinstance(x, (int, float)) and x == x else MISSING


def load_rows(out_dir: str, suffix: str = "") -> list[dict[str, Any]]:
    rows = []
    for p in sorted((Path(out_dir) / "rows").glob(f"*{suffix}.json")):
        if suffix or not p.stem.endswith("__test"):
            rows.append(json.loads(p.read_text()))
    return rows


def _ms(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def select(runs: list[dict[str, Any]], rules: list[str]) -> dict[str, Any]:
    """The (rule, q) with the largest q within ``WITHIN`` of dense (mean over seeds) and McNemar p >= ALPHA
    (pooled discordant counts), on validation; ties go to the higher accuracy."""
    from peftkit.bench.sparsity import mcnemar_p

    dense = statistics.fmean(r["val_dense_acc"] for r in runs)
    best: dict[str, Any] = {"rule": rules[0], "q": 0.0, "val_acc": dense, "p": 1.0}
    for rule in rules:
        if any(rule not in r["curves"] for r in runs):
            continue
        for i, point in enumerate(runs[0]["curves"][rule]):
            pts = [r["curves"][rule][i] for r in runs]
            acc = statistics.fmean(p["acc"] for p in pts)
            p = mcnemar_p(sum(x["only_dense"] for x in pts), sum(x["only_sparse"] for x in pts))
            if acc >= dense - WITHIN and p >= ALPHA and (point["q"], acc) > (best["q"], best["val_acc"]):
                best = {"rule": rule, "q": point["q"], "val_acc": acc, "p": p,
                        "val_density": statistics.fmean(x["density"] for x in pts)}
    return best


def summarise(cfg: Any) -> list[dict[str, Any]]:
    """One table row per (dataset, variant) with the selection, the test read and the density columns."""
    from peftkit.bench.sparsity import VARIANTS, _list, mcnemar_p

    def family(variant: str) -> str:  # the PEFT method a DEFT row is compared with
        return "pfeiffer" if VARIANTS[variant].adapter else "lora"

    rows = load_rows(cfg.out_dir)
    tests = {(t["dataset"], t["variant"], t["seed"]): t for t in load_rows(cfg.out_dir, "__test")}
    out: list[dict[str, Any]] = []
    for dataset in _list(cfg.datasets):
        base_q: dict[str, dict[str, float]] = {}
        for variant in _list(cfg.variants):
            runs = [r for r in rows if r["dataset"] == dataset and r["variant"] == variant]
            if not runs:
                continue
            sel = select(runs, _list(cfg.rules))
            row: dict[str, Any] = {"dataset": dataset, "variant": variant, "seeds": len(runs), **sel}
            row["val_dense"] = "{:.1f} ± {:.1f}".format(*_ms([r["val_dense_acc"] for r in runs]))
            for key in ("density_exact", "density_gt1e-02", "preact_pos"):
                vals = [r[key] for r in runs if r.get(key) is not None]
                row[key] = statistics.fmean(vals) if vals else None
            done = [tests.get((dataset, variant, r["seed"])) for r in runs]
            done = [t for t in done if t is not None and (t["rule"], t["q"]) == (sel["rule"], sel["q"])]
            if len(done) == len(runs):
                row["test_dense"] = "{:.1f} ± {:.1f}".format(*_ms([t["dense_acc"] for t in done]))
                row["test_sparse"] = "{:.1f} ± {:.1f}".format(*_ms([t["acc"] for t in done]))
                row["test_density"] = statistics.fmean(t["density"] for t in done)
                row["test_p"] = mcnemar_p(sum(t["only_dense"] for t in done),
                                          sum(t["only_sparse"] for t in done))
            if VARIANTS[variant].deft is None:
                base_q.setdefault(family(variant), {})[variant] = sel["q"]
            out.append(row)
        for row in out:
            peft = base_q.get(family(row["variant"]))
            if row["dataset"] == dataset and VARIANTS[row["variant"]].deft is not None and peft:
                row["rel_density"] = (1.0 - row["q"]) / max(1.0 - max(peft.values()), 1e-9)
    return out


COLUMNS = [
    Column("dataset", "data"), Column("variant", "variant"), Column("seeds", "seeds"),
    Column("val_dense", "val acc dense"), Column("rule", "rule (val)"), Column("q", "q* (val)", fixed(2)),
    Column("val_density", "val MLP density % at q*", fixed(1)),
    Column("test_dense", "test acc dense"), Column("test_sparse", "test acc at q*"),
    Column("test_density", "test MLP density %", fixed(1)),
    Column("test_p", "McNemar p (test)", fixed(2)),
    Column("rel_density", "(1-q_DEFT)/(1-q_PEFT best)", fixed(2)),
    Column("density_gt1e-02", "|a|>1e-2 %", fixed(1)),
    Column("preact_pos", "pre-act > 0 %", fixed(1)),
    Column("density_exact", "exact nonzero %", fixed(2)),
]


def figure(cfg: Any, rows: list[dict[str, Any]]) -> Any:
    """Validation accuracy and agreement with dense vs measured MLP density, mean over seeds, per variant
    (its selected rule)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    from peftkit.bench.sparsity import _list

    runs = load_rows(cfg.out_dir)
    datasets = [d for d in _list(cfg.datasets) if any(r["dataset"] == d for r in runs)]
    fig, axes = plt.subplots(2, max(len(datasets), 1), figsize=(6 * max(len(datasets), 1), 8), squeeze=False)
    for j, dataset in enumerate(datasets):
        for row in (r for r in rows if r["dataset"] == dataset):
            rs = [r for r in runs if r["dataset"] == dataset and r["variant"] == row["variant"]]
            n = len(rs[0]["curves"][row["rule"]])
            curve = [[r["curves"][row["rule"]][i] for r in rs] for i in range(n)]
            x = [statistics.fmean(p["density"] for p in pts) for pts in curve]
            for i, key in enumerate(("acc", "agree")):
                axes[i][j].plot(x, [statistics.fmean(p[key] for p in pts) for pts in curve], marker="o", ms=3,
                                label=f"{row['variant']} ({row['rule']})")
        for i, name in enumerate(("validation accuracy %", "agreement with dense %")):
            axes[i][j].set_xscale("log")
            axes[i][j].xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
            axes[i][j].xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            axes[i][j].set_xlabel("MLP density % (measured, validation)")
            axes[i][j].set_ylabel(name)
            axes[i][j].set_title(f"{dataset}: {name}")
            axes[i][j].grid(alpha=0.3)
            axes[i][j].legend(fontsize=7)
    fig.tight_layout()
    return fig


def write(cfg: Any, command: str) -> dict[str, Path]:
    rows = summarise(cfg)
    notes = [
        f"MiniLM ({cfg.backbone}), LoRA r8 alpha 16 (pfeiffer_*: the Pfeiffer adapter, reduction 16, ReLU) "
        f"+ trained head; {cfg.max_train_examples} training "
        f"examples (all when fewer), {cfg.max_length} tokens, {cfg.epochs} epochs, batch {cfg.batch_size}, "
        f"lr {cfg.lr:g}, linear schedule; CPU, {cfg.threads} thread(s).",
        f"Thresholds calibrated on {cfg.calib_examples} training examples; rule and q* chosen on validation "
        f"(largest q within {WITHIN:g} point of dense, mean over seeds, and pooled McNemar p >= {ALPHA:g}); "
        "the test split read once at q*.",
        "rel_density < 0.5 is the goal (DEFT halves the calibrated density of the best baseline of the same "
        "PEFT method: LoRA rows against LoRA rows, Pfeiffer against Pfeiffer).",
        f"Command: `{command.strip()}`",
    ]
    return write_report(cfg.out_dir, "sparsity", rows=rows, columns=COLUMNS,
                        title="Calibrated activation sparsity: PEFT vs PEFT + DEFT", notes=notes,
                        meta={"config": vars(cfg) if hasattr(cfg, "__dict__") else {}},
                        figure=figure(cfg, rows) if rows else None)


