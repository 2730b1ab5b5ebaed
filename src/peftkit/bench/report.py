"""Benchmark output: a JSON file, a Markdown table and a PNG plot side by side, each written atomically.

Every ``peftkit bench`` writes ``NAME.json`` (the rows and the run's metadata), ``NAME.md`` (title, scale
notes, the table) and ``NAME.png``. Rows are plain dicts; a ``Column`` says which key to show and how to
format it. Missing values print as an en dash, so rows from methods that measure different things share one
table.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftkit.core.io import atomic_write, atomic_write_text

# two-sided 95% Student-t quantiles t_{0.975, df}
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}

Row = Mapping[str, Any]
MISSING = "–"


# ---- number formats ------------------------------------------------------------------------------------


def _ok(x: Any) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def fmt_int(n: Any) -> str:
    """``1234567`` -> ``1,234,567`` (parameter counts)."""
    return f"{int(n):,d}" if _ok(n) else MISSING


def fmt_mib(n: Any) -> str:
    """Bytes -> ``12.3 MiB`` (one decimal; ``0.01 MiB`` precision below 1 MiB)."""
    if not _ok(n):
        return MISSING
    mib = n / 2**20
    return f"{mib:.1f} MiB" if abs(mib) >= 1 else f"{mib:.2f} MiB"


def fmt_pct(x: Any, digits: int = 2) -> str:
    """``12.345`` (already a percentage) -> ``12.35%``."""
    return f"{x:.{digits}f}%" if _ok(x) else MISSING


def fmt_frac_pct(x: Any, digits: int = 1) -> str:
    """A fraction ``0.9123`` -> ``91.2%`` (accuracy, density)."""
    return f"{100 * x:.{digits}f}%" if _ok(x) else MISSING


def fmt_ratio(x: Any) -> str:
    """``0.523`` -> ``0.52x``."""
    return f"{x:.2f}x" if _ok(x) else MISSING


def fmt_float(x: Any, digits: int = 3) -> str:
    return f"{x:.{digits}g}" if _ok(x) else MISSING


def fmt_text(x: Any) -> str:
    return str(x) if _ok(x) else MISSING


@dataclass(frozen=True)
class Column:
    """One table column: the row key, its header, and the formatter of its values."""

    key: str
    header: str
    fmt: Callable[[Any], str] = fmt_text


def markdown_table(rows: Sequence[Row], columns: Sequence[Column]) -> str:
    """A GitHub Markdown table; numbers right-aligned, the first column left-aligned."""
    head = "| " + " | ".join(c.header for c in columns) + " |"
    rule = "|" + "|".join([":---"] + ["---:"] * (len(columns) - 1)) + "|"
    body = ["| " + " | ".join(c.fmt(r.get(c.key)) for c in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def text_table(rows: Sequence[Row], columns: Sequence[Column]) -> str:
    """The same table aligned for a terminal."""
    cells = [[c.header for c in columns]] + [[c.fmt(r.get(c.key)) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = []
    for j, row in enumerate(cells):
        parts = [row[0].ljust(widths[0])] + [v.rjust(w) for v, w in zip(row[1:], widths[1:])]
        lines.append("  ".join(parts))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ---- plots ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Panel:
    """One bar chart of a figure: the row key to plot, a title, and how to label each bar."""

    key: str
    title: str
    fmt: Callable[[Any], str] = fmt_float
    scale: float = 1.0          # value shown = row[key] * scale (e.g. 1 / 2**20 for MiB)


def bar_panels(rows: Sequence[Row], label_key: str, panels: Sequence[Panel], title: str = "",
               ncols: int = 3) -> Any:
    """A matplotlib Figure with one horizontal bar chart per panel (``ncols`` a line), one bar per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [str(r.get(label_key, "")) for r in rows]
    ncols = min(ncols, len(panels))
    nrows = -(-len(panels) // ncols)
    size = (3.8 * ncols, (0.32 * len(rows) + 1.0) * nrows + 0.4)
    fig, axes = plt.subplots(nrows, ncols, figsize=size, squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for i, (ax, p) in enumerate(zip(axes.flat, panels)):
        vals = [r.get(p.key) for r in rows]
        shown = [v * p.scale if _ok(v) else 0.0 for v in vals]
        bars = ax.barh(range(len(rows)), shown, color="tab:blue")
        for b, v in zip(bars, vals):
            ax.text(b.get_width(), b.get_y() + b.get_height() / 2, " " + p.fmt(v), va="center", fontsize=7)
        ax.set_yticks(range(len(rows)), labels if i % ncols == 0 else [""] * len(rows), fontsize=8)
        ax.invert_yaxis()
        ax.set_title(p.title, fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
        ax.margins(x=0.35)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# ---- writing -------------------------------------------------------------------------------------------


def write_report(
    out_dir: str | os.PathLike[str],
    name: str,
    *,
    rows: Sequence[Row],
    columns: Sequence[Column],
    title: str,
    notes: Sequence[str] = (),
    meta: Mapping[str, Any] | None = None,
    figure: Any = None,
    footer: Sequence[str] = (),
) -> dict[str, Path]:
    """Write ``NAME.json``, ``NAME.md`` and ``NAME.png`` under ``out_dir`` (each via a temp name + rename).

    Args:
        rows: one dict per table row (all keys go to the JSON, the columns' keys to the table).
        columns: the table's columns.
        title: the Markdown heading and the plot's title.
        notes: lines printed under the heading (scale, seed, device, the command).
        meta: extra JSON fields (the scale, timings, the command).
        figure: a matplotlib Figure (e.g. from ``bar_panels``); it is closed after saving.
        footer: Markdown lines after the table (e.g. a second, smaller table).

    Returns:
        ``{"json": path, "md": path, "png": path}`` (no ``png`` without a figure).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{name}.json", "md": out / f"{name}.md"}
    payload = {"title": title, "notes": list(notes), **(meta or {}), "rows": [dict(r) for r in rows]}
    atomic_write_text(paths["json"], json.dumps(payload, indent=2, default=str) + "\n")
    md = [f"# {title}", "", *[f"- {n}" for n in notes], "", markdown_table(rows, columns), "",
          *([*footer, ""] if footer else [])]
    if figure is not None:
        paths["png"] = out / f"{name}.png"
        md += [f"![{name}]({name}.png)", ""]
    atomic_write_text(paths["md"], "\n".join(md))
    if figure is not None:
        import matplotlib.pyplot as plt

        atomic_write(paths["png"], lambda p: figure.savefig(p, dpi=110, format="png"))
        plt.close(figure)
    return paths


def paired_diff(a: Mapping[int, float], b: Mapping[int, float]) -> dict[str, Any] | None:
    """Paired difference ``a - b`` over the seeds both have: ``d_i = a_i - b_i``,
    ``mean(d) ± t_{0.975, n-1} sd(d) / sqrt(n)`` (a 95% Student-t interval; None without a common seed;
    ``sd`` and ``ci`` None with one seed)."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    d = [a[s] - b[s] for s in seeds]
    mean = sum(d) / len(d)
    if len(d) < 2:
        return {"seeds": seeds, "diffs": d, "mean": mean, "sd": None, "ci": None}
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1))
    half = T975[len(d) - 1] * sd / math.sqrt(len(d))
    return {"seeds": seeds, "diffs": d, "mean": mean, "sd": sd, "ci": [mean - half, mean + half]}
