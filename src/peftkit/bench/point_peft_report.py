"""Render the Point-PEFT reproduction from its row JSONs (``OUT/rows/<row>__s<seed>.json``), no training.

Per row: validation accuracy after the last epoch and test accuracy (read once, after the last epoch) as
mean ± sample sd over the seeds present; trainable parameters apart from the head and the head itself;
median step time and peak memory of the runs. The paired difference Point-PEFT - full FT over the seeds
both rows have: ``d_i = acc_i(Point-PEFT) - acc_i(full)``, ``mean(d) ± t_{0.975, n-1} sd(d) / sqrt(n)``
(a 95% Student-t interval; it needs n >= 2).
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from peftkit.bench.report import paired_diff
from peftkit.core.io import atomic_write, atomic_write_json, atomic_write_text


def load_rows(out: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((out / "rows").glob("*.json"))]


def _ms(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else float("nan"))


def aggregate(records: list[dict[str, Any]], order: list[str]) -> list[dict[str, Any]]:
    """One summary per row, in ``order`` (rows without records are left out)."""
    out = []
    for row in order:
        recs = sorted((r for r in records if r["row"] == row), key=lambda r: r["seed"])
        if not recs:
            continue
        val = [r["val_last"] for r in recs if r["val_last"] is not None]
        test = [r["test"] for r in recs if r["test"] is not None]
        first = recs[0]
        head = first.get("head_params") or 0
        total = first.get("total_params")
        body = (first.get("trainable_params") or 0) - head if row != "linear_probe" else 0
        times = [r["step_time_s"] for r in recs if r.get("step_time_s")]
        peaks = [r["peak_memory_bytes"] for r in recs if r.get("peak_memory_bytes")]
        out.append({
            "row": row, "label": first["label"], "seeds": [r["seed"] for r in recs],
            "val": _ms(val) if val else None, "test": _ms(test) if test else None,
            "trainable_body": body, "head": head,
            "body_pct": 100 * body / (total - head) if total and row != "linear_probe" else None,
            "owners": {k: v for k, v in first.get("trainable_by_owner", {}).items() if k != "head"},
            "step_time_s": statistics.median(times) if times else None,
            "peak_mib": statistics.median(peaks) / 2**20 if peaks else None,
            "epochs": first.get("epochs"), "curves": [r["val_curve"] for r in recs],
        })
    return out


def paired(
    records: list[dict[str, Any]], a: str, b: str, key: str = "test", b_constant: bool = False
) -> dict[str, Any] | None:
    """Paired difference ``a - b`` over the seeds both rows have (mean, sd, 95% t-interval).

    ``b_constant``: ``b`` is deterministic (one record, e.g. the L-BFGS probe); its value is used for every
    seed of ``a``, so the interval is that of ``a``'s mean.
    """
    va = {r["seed"]: r[key] for r in records if r["row"] == a and r[key] is not None}
    vb = {r["seed"]: r[key] for r in records if r["row"] == b and r[key] is not None}
    if b_constant and len(vb) == 1:
        only = next(iter(vb.values()))
        vb = {s: only for s in va}
    return paired_diff(va, vb)


def _pm(x: tuple[float, float] | None) -> str:
    if x is None:
        return "–"
    m, s = x
    return f"{100 * m:.1f}" if math.isnan(s) else f"{100 * m:.1f} ± {100 * s:.1f}"


def markdown(rows: list[dict[str, Any]], diffs: dict[str, Any], notes: list[str]) -> str:
    lines = [
        "| method | seeds | val acc (%) | test acc (%) | trainable (no head) | % of encoder | head | "
        "step (s) | peak RSS (MiB) |",
        "|:---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        pct = "–" if r["body_pct"] is None else f"{r['body_pct']:.2f}%"
        step = "–" if r["step_time_s"] is None else f"{r['step_time_s']:.2f}"
        peak = "–" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
        lines.append(
            f"| {r['label']} | {len(r['seeds'])} | {_pm(r['val'])} | {_pm(r['test'])} | "
            f"{r['trainable_body']:,} | {pct} | {r['head']:,} | {step} | {peak} |"
        )
    lines.append("")
    for name, d in diffs.items():
        if d is None:
            continue
        ci = (
            "needs 2+ seeds" if d["ci"] is None
            else f"95% CI [{100 * d['ci'][0]:+.1f}, {100 * d['ci'][1]:+.1f}]"
        )
        lines.append(f"- {name}: {100 * d['mean']:+.1f} points ({ci}; seeds {d['seeds']}, "
                     f"per seed {', '.join(f'{100 * x:+.1f}' for x in d['diffs'])})")
    owners = [f"{r['label']}: " + ", ".join(f"{k} {v:,}" for k, v in r["owners"].items() if v)
              for r in rows if any(r["owners"].values()) and "val only" not in r["label"]]
    lines += ["", "Trainable parameters per owner (head apart): " + "; ".join(owners), ""]
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def figure(rows: list[dict[str, Any]], title: str) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = (11, 0.45 * len(rows) + 2.2)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=size, gridspec_kw={"width_ratios": [3, 2]})
    ys = range(len(rows))
    for off, key, color in ((-0.2, "val", "C0"), (0.2, "test", "C1")):
        m = [100 * r[key][0] if r[key] else 0 for r in rows]
        s = [100 * r[key][1] if r[key] and not math.isnan(r[key][1]) else 0 for r in rows]
        ax.barh([y + off for y in ys], m, 0.4, xerr=s, color=color, label=key)
    ax.set_yticks(list(ys), [r["label"] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("accuracy after the last epoch (%, mean ± sd over seeds)")
    ax.legend(fontsize=8)
    plotted = 0
    for r in rows:
        curves = [c for c in r["curves"] if c]
        shown = ("full", "point_peft", "point_peft_cached", "head_only", "lora", "full_lr1e-3_test",
                 "pp_tuned")
        if curves and r["row"] in shown:
            n = min(len(c) for c in curves)
            mean = [100 * statistics.fmean(c[e] for c in curves) for e in range(n)]
            ax2.plot(range(1, n + 1), mean, label=r["label"], color=f"C{plotted % 10}")
            plotted += 1
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("val accuracy (%, mean over seeds)")
    ax2.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def report(out: Path, bench: dict[str, Any], overrides: list[str]) -> dict[str, Path]:
    """Write ``OUT/point_peft.{md,json,png}`` from the row JSONs."""
    from peftkit.bench.point_peft import ROWS

    records = load_rows(out)
    rows = aggregate(records, list(ROWS))
    diffs = {
        "Point-PEFT - full FT, test": paired(records, "point_peft", "full"),
        "Point-PEFT - full FT, val": paired(records, "point_peft", "full", "val_last"),
        "Point-PEFT cached query - Point-PEFT, test": paired(records, "point_peft_cached", "point_peft"),
        "Point-PEFT cached query - Point-PEFT, val": paired(
            records, "point_peft_cached", "point_peft", "val_last"
        ),
        "Point-PEFT cached query - full FT, test": paired(records, "point_peft_cached", "full"),
        "Point-PEFT, val-selected recipe - full FT, val-selected lr, test": paired(
            records, "pp_tuned", "full_lr1e-3_test"
        ),
        "Point-PEFT, val-selected recipe - full FT, val-selected lr, val": paired(
            records, "pp_tuned", "full_lr1e-3_test", "val_last"
        ),
        "Point-PEFT, val-selected recipe - full FT (lr 5e-4), test": paired(records, "pp_tuned", "full"),
        "Point-PEFT, val-selected recipe - Point-PEFT, test": paired(records, "pp_tuned", "point_peft"),
        "Point-PEFT, val-selected recipe - remedy A alone (no LayerNorm weights), test": paired(
            records, "pp_tuned", "ppc_lr1e-3_test"
        ),
        "Point-PEFT remedy A alone - full FT, val-selected lr, test": paired(
            records, "ppc_lr1e-3_test", "full_lr1e-3_test"
        ),
        "Point-PEFT remedy A alone - full FT, val-selected lr, val": paired(
            records, "ppc_lr1e-3_test", "full_lr1e-3_test", "val_last"
        ),
        "Point-PEFT remedy A alone - Point-PEFT, test": paired(records, "ppc_lr1e-3_test", "point_peft"),
        "Point-PEFT remedy A alone - Point-PEFT cached query (lr 5e-4), test": paired(
            records, "ppc_lr1e-3_test", "point_peft_cached"
        ),
        "full FT lr 1e-3 - full FT lr 5e-4, test": paired(records, "full_lr1e-3_test", "full"),
        "full FT - linear probe, test": paired(records, "full", "linear_probe", b_constant=True),
        "full FT - linear probe, val": paired(records, "full", "linear_probe", "val_last", b_constant=True),
    }
    notes = [
        f"KiCad-12, point_mae_small (CPU-pretrained), 512 points, 32 patches x 16, {bench['epochs']} "
        "epochs, batch 32, AdamW + cosine, scale + translate augmentation, head dropout 0; train = train "
        "minus the carved val split",
        "val: after the last epoch; test: read once per run after the last epoch (the selection rows, "
        "val only, never read it)",
        "step time: median training step of each run (wall, shared 2-core CPU, 1 thread); peak: process "
        "RSS high-water mark over the start of training",
        "command: peftkit bench point_peft " + " ".join(overrides),
    ]
    md = markdown(rows, diffs, notes)
    paths = {"md": out / "point_peft.md", "json": out / "point_peft.json", "png": out / "point_peft.png"}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(paths["md"], md)
    atomic_write_json(paths["json"], {"bench": bench, "rows": rows, "diffs": diffs}, indent=1)
    fig = figure(rows, "Point-PEFT reproduction on KiCad-12 (CPU protocol)")
    import matplotlib.pyplot as plt

    atomic_write(paths["png"], lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return paths
