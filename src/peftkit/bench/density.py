"""``peftkit bench density run_dir=RUN``: the MLP activation density of a saved run, in fp32 and in bf16.

DEFT (Runwal, Pedapati, Chen, arXiv 2402.01911) reports the exact-zero density of the MLP activations
(IBM/DEFT ``compute_eval_sparsity``). Whether a GELU output is exactly zero depends on the dtype the model
runs in (fp32: x below about -5.5; bf16 differs), so one checkpoint is evaluated once per dtype: the run's
backbone is rebuilt, its adapter loaded (strictly), and ``density_report`` run on the chosen split with the
model cast to each dtype (a copy; inputs cast alike). Writes ``OUT/density.{json,md,png}`` (OUT defaults to
``RUN/density``): one row per dtype, and a per-layer plot.

Overrides: ``run_dir=`` (required), ``dtypes=fp32,bf16``, ``split=test|val``, ``max_batches=``,
``batch_size=``, ``out_dir=``, ``threads=``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftkit.bench._args import parse_overrides as parse_bench_overrides
from peftkit.core.errors import ConfigError

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
SHOW = ("exact", "exact_masked", "gt1e-06", "gt1e-04", "gt1e-02", "preact_pos")


@dataclass
class DensityBenchConfig:
    run_dir: str = ""
    dtypes: str = "fp32,bf16"
    split: str = "test"
    max_batches: int | None = None
    batch_size: int = 32
    out_dir: str | None = None
    threads: int | None = 1


def parse_overrides(overrides: list[str]) -> DensityBenchConfig:
    """``key=value`` strings -> DensityBenchConfig (the shared bench parser), then the run is checked."""
    cfg = parse_bench_overrides(DensityBenchConfig, overrides, "density")
    if not cfg.run_dir:
        raise ConfigError("peftkit bench density needs run_dir=RUN (a directory written by peftkit train)")
    if not (Path(cfg.run_dir) / "config.yaml").is_file() or not (Path(cfg.run_dir) / "adapter").is_dir():
        raise ConfigError(f"{cfg.run_dir} is not a finished run (needs config.yaml and adapter/)")
    bad = [d for d in cfg.dtypes.split(",") if d.strip() not in DTYPES]
    if bad:
        raise ConfigError(f"unknown dtype(s) {bad}; choose from {', '.join(DTYPES)}")
    if cfg.split not in ("test", "val"):
        raise ConfigError(f"split must be test or val, got {cfg.split!r}")
    return cfg


def measure(cfg: DensityBenchConfig) -> list[dict[str, Any]]:
    """One row per dtype: the overall metrics, per-layer exact / |a|>1e-2 densities, the time taken."""
    import torch

    import peftkit as pk
    from peftkit.methods.deft.metrics import density_report
    from peftkit.train.build import build_data, eval_loader
    from peftkit.train.config import load_config

    run = load_config(Path(cfg.run_dir) / "config.yaml")
    data = build_data(run)
    model = pk.load_backbone(run.backbone.name, task=run.backbone.task, num_labels=data.num_labels,
                             **run.backbone.kwargs)
    model = pk.load_adapter(model, Path(cfg.run_dir) / "adapter")
    loader = eval_loader(data, cfg.split, cfg.batch_size, 0)
    if loader is None:
        raise ConfigError(f"the run's data has no '{cfg.split}' split")
    rows = []
    for name in [d.strip() for d in cfg.dtypes.split(",")]:
        t = time.perf_counter()
        r = density_report(model, loader, data.pad_key, dtype=getattr(torch, DTYPES[name]),
                           max_batches=cfg.max_batches)
        suffix = f"@{name}"
        row: dict[str, Any] = {"dtype": name, "samples": r["samples"], "seconds": time.perf_counter() - t}
        for m in SHOW:
            row[m] = r[f"{m}{suffix}"]
        for m in ("exact", "gt1e-02"):
            n = sum(1 for k in r if k.startswith(f"{m}/L") and k.endswith(suffix))
            row[f"layers/{m}"] = [r[f"{m}/L{i}{suffix}"] for i in range(n)]
        rows.append(row)
    return rows


def figure(rows: list[dict[str, Any]], title: str) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for r, color in zip(rows, ("tab:blue", "tab:red", "tab:green")):
        for m, style in (("exact", "-"), ("gt1e-02", "--")):
            ys = r[f"layers/{m}"]
            ax.plot(range(len(ys)), ys, style, color=color, marker=".",
                    label=f"{r['dtype']} {'exact' if m == 'exact' else '|a|>1e-2'}")
    ax.set_xlabel("layer")
    ax.set_ylabel("density %")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def main(overrides: list[str]) -> int:
    from peftkit.bench import report as R

    cfg = parse_overrides(overrides)
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    rows = measure(cfg)
    out = cfg.out_dir or str(Path(cfg.run_dir) / "density")
    cols = [R.Column("dtype", "dtype"), R.Column("samples", "samples", R.fmt_int)]
    cols += [R.Column(m, m + " %", lambda x: R.fmt_pct(x, 3)) for m in SHOW]
    notes = [f"Run {cfg.run_dir}, split '{cfg.split}'; the model (adapter loaded) cast to each dtype, CPU.",
             "Densities: % of MLP activations, mean over samples then layers; *_masked: padding and prompt "
             "tokens left out; preact_pos: % of activation inputs > 0.",
             f"Command: `peftkit bench density {' '.join(overrides)}`"]
    paths = R.write_report(out, "density", rows=rows, columns=cols, title="Activation density by dtype",
                           notes=notes, figure=figure(rows, f"{Path(cfg.run_dir).name}: density per layer"))
    print(Path(paths["md"]).read_text(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
