"""The demo's table, notes and plot: ``OUT/demo.{json,md,png}`` (``bench/report.py`` does the writing)."""

from __future__ import annotations

import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from peftkit.bench import report as R

DENSITY_KEY = "density/exact@fp32"   # DEFT's metric: exact-zero density, padding counted, fp32 (percent)
ABOVE_KEY = "density/gt1e-02@fp32"   # share of MLP activations with |a| > 1e-2 (percent)


def scale_line(cfg: Any) -> str:
    """One line that states the scale of the run (printed, and written into the notes)."""
    train = f"{cfg.max_train_examples} train articles" if cfg.max_train_examples else "the full train split"
    return (f"scale: {train}, max_length {cfg.max_length}, {cfg.epochs} epoch(s), batch {cfg.batch_size}, "
            f"seed {cfg.seed}, eval on the {cfg.eval_split} split")


def columns(rows: Sequence[Mapping[str, Any]]) -> list[R.Column]:
    """The table's columns; the density ones only when some row measured density."""
    cols = [
        R.Column("label", "method"),
        R.Column("lr", "lr", lambda x: f"{x:g}"),
        R.Column("trainable_params", "trainable params", R.fmt_int),
        R.Column("trainable_pct", "trainable %", lambda x: R.fmt_pct(x, 3)),
        R.Column("eval/accuracy", "accuracy", R.fmt_frac_pct),
        R.Column("step_time_s", "step (s)", lambda x: R.fmt_float(x, 3)),
        R.Column("step_time_ratio", "step vs full", R.fmt_ratio),
        R.Column("saved_activation_bytes", "saved activations", R.fmt_mib),
        R.Column("saved_activation_ratio", "saved vs full", R.fmt_ratio),
        R.Column("peak_memory_bytes", "peak step", R.fmt_mib),
        R.Column("peak_memory_ratio", "peak vs full", R.fmt_ratio),
    ]
    if any(DENSITY_KEY in r for r in rows):  # the exact-zero density stays in the JSON (GELU: ~100%)
        cols.append(R.Column(ABOVE_KEY, "MLP |a|>1e-2", lambda x: R.fmt_pct(x, 1)))
    if any("sparse/density" in r for r in rows):
        cols.append(R.Column("sparse/density", "MLP density at <=1 pt", lambda x: R.fmt_pct(x, 1)))
        cols.append(R.Column("sparse/accuracy", "accuracy sparse", R.fmt_frac_pct))
        cols.append(R.Column("sparse/speedup", "sparse MLP speed-up", R.fmt_ratio))
    return cols


def figure(rows: Sequence[Mapping[str, Any]], title: str, eval_split: str = "test") -> Any:
    """Bars per row: accuracy, trainable share, saved activations, peak step memory, step time, density."""
    panels = [
        R.Panel("eval/accuracy", f"{eval_split} accuracy (%)", R.fmt_frac_pct, 100.0),
        R.Panel("trainable_pct", "trainable params (%)", lambda x: R.fmt_pct(x, 2)),
        R.Panel("saved_activation_bytes", "saved activations (MiB)", R.fmt_mib, 1 / 2**20),
        R.Panel("peak_memory_bytes", "peak step memory (MiB)", R.fmt_mib, 1 / 2**20),
        R.Panel("step_time_ratio", "step time vs full FT", R.fmt_ratio),
    ]
    if any(DENSITY_KEY in r for r in rows):
        panels.append(R.Panel(ABOVE_KEY, "MLP activations |a| > 1e-2 (%)", lambda x: R.fmt_pct(x, 1)))
    return R.bar_panels(rows, "label", panels, title)


def write(cfg: Any, rows: list[dict[str, Any]], skipped: Sequence[str], timing: Mapping[str, float],
          command: str) -> dict[str, Path]:
    """Print the table and write ``OUT/demo.{json,md,png}``."""
    title = f"peftkit demo: fine-tuning methods on {cfg.backbone} + {cfg.data}"
    mode = {"fresh": "each in a fresh process", "inline": "in the demo's process (not fresh)", "off": "off"}
    notes = [
        scale_line(cfg),
        f"accuracy: on the {cfg.eval_split} split after the last step (no early stopping, no checkpoint "
        "selection)",
        f"every row: same seed, data order, batch and linear schedule (warm-up {cfg.warmup_ratio:g}); "
        "lr per row",
        f"step time: median of {cfg.speed_rounds} round-robin rounds after {cfg.speed_warmup} warm-up, one "
        f"synthetic batch {cfg.batch_size} x {cfg.max_length}, all rows in one process; compare the ratios",
        f"memory ({mode[cfg.memory]}): bytes saved for backward (storages, parameters excluded) and peak "
        f"live tensor bytes of the last of {cfg.memory_steps} AdamW steps (profiler memory events), "
        f"batch {cfg.batch_size} x {cfg.max_length}",
        f"device: CPU ({platform.machine()}, {torch.get_num_threads()} torch threads); no GPU was used",
        f"wall time: {timing['total_s']:.0f} s in all ({timing['train_s']:.0f} s training + evaluation)",
        f"command: {command.strip()}",
        *([] if not any("sparse/density" in r for r in rows) else [
            "sparsity (LoRA rows): pk.sparsify, magnitude rule, calibrated on 16 training articles; the "
            "largest q within 1 point of dense on the validation split; MLP density and accuracy on the "
            f"{cfg.eval_split} split at that q; speed-up = dense / sparse time of one {cfg.max_length}-token "
            "sentence, batch 1 (pk.sparse_mlp)"]),
        *skipped,
    ]
    cols = columns(rows)
    print("\n" + R.text_table(rows, cols), flush=True)
    meta = {"config": {k: v for k, v in vars(cfg).items()}, "timing_s": dict(timing), "command": command}
    return R.write_report(cfg.out_dir, "demo", rows=rows, columns=cols, title=title, notes=notes, meta=meta,
                          figure=figure(rows, title, cfg.eval_split))
