"""``peftkit bench memory``: MEFT's activation-memory claim, swept over depth and sequence length.

MEFT (Liao, Tan, Monz; NeurIPS 2023; arXiv 2306.00477) claims "up to 84% less activation memory than full
fine-tuning", with memory independent of depth when every layer is reversible. Same batch and length for every
method; models are BERT encoders with random weights in the real BERT-base (d 768, 12 heads, FFN 3072) and
MiniLM (d 384, 12 heads, FFN 1536) shapes (``bench.random_bert``), at 6 / 12 / 24 layers and 128 / 512
tokens (docs/design.md, Measuring):

* ``saved``: bytes saved for backward by one forward + loss (``bench.memory.saved_activations``) on a cross
  through the grid (``points``): every method at 12 layers and both lengths, some also at every depth;
* ``peak``: the whole-step peak (CPU: live tensor bytes of the last step from the profiler's memory events,
  CUDA: ``max_memory_allocated``), at the target point (BERT-base, 12 layers, 512 tokens) for every method
  and at 6 / 24 layers for MEFT1 with and without the reversible backward. Every point runs in a fresh process
  (``bench._subproc``);
* ``live``: the whole-step peak of live tensor bytes (profiler memory events; CUDA allocator statistics) of
  one training step after a warm-up step, BERT-base shape, 12 layers, 512 tokens, batch 2, dropout on, for
  every method, and for MEFT1/2/3 at every depth (``bench.memory_live``; rows kept in ``rows_dir``);
* ``time``: median step time of each MEFT variant with the reversible backward as a ratio to the same
  architecture with vanilla backward (``num_rev_layers=0``), interleaved in one process (``bench.speed``).

Methods: full FT, full FT + gradient checkpointing (HF, non-reentrant), LoRA r=8 (q, v), Pfeiffer adapter,
MEFT1/2/3 with num_rev_layers = 0 and = all, MEFT1 + DEFT, MEFT1 without anchors, and MEFT1 with the
backbone's own attention (``bounded_attention=False``). Writes OUT/memory.{json,md,png},
OUT/memory_peak.{json,md,png}, OUT/memory_live.{json,md,png} and OUT/memory_time.{json,md,png}.

Shape legend: b batch, t tokens.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from peftkit.bench._args import parse_overrides
from peftkit.core.errors import ConfigError

_MEFT = {"name": "meft"}
# label -> (method stack, backbone kwargs)
METHODS: dict[str, tuple[list[dict[str, Any]], dict[str, Any]]] = {
    "full FT": ([{"name": "full"}], {}),
    "full FT + grad ckpt": ([{"name": "full"}], {"gradient_checkpointing": True}),
    "LoRA r=8": ([{"name": "lora", "rank": 8, "alpha": 16}], {}),
    "Pfeiffer adapter": ([{"name": "adapter", "kind": "pfeiffer"}], {}),
    **{f"MEFT{v} vanilla": ([{**_MEFT, "variant": f"meft{v}", "num_rev_layers": 0}], {}) for v in (1, 2, 3)},
    **{f"MEFT{v}": ([{**_MEFT, "variant": f"meft{v}"}], {}) for v in (1, 2, 3)},
    "MEFT1 + DEFT": ([{**_MEFT, "variant": "meft1"}, {"name": "deft"}], {}),
    "MEFT1, no anchors": ([{**_MEFT, "variant": "meft1", "anchor_every": 0}], {}),
    "MEFT1, backbone attention": ([{**_MEFT, "variant": "meft1", "bounded_attention": False}], {}),
    "MEFT1, backbone attention vanilla": ([{**_MEFT, "variant": "meft1", "bounded_attention": False,
                                            "num_rev_layers": 0}], {}),
}
TIMED = ("MEFT1", "MEFT2", "MEFT3", "MEFT1, backbone attention")  # reversible vs " vanilla" (+ full FT)
# the saved-bytes / RSS grid: the attention option saves the same bytes as MEFT1 (it only acts in backward)
GRID_METHODS = tuple(m for m in METHODS if "backbone attention" not in m)


@dataclass
class SweepConfig:
    """The sweep's scale; defaults fit about 25 minutes of one CPU thread (docs/results/meft.md)."""

    out_dir: str = "runs/bench_memory"
    archs: str = "bert_base,minilm"
    depths: str = "6,12,24"
    lengths: str = "128,512"
    batch_size: int = 1                    # b; the same for every method
    target: str = "bert_base,12,512"       # (arch, depth, length) of the peak-memory and ratio targets
    points: bool = True                    # the memory points (false: only the step-time ratios)
    peak: bool = True                      # fresh-process whole-step peaks
    peak_steps: int = 1                    # optimiser steps whose peak is read
    time_arch: str = "minilm,12,128"       # where the reversible/vanilla step-time ratio is measured
    time_rounds: int = 3
    live: bool = True                      # whole-step peak of live tensor bytes (bench.memory_live)
    live_target: str = "bert_base,12,512"  # (arch, depth, length); MEFT also at every depth of ``depths``
    live_batch: int = 2
    rows_dir: str = "docs/results/meft_rows/memory"  # one JSON per live row, kept in the repository
    tradeoff: bool = False                 # anchors: peak vs depth and gradient error (bench.memory_depth)
    tradeoff_target: str = "bert_base,512"  # (arch, length); batch live_batch
    tradeoff_depths: str = "6,24"
    tradeoff_variants: str = "meft1,meft3"
    tradeoff_tolerances: str = "1e-3,1e-2,0"  # 0 = no anchors
    tradeoff_rows_dir: str = "docs/results/meft_rows/memory_depth"
    decoder: bool = False                  # SmolLM2 under bf16 autocast: MEFT1 vs LoRA step peak (rows_dir)
    decoder_lengths: str = "512,1024"
    tradeoff_stream_dtypes: str = "auto"    # MEFT stream_dtype values of the trade-off (auto = fp32; float64)
    threads: int = 1
    device: str = "auto"                   # auto | cpu | cuda


def _device(cfg: SweepConfig) -> str:
    return ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device


def _point(text: str) -> tuple[str, int, int]:
    arch, depth, length = text.split(",")
    return arch.strip(), int(depth), int(length)


def step_spec(cfg: SweepConfig, label: str, arch: str, depth: int, length: int, **kw: Any) -> Any:
    from peftkit.bench.memory import StepSpec
    from peftkit.bench.random_bert import BACKBONE

    methods, bkw = METHODS[label]
    bkw = {"arch": arch, "layers": depth, **bkw}
    return StepSpec(backbone=BACKBONE, methods=methods, backbone_kwargs=bkw,
                    batch_size=cfg.batch_size, seq_len=length, device=_device(cfg), threads=cfg.threads, **kw)


def build(cfg: SweepConfig, label: str, arch: str, depth: int,
          length: int) -> tuple[nn.Module, dict[str, Any]]:
    """The model (methods applied, train mode, on the device) and the fixed batch of one grid point."""
    import peftkit as pk
    from peftkit.bench.memory import synthetic_batch
    from peftkit.bench.random_bert import VOCAB, build_bench_bert
    from peftkit.core.configs import method_configs

    spec = step_spec(cfg, label, arch, depth, length)
    torch.manual_seed(spec.seed)
    model = build_bench_bert(num_labels=spec.num_labels, **spec.backbone_kwargs)
    model = pk.apply(model, method_configs(spec.methods)).to(spec.device)
    model.train()
    batch = {k: v.to(spec.device) for k, v in synthetic_batch(spec, VOCAB).items()}
    return model, batch


DEPTH_ARM = ("full FT", "MEFT1 vanilla", "MEFT1", "MEFT3")  # saved bytes at every depth (shortest length)
PEAK_DEPTH_ARM = ("MEFT1 vanilla", "MEFT1")                 # step peaks at every depth (target length)


def points(cfg: SweepConfig) -> list[tuple[str, int, int, str, bool]]:
    """(arch, depth, length, method, with_peak) to measure: a cross through the middle of the grid.

    Every method at the middle depth and every length; the ``DEPTH_ARM`` methods also at every depth (shortest
    length). Whole-step peaks at the target point for every method, and at every depth (target length) for
    ``PEAK_DEPTH_ARM``.
    """
    depths = sorted(int(d) for d in cfg.depths.split(","))
    lengths = sorted(int(t) for t in cfg.lengths.split(","))
    mid = depths[len(depths) // 2]
    tarch, tdepth, tlen = _point(cfg.target)
    out = []
    for arch in cfg.archs.split(","):
        for label in GRID_METHODS:
            cells = {(mid, t) for t in lengths}
            if label in DEPTH_ARM:
                cells |= {(d, lengths[0]) for d in depths}
            deep_peak = arch == tarch and label in PEAK_DEPTH_ARM
            if deep_peak:
                cells |= {(d, tlen) for d in depths}
            for d, t in sorted(cells):
                peak = cfg.peak and arch == tarch and t == tlen and (d == tdepth or deep_peak)
                out.append((arch, d, t, label, peak))
    return out


def measure(cfg: SweepConfig) -> list[dict[str, Any]]:
    """Every point in a fresh child process (``bench._subproc``): saved bytes after ``peak_steps`` training
    steps (0 steps where no peak is wanted). ``bench.random_bert`` is imported here, so the measuring server
    (which preloads the modules this process has imported) registers ``bench_bert`` too.

    In-process measurement is avoided on purpose: ``saved_tensors_hooks`` whose pack hook returns the saved
    tensor itself keep every saved *output* in a reference cycle with its grad_fn that Python's GC cannot see,
    so each measured model would stay in memory.
    """
    from tqdm.auto import tqdm

    import peftkit.bench.random_bert  # noqa: F401  (registers bench_bert, here and in the server)
    from peftkit.bench._subproc import measure_fresh

    pts = points(cfg)
    specs = [step_spec(cfg, label, arch, d, t, steps=cfg.peak_steps if peak else 0, saved_bytes=True)
             for arch, d, t, label, peak in pts]
    with tqdm(total=len(specs), desc="memory points") as bar:
        results = measure_fresh(specs, workers=1, timeout_s=4 * 3600.0, progress=bar)
    rows = []
    for (arch, d, t, label, peak), r in zip(pts, results):
        row = {"arch": arch, "depth": d, "length": t, "method": label,
               "saved_bytes": r["saved_activation_bytes"], "trainable_params": r["trainable_params"]}
        if peak:
            row.update({k: r[k] for k in ("peak_bytes", "retained_bytes", "baseline_bytes", "hwm_reset")})
            row["transient_bytes"] = r["peak_bytes"] - r["retained_bytes"]
        rows.append(row)
    return rows


def saved_table(cfg: SweepConfig, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (arch, method): saved bytes per (depth, length) cell, ratio to full FT at the target."""
    _, tdepth, tlen = _point(cfg.target)
    depths = sorted(int(d) for d in cfg.depths.split(","))
    table: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        t = table.setdefault((r["arch"], r["method"]), {"arch": r["arch"], "method": r["method"]})
        t[f"saved_L{r['depth']}_T{r['length']}"] = r["saved_bytes"]
    for (arch, _), t in table.items():
        full = table[(arch, "full FT")]
        key = f"saved_L{tdepth}_T{tlen}"
        t["ratio_target"] = t[key] / full[key] if key in t and key in full else None
        short = min(int(x) for x in cfg.lengths.split(","))
        lo, hi = [f"saved_L{d}_T{short}" for d in (depths[0], depths[-1])]
        t["depth_growth"] = t[hi] / t[lo] if lo in t and hi in t else None
    return list(table.values())


def peak_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    peaks = [dict(r) for r in rows if "peak_bytes" in r]
    ref = {r["depth"]: r for r in peaks if r["method"] == "full FT"}
    for r in peaks:
        full = ref.get(r["depth"])
        r["peak_vs_full"] = r["peak_bytes"] / full["peak_bytes"] if full else None
        r["transient_vs_full"] = r["transient_bytes"] / max(full["transient_bytes"], 1) if full else None
    return peaks


def time_rows(cfg: SweepConfig) -> list[dict[str, Any]]:
    """Median step time of MEFT1/2/3 (reversible) / the same model with vanilla backward, interleaved with
    full FT (a reference: its backward also computes weight gradients)."""
    from peftkit.bench.memory import default_loss_for, model_inputs
    from peftkit.bench.speed import interleaved_times, medians

    arch, depth, length = _point(cfg.time_arch)
    steps = {}
    for label in ["full FT", *[f"{m}{s}" for m in TIMED for s in ("", " vanilla")]]:
        model, batch = build(cfg, label, arch, depth, length)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        loss_fn = default_loss_for(model)

        def step(model: nn.Module = model, batch: dict = batch, opt: Any = opt,
                 loss_fn: Any = loss_fn) -> None:
            loss_fn(model(**model_inputs(batch)), batch).backward()
            opt.step()
            opt.zero_grad(set_to_none=False)

        steps[label] = step
    med = medians(interleaved_times(steps, warmup=1, rounds=cfg.time_rounds))
    return [{"method": m, "arch": arch, "depth": depth, "length": length, "rev_s": med[m],
             "vanilla_s": med[f"{m} vanilla"], "ratio": med[m] / med[f"{m} vanilla"],
             "full_s": med["full FT"], "ratio_full": med[m] / med["full FT"]} for m in TIMED]


def parse(overrides: list[str]) -> SweepConfig:
    cfg = parse_overrides(SweepConfig, overrides, "memory")
    bad = [d for d in cfg.tradeoff_stream_dtypes.split(",") if d not in ("auto", "float32", "float64")]
    if bad:
        raise ConfigError(f"tradeoff_stream_dtypes: unknown {bad}; use auto, float32 or float64 "
                          "(comma-separated)")
    return cfg


def main(overrides: list[str]) -> int:
    """Run the sweep; write the three reports (see the module docstring)."""
    from peftkit.bench.meft_report import write_memory

    cfg = parse(overrides)
    torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    from peftkit.bench.memory_live import live_rows, live_table

    rows = measure(cfg) if cfg.points else []
    live = live_table(live_rows(cfg, _device(cfg))) if cfg.live else []
    times = time_rows(cfg) if cfg.time_rounds else []
    paths = write_memory(cfg, saved_table(cfg, rows), peak_table(rows), times, _device(cfg),
                         time.perf_counter() - t0, "peftkit bench memory " + " ".join(overrides), rows, live)
    if cfg.tradeoff:
        from peftkit.bench.meft_report import write_tradeoff
        from peftkit.bench.memory_depth import tradeoff_rows

        arch, length = cfg.tradeoff_target.split(",")
        trade = tradeoff_rows(cfg.tradeoff_rows_dir, arch, [int(d) for d in cfg.tradeoff_depths.split(",")],
                              int(length), cfg.live_batch, cfg.tradeoff_variants.split(","),
                              [float(t) for t in str(cfg.tradeoff_tolerances).split(",")],
                              tuple(cfg.tradeoff_stream_dtypes.split(",")))
        paths.append(write_tradeoff(cfg, trade, "peftkit bench memory " + " ".join(overrides)))
    if cfg.decoder:
        from peftkit.bench.meft_report import write_decoder_memory
        from peftkit.bench.memory_live import decoder_rows

        dec = decoder_rows(cfg.rows_dir, tuple(int(t) for t in cfg.decoder_lengths.split(",")), steps=6)
        paths.append(write_decoder_memory(cfg, dec, "peftkit bench memory " + " ".join(overrides)))
    print("wrote " + ", ".join(str(p) for p in paths), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
