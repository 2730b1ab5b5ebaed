"""The main job (``make demo`` = ``peftkit bench demo``): fine-tuning methods side by side, MiniLM + BBC News.

Every row trains with the same seed, data, batch size and schedule (one epoch over a fixed, stratified train
subset, linear decay after 6% warm-up); only the method stack and its learning rate differ (full FT is
usually trained with a ~10x smaller rate than PEFT methods, a head-only probe with a larger one; each rate is
in the table). Then, for every row:

* trainable parameters and their share (``pk.param_report``; the head is trained in every row),
* test accuracy (BBC's 444 test articles) of the model after its last step: no early stopping, no
  checkpoint selection; ``eval_split=val`` scores the 223 validation articles instead and saves one
  evaluation pass per row (the loop evaluates the validation split after every epoch anyway),
* step time: all rows' models step round-robin on one fixed batch, in one process, so the machine's noise
  hits them alike; reported as the median and as the ratio to full FT (``bench/speed.py``),
* activation memory on the same fixed batch (b x t as in training): bytes saved for backward, and the peak
  of a whole training step over the loaded baseline, each in a fresh process (``bench/memory.py``),
* MLP activation density after training (DEFT's exact-zero metric, and the share with |a| > 1e-2), on the
  DEFT rows and the PEFT rows they compare with, when DEFT is installed.

Rows whose methods are not registered are skipped with a note, so the table grows as methods land: adding a
row is one line in ``ROWS``. Writes ``OUT/demo.{json,md,png}`` and one training run per row under ``OUT/``.

Overrides (``peftkit bench demo key=value ...``): the fields of ``DemoConfig``, ``rows=full,lora`` (labels
or slugs), and ``backbone.KEY=value`` / ``data.KEY=value`` for the builders' keyword arguments.
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from peftkit.bench._args import parse_overrides as parse_bench_overrides
from peftkit.core.errors import ConfigError

LORA = {"name": "lora", "rank": 8, "alpha": 16}
ADAPTER = {"name": "adapter", "kind": "pfeiffer"}
DEFT = {"name": "deft", "weight": 1.0}


@dataclass(frozen=True)
class DemoRow:
    """One table row: a label, the method stack (config dicts, applied in order) and its learning rate.

    ``density``: measure the MLP activation density after training (an extra pass over the eval split);
    on for the DEFT rows and the PEFT rows they are compared with. ``sparsity``: also calibrate
    ``pk.sparsify`` and report the MLP density at <= 1 point loss and the sparse MLP's speed-up.
    """

    label: str
    methods: tuple[dict[str, Any], ...]
    lr: float
    density: bool = False
    sparsity: bool = False

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "_", self.label.lower()).strip("_")

    @property
    def needs(self) -> set[str]:
        return {m["name"] for m in self.methods}


ROWS: tuple[DemoRow, ...] = (
    DemoRow("full FT", ({"name": "full"},), 1e-4),
    DemoRow("head only", ({"name": "head_only"},), 1e-2),
    DemoRow("Pfeiffer adapter", (ADAPTER,), 1e-3, density=True),
    DemoRow("LoRA r=8", (LORA,), 1e-3, density=True, sparsity=True),
    DemoRow("LoRA + DEFT", (LORA, DEFT), 1e-3, density=True, sparsity=True),
    DemoRow("adapter + DEFT", (ADAPTER, DEFT), 1e-3, density=True),
    # MEFT3 at 3e-3: the best MEFT variant, its rate the best of {1e-3, 3e-3} on validation in
    # bench meft_accuracy (docs/results/meft.md, section 4)
    DemoRow("MEFT3", ({"name": "meft", "variant": "meft3"},), 3e-3),
)


@dataclass
class DemoConfig:
    """The demo's scale. Defaults fit ``make demo`` in under 10 minutes on a 2-core CPU (see docs/results)."""

    out_dir: str = "runs/demo"
    backbone: str = "minilm"
    data: str = "bbc_news"
    max_length: int = 64                      # tokens per article (BBC articles are all longer: b x 64)
    max_train_examples: int | None = 480      # stratified subset of the 1,558-article train split
    seed: int = 0
    epochs: int = 1
    batch_size: int = 16
    warmup_ratio: float = 0.06
    eval_split: str = "test"                  # BBC: 444 test articles (val: 223)
    eval_batch_size: int = 64
    rows: str = "all"                         # comma-separated labels or slugs
    memory: str = "fresh"                     # fresh (one process per row) | inline | off
    memory_steps: int = 2                     # K training steps whose peak is read
    memory_workers: int = 2                   # fresh processes measured at once (each is its own process)
    speed_warmup: int = 1                     # untimed round-robin rounds
    speed_rounds: int = 3                     # timed rounds
    threads: int | None = None                # torch threads; None: torch's default (all cores)
    sparsity: bool = True                     # calibrated sparsity + sparse MLP speed-up on the LoRA rows
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    data_kwargs: dict[str, Any] = field(default_factory=dict)


def parse_overrides(overrides: list[str]) -> DemoConfig:
    """``key=value`` strings -> DemoConfig (the shared bench parser; ``backbone.KEY`` / ``data.KEY`` go to
    the builders' keyword arguments; unknown keys raise ConfigError)."""
    cfg = parse_bench_overrides(DemoConfig, overrides, "demo")
    if cfg.memory not in ("fresh", "inline", "off"):
        raise ConfigError(f"memory must be fresh, inline or off, got '{cfg.memory}'")
    return cfg


def select_rows(cfg: DemoConfig, registered: set[str]) -> tuple[list[DemoRow], list[str]]:
    """The rows to run and a note per skipped row (methods not registered yet)."""
    wanted = None if cfg.rows == "all" else {w.strip().lower() for w in cfg.rows.split(",") if w.strip()}
    known = {r.label.lower() for r in ROWS} | {r.slug for r in ROWS}
    if wanted is not None and wanted - known:
        slugs = ", ".join(r.slug for r in ROWS)
        raise ConfigError(f"unknown demo row(s) {sorted(wanted - known)}; rows: {slugs}")
    run, skipped = [], []
    for r in ROWS:
        if wanted is not None and not ({r.label.lower(), r.slug} & wanted):
            continue
        missing = sorted(r.needs - registered)
        if missing:
            skipped.append(f"{r.label}: skipped, method(s) {', '.join(missing)} not installed")
        else:
            run.append(r)
    if not run:
        raise ConfigError("no demo row can run: " + "; ".join(skipped))
    return run, skipped


def run_config(cfg: DemoConfig, row: DemoRow, measure_density: bool) -> Any:
    """The RunConfig of one row: the same seed, data, batch and schedule for every row."""
    from peftkit.train.config import config_from_dict_tree

    data = {"name": cfg.data, "max_length": cfg.max_length, **cfg.data_kwargs}
    if cfg.max_train_examples is not None:
        data.setdefault("max_train_examples", cfg.max_train_examples)
    return config_from_dict_tree({
        "out_dir": f"{cfg.out_dir}/{row.slug}",
        "seed": cfg.seed,
        "backbone": {"name": cfg.backbone, "task": "classification", **cfg.backbone_kwargs},
        "data": data,
        "methods": [dict(m) for m in row.methods],
        "train": {"epochs": cfg.epochs, "batch_size": cfg.batch_size, "eval_batch_size": cfg.eval_batch_size,
                  "lr": row.lr, "schedule": "linear", "warmup_ratio": cfg.warmup_ratio,
                  "measure_density": measure_density, "eval_split": cfg.eval_split, "threads": cfg.threads},
    })


def main(overrides: list[str]) -> int:
    """Run the demo; print the table; write OUT/demo.{json,md,png}. Returns the exit code."""
    from tqdm.auto import tqdm

    import peftkit as pk
    from peftkit.bench import demo_measure, demo_report

    t_start = time.perf_counter()
    cfg = parse_overrides(overrides)
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    registered = set(pk.list_methods())
    rows, skipped = select_rows(cfg, registered)
    density = "deft" in registered
    scale = demo_report.scale_line(cfg)
    print(f"peftkit demo: {len(rows)} rows on {cfg.backbone} + {cfg.data}; {scale}", flush=True)
    for s in skipped:
        print(f"  {s}", flush=True)
    results: list[dict[str, Any]] = []
    num_labels = None
    for i, row in enumerate(rows, 1):
        tqdm.write(f"[{i}/{len(rows)}] {row.label}: methods {list(row.methods)}, lr {row.lr:g}")
        metrics, num_labels = demo_measure.train_row(run_config(cfg, row, density and row.density))
        results.append({"label": row.label, "lr": row.lr, "methods": list(row.methods), **metrics})
    train_s = time.perf_counter() - t_start
    if num_labels is None:  # the loop's summary does not carry it: ask the dataset (same config as row 1)
        from peftkit.train.build import build_data

        num_labels = build_data(run_config(cfg, rows[0], False)).num_labels
    if cfg.sparsity and "sparsify" in registered:
        demo_measure.add_sparsity(cfg, rows, results)
    demo_measure.add_speed(cfg, rows, results, num_labels)
    demo_measure.add_memory(cfg, rows, results, num_labels)
    total_s = time.perf_counter() - t_start
    paths = demo_report.write(cfg, results, skipped, {"train_s": train_s, "total_s": total_s},
                              command="peftkit bench demo " + " ".join(overrides))
    print(f"\nwrote {paths['md']}, {paths['json']}, {paths['png']} ({total_s:.0f} s in all)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
