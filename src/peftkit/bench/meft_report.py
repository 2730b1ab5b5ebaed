"""Tables and plots of the MEFT benchmarks (``bench memory``, ``bench meft_accuracy``)."""

from __future__ import annotations

import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from peftkit.bench.report import (
    Column,
    Panel,
    bar_panels,
    fmt_float,
    fmt_frac_pct,
    fmt_int,
    fmt_mib,
    fmt_pct,
    fmt_ratio,
    write_report,
)


def device_note(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"device: {torch.cuda.get_device_name()} (peak = torch.cuda.max_memory_allocated)"
    return (f"device: CPU ({platform.processor() or platform.machine()}), no GPU in this run; peak = RSS "
            "high-water mark over the loaded baseline, so allocator effects are included")


def live_note(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"device: {torch.cuda.get_device_name()} (cuda max_memory_allocated over the step's start)"
    return (f"device: CPU ({platform.processor() or platform.machine()}); peak of live tensor bytes from the "
            "PyTorch profiler's memory events (not RSS)")


def _line_figure(saved: Sequence[dict[str, Any]], archs: list[str], depths: list[int],
                 lengths: list[int]) -> Any:
    """Saved bytes vs depth (shortest length) and vs length (middle depth), one row of panels per shape."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mid, short = depths[len(depths) // 2], lengths[0]
    fig, axes = plt.subplots(len(archs), 2, figsize=(10, 3.6 * len(archs)), squeeze=False)
    for (a, b), arch in zip(axes, archs):
        for r in (r for r in saved if r["arch"] == arch):
            style = "-" if r["method"].startswith("MEFT") and "vanilla" not in r["method"] else "--"
            ds = [d for d in depths if f"saved_L{d}_T{short}" in r]
            if len(ds) > 1:
                a.plot(ds, [r[f"saved_L{d}_T{short}"] / 2**20 for d in ds], style, marker="o",
                       label=r["method"])
            b.plot(lengths, [r[f"saved_L{mid}_T{t}"] / 2**20 for t in lengths], style, marker="o",
                   label=r["method"])
        a.set(xlabel="layers", ylabel="saved for backward (MiB)", yscale="log",
              title=f"{arch}: vs depth, {short} tokens")
        b.set(xlabel="tokens", title=f"{arch}: vs length, {mid} layers", yscale="log", xscale="log")
        a.legend(fontsize=6)
        b.legend(fontsize=6)
    fig.tight_layout()
    return fig


def write_memory(cfg: Any, saved: list[dict[str, Any]], peaks: list[dict[str, Any]],
                 times: list[dict[str, Any]], device: str, seconds: float, command: str,
                 points: list[dict[str, Any]], live: list[dict[str, Any]] | None = None) -> list[Path]:
    """OUT/memory.*, OUT/memory_peak.*, OUT/memory_live.*, OUT/memory_time.* (JSON + Markdown + PNG)."""
    depths = sorted(int(d) for d in cfg.depths.split(","))
    lengths = sorted(int(t) for t in cfg.lengths.split(","))
    arch, td, tt = cfg.target.split(",")
    notes = [device_note(device), f"batch {cfg.batch_size}; same synthetic batch for every method; fp32; "
             f"{cfg.threads} thread(s); random weights", f"command: `{command}`",
             f"wall time {seconds:.0f} s"]
    meta = {"config": vars(cfg), "device": device, "points": points}
    cols = [Column("arch", "shape"), Column("method", "method")]
    cells = sorted({(int(k.split("_")[1][1:]), int(k.split("_")[2][1:])) for r in saved for k in r
                    if k.startswith("saved_L")}, key=lambda c: (c[1], c[0]))
    cols += [Column(f"saved_L{d}_T{t}", f"L{d} T{t}", fmt_mib) for d, t in cells]
    cols += [Column("ratio_target", f"vs full FT ({arch} L{td} T{tt})", fmt_ratio),
             Column("depth_growth", f"L{max(depths)} / L{min(depths)}", fmt_ratio)]
    out = []
    if saved:
        out.append(write_report(cfg.out_dir, "memory", rows=saved, columns=cols, notes=notes, meta=meta,
                                title="Bytes saved for backward (one forward + loss)",
                                figure=_line_figure(saved, cfg.archs.split(","), depths, lengths))["md"])
    if peaks:
        pcols = [Column("method", "method"), Column("depth", "layers"),
                 Column("peak_bytes", "step peak", fmt_mib),
                 Column("retained_bytes", "retained (grads, optimiser)", fmt_mib),
                 Column("transient_bytes", "peak - retained", fmt_mib),
                 Column("peak_vs_full", "peak vs full FT", fmt_ratio),
                 Column("transient_vs_full", "(peak - retained) vs full FT", fmt_ratio)]
        fig = bar_panels([r for r in peaks if r["depth"] == int(td) and r["arch"] == arch], "method",
                         [Panel("peak_bytes", "whole-step peak (MiB)", fmt_mib, 1 / 2**20),
                          Panel("transient_bytes", "peak - retained (MiB)", fmt_mib, 1 / 2**20)],
                         title=f"{arch}, {td} layers, {tt} tokens")
        out.append(write_report(cfg.out_dir, "memory_peak", rows=peaks, columns=pcols, notes=notes, meta=meta,
                                title=f"Whole training step peak, fresh process ({arch}, {tt} tokens)",
                                figure=fig)["md"])
    if live:
        lcols = [Column("method", "method"), Column("depth", "layers"),
                 Column("peak_bytes", "step peak (live tensors)", fmt_mib),
                 Column("peak_vs_full", "vs full FT", fmt_ratio),
                 Column("depth_growth", "deepest / shallowest", fmt_ratio),
                 Column("anchors", "anchors (auto)", lambda v: "–" if v is None else str(len(v)))]
        la, ld, lt = cfg.live_target.split(",")
        fig = bar_panels([r for r in live if r["depth"] == int(ld)], "method",
                         [Panel("peak_vs_full", "whole-step peak / full FT", fmt_ratio)],
                         title=f"{la}, {ld} layers, {lt} tokens, batch {cfg.live_batch}")
        lnotes = [live_note(device), f"{la} shape, {lt} tokens, batch {cfg.live_batch}, dropout 0.1, fp32, "
                  "one step after a warm-up step (AdamW, zero_grad(set_to_none=True)); "
                  f"{cfg.threads} thread(s); rows kept in {cfg.rows_dir}", f"command: `{command}`"]
        out.append(write_report(cfg.out_dir, "memory_live", rows=live, columns=lcols, notes=lnotes, meta=meta,
                                figure=fig, title="Whole training step: peak of live tensor bytes")["md"])
    if times:
        tcols = [Column("method", "method"), Column("rev_s", "reversible (s)", fmt_float),
                 Column("vanilla_s", "vanilla backward (s)", fmt_float),
                 Column("ratio", "reversible / vanilla", fmt_ratio),
                 Column("full_s", "full FT (s)", fmt_float),
                 Column("ratio_full", "reversible / full FT", fmt_ratio)]
        fig = bar_panels(times, "method", [Panel("ratio", "step time, reversible / vanilla", fmt_ratio)])
        a, d, t = cfg.time_arch.split(",")
        out.append(write_report(cfg.out_dir, "memory_time", rows=times, columns=tcols, meta=meta, figure=fig,
                                notes=[*notes, f"{a}, {d} layers, {t} tokens; median of {cfg.time_rounds} "
                                       "interleaved rounds after one warm-up round"],
                                title="Step time of the reversible backward vs vanilla backward")["md"])
    return out


def write_tradeoff(cfg: Any, rows: list[dict[str, Any]], command: str) -> Path:
    """OUT/memory_depth.{json,md,png}: anchors, step peak and gradient error per variant, tolerance, depth."""
    e = lambda v: f"{v:.1e}" if v is not None else "–"  # noqa: E731
    for r in rows:
        r["setting"] = f"{r['variant']}, " + (f"tolerance {r['tolerance']:g}" if r["tolerance"] > 0
                                              else "no anchors")
        if r.get("stream_dtype", "auto") != "auto":
            r["setting"] += f", {r['stream_dtype']} streams"
        r["n_anchors"] = len(r["anchors"])
    cols = [Column("setting", "setting"), Column("depth", "layers"), Column("n_anchors", "anchors"),
            Column("peak_bytes", "step peak (live tensors)", fmt_mib),
            Column("anchor_bytes", "one anchor", fmt_mib),
            Column("growth", "deepest / shallowest", fmt_ratio),
            Column("grad_rel_err", "gradient error vs autograd", e)]
    deepest = max((r["depth"] for r in rows), default=0)
    fig = bar_panels([r for r in rows if r["growth"] is not None and r["depth"] == deepest], "setting",
                     [Panel("growth", "step peak, deepest / shallowest", fmt_ratio)])
    notes = [live_note("cpu"), f"{cfg.tradeoff_target} (arch, tokens), batch {cfg.live_batch}, dropout 0.1, "
             f"fp32, random weights; {cfg.threads} thread(s); rows kept in {cfg.tradeoff_rows_dir}",
             f"command: `{command}`"]
    return write_report(cfg.out_dir, "memory_depth", rows=rows, columns=cols, notes=notes, figure=fig,
                        meta={"config": vars(cfg)},
                        title="MEFT anchors: step peak vs depth and gradient error")["md"]


def write_decoder_memory(cfg: Any, rows: list[dict[str, Any]], command: str) -> Path:
    """OUT/memory_decoder.{json,md,png}: a decoder's step peak under bf16 autocast, MEFT1 against LoRA at
    each length (``bench.memory_live.decoder_rows``)."""
    lora = {r["length"]: r["peak_bytes"] for r in rows if r["method"] != "MEFT1"}
    for r in rows:
        r["label"] = f"{r['method']}, T {r['length']}"
        r["vs_lora"] = r["peak_bytes"] / lora[r["length"]] if r["length"] in lora else None
        r["loss_txt"] = " → ".join(f"{x:.2f}" for x in r.get("losses", []))
        r["n_anchors"] = len(r["anchors"]) if r.get("anchors") is not None else None
    cols = [Column("length", "tokens"), Column("method", "method"),
            Column("peak_bytes", "step peak (live tensors)", fmt_mib),
            Column("vs_lora", "vs LoRA", fmt_ratio),
            Column("loss_txt", "losses over the steps (one fixed batch)"),
            Column("n_anchors", "anchors", lambda v: "–" if v is None else str(v)),
            Column("reconstruction_worst", "worst reconstruction error (last step)",
                   lambda v: "–" if v is None else f"{v:.1e}")]
    fig = bar_panels(rows, "label", [Panel("peak_bytes", "step peak (MiB)", fmt_mib, 1 / 2**20)])
    notes = [live_note("cpu"), "SmolLM2-135M classifier, batch 1, fp32 weights under bf16 autocast, default "
             f"settings, AdamW; {cfg.threads} thread(s); rows kept in {cfg.rows_dir}",
             f"command: `{command}`"]
    return write_report(cfg.out_dir, "memory_decoder", rows=rows, columns=cols, notes=notes, figure=fig,
                        meta={"config": vars(cfg)},
                        title="Decoder under bf16 autocast: MEFT1 vs LoRA step peak")["md"]


def _pm(key: str, pct: bool = True) -> Any:
    """A function of a summary row: ``row[key]`` as "mean ± std" (percent when ``pct``)."""
    def fmt(row: Any) -> str:
        m, sd = row.get(key), row.get(key + "_std")
        if m is None:
            return "–"
        scale = 100 if pct else 1
        return f"{scale * m:.1f}" + (f" ± {scale * sd:.1f}" if sd is not None else "")
    return fmt


def _diff_txt(d: dict[str, Any] | None) -> str:
    if d is None:
        return "–"
    ci = "" if d["ci"] is None else f" [{100 * d['ci'][0]:+.1f}, {100 * d['ci'][1]:+.1f}]"
    return f"{100 * d['mean']:+.1f}{ci}"


def paired_lines(paired: Sequence[dict[str, Any]]) -> list[str]:
    """Markdown table of paired differences (points, 95% t-interval) on test and on last-epoch val."""
    if not paired:
        return []
    lines = ["| method | minus | seeds | test: mean [95% CI] | val (last epoch): mean [95% CI] |",
             "|:---|:---|---:|---:|---:|"]
    for p in paired:
        n = len(p["test"]["seeds"]) if p["test"] else 0
        lines.append(f"| {p['label']} | {p['reference']} | {n} | {_diff_txt(p['test'])} | "
                     f"{_diff_txt(p['val'])} |")
    return lines


def write_accuracy(cfg: Any, rows: list[dict[str, Any]], runs: list[dict[str, Any]], seconds: float,
                   command: str, paired: Sequence[dict[str, Any]] = ()) -> list[Path]:
    """OUT/meft_accuracy.{json,md,png}: test accuracy (mean ± std over seeds) at each method's learning
    rate selected on validation, with the sweep's validation accuracies, the final runs' validation accuracy
    after the last epoch, and the paired differences against LoRA and full FT (``paired``)."""
    for r in rows:
        r["val_txt"] = _pm("val_last")(r)
        r["acc"] = _pm("eval/accuracy")(r)
        r["f1"] = _pm("eval/macro_f1")(r)
        r["sweep_txt"] = ", ".join(f"{lr}: {100 * v:.1f}" for lr, v in r["sweep"].items() if v is not None)
    cols = [Column("label", "method"), Column("sweep_txt", "val accuracy % per lr (seed 0)"),
            Column("lr", "selected lr", lambda v: f"{v:g}"), Column("seeds", "seeds"),
            Column("val_txt", "val accuracy % (last epoch)"), Column("acc", "test accuracy %"),
            Column("f1", "test macro-F1 %"),
            Column("trainable_params", "trainable", fmt_int), Column("trainable_pct", "trainable %", fmt_pct)]
    notes = [f"device: CPU ({platform.processor() or platform.machine()}), no GPU",
             f"{cfg.data}, {cfg.backbone}: {cfg.max_train_examples} stratified training examples, "
             f"max_length {cfg.max_length}, {cfg.epochs} epochs, batch {cfg.batch_size}, linear schedule, 6% "
             f"warm-up, {cfg.threads} thread(s)",
             f"learning rate selected on the validation split (seed {cfg.sweep_seed}); the test split read "
             f"once per final run; final seeds {cfg.seeds}",
             f"command: `{command}`", f"wall time {seconds:.0f} s (runs already stored are not rerun)"]
    footer = (["Paired differences (points; 95% Student-t interval over the common seeds):", "",
               *paired_lines(paired)] if paired else [])
    fig = bar_panels([r for r in rows if "eval/accuracy" in r], "label",
                     [Panel("eval/accuracy", "test accuracy", fmt_frac_pct)],
                     title=f"{cfg.backbone} + {cfg.data}")
    return [write_report(cfg.out_dir, "meft_accuracy", rows=rows, columns=cols, notes=notes, figure=fig,
                         meta={"config": vars(cfg), "runs": runs, "paired": list(paired)}, footer=footer,
                         title=f"MEFT vs full FT / LoRA / Pfeiffer adapter, {cfg.data} (CPU, reduced scale)",
                         )["md"]]


def write_numerics(cfg: Any, tables: dict[str, list[dict[str, Any]]], seconds: float,
                   command: str) -> list[Path]:
    """OUT/meft_init.*, OUT/meft_recon.*, OUT/meft_grad.* from :mod:`peftkit.bench.meft_numerics`."""
    notes = [device_note("cpu"), f"{cfg.numerics_backbone}, the first {cfg.numerics_docs} BBC News test "
             f"articles, max_length {cfg.max_length}", f"command: `{command}`", f"wall time {seconds:.0f} s"]
    e = lambda v: f"{v:.1e}" if v is not None else "–"  # noqa: E731
    depth = max((len(r["errors"]) for r in tables.get("meft_recon", [])), default=0)
    specs = {
        "meft_init": ("Starting point: cosine of the converted model's last hidden state with the PLM's",
                      [Column("variant", "variant"), Column("lam", "lam", fmt_float),
                       Column("beta", "beta", fmt_float), Column("cos_mean", "output cos (mean)", fmt_float),
                       Column("cos_min", "output cos (min)", fmt_float),
                       Column("stream_cos", "closest stream cos", fmt_float), Column("stream", "stream")],
                      Panel("cos_mean", "output cosine with the PLM", fmt_float)),
        "meft_recon": ("Relative reconstruction error of each layer input (layer 0 = reconstructed last)",
                       [Column("dtype", "model dtype"), Column("streams", "streams"),
                        Column("variant", "variant"),
                        *[Column(f"layer{i}", f"layer {i}", e) for i in range(depth)]],
                       Panel("worst", "worst layer (log10)", e)),
        "meft_recon_default": (
            "Defaults (fp32 streams, auto anchors, tolerance 1e-3): reconstructed layer inputs in backward",
            [Column("backbone", "backbone"), Column("mode", "mode"), Column("variant", "variant"),
             Column("layers", "layers"), Column("anchors", "anchors (auto)", lambda v: str(v)),
             Column("worst", "worst layer error", e),
             Column("errors", "per layer (0 = anchor)", lambda v: " ".join(f"{x:.0e}" for x in v)),
             Column("anchor_bytes", "one anchor at this batch", fmt_mib),
             Column("anchor_bytes_per_token", "one anchor per token", lambda v: f"{v / 1024:.1f} KiB")],
            Panel("worst", "worst layer error", e)),
        "meft_grad": ("Adapter gradients: reversible backward vs plain autograd (fp32 model)",
                      [Column("variant", "variant"), Column("streams", "streams"),
                       Column("anchor_every", "anchor_every"), Column("grad_rel_err", "relative error", e)],
                      Panel("grad_rel_err", "relative gradient error", e)),
    }
    out = []
    for name, rows in tables.items():
        title, cols, panel = specs[name]
        for r in rows:
            keys = ("dtype", "mode", "streams", "variant", "lam", "beta", "anchor_every")
            r["label"] = " ".join(str(r.get(k)) for k in keys if k in r)
            if name in ("meft_recon", "meft_recon_default"):
                import math

                r["worst_log10"] = math.log10(max(r["worst"], 1e-300))
        if name in ("meft_recon", "meft_recon_default"):
            panel = Panel("worst_log10", "log10 of the worst layer's error", fmt_float)
        fig = bar_panels(rows, "label", [panel], title=title)
        out.append(write_report(cfg.out_dir, name, rows=rows, columns=cols, notes=notes, figure=fig,
                                title=title, meta={"config": vars(cfg)})["md"])
    return out
