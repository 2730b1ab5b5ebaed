"""``peftkit bench meft_accuracy``: MEFT1/2/3 against full FT, LoRA and an adapter on MiniLM + BBC News.

MEFT (Liao, Tan, Monz; NeurIPS 2023; arXiv 2306.00477) claims the same GLUE score as full fine-tuning. On a
CPU we check the relative claim on BBC News (5 topics): every row trains with the same data subset, length,
batch size and schedule (one epoch, linear decay after 6% warm-up) through ``peftkit.train.loop.run``; only
the method stack and its learning rate differ (full FT 5e-5, the PEFT rows 1e-3). Several seeds (the seed
picks the few-shot subset and the inits). Plus MEFT1 on SmolLM2-135M (one seed, a small subset) and MEFT1 +
DEFT (the density of its MLP activations, next to MEFT1's).

``part=init`` and ``part=numerics`` write the starting-point and reconstruction tables of
:mod:`peftkit.bench.meft_numerics` instead. Writes OUT/meft_accuracy.* (or meft_init.*, meft_recon.*,
meft_grad.*).
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

from peftkit.bench._args import parse_overrides
from peftkit.core.errors import ConfigError

MEFT = {"name": "meft"}
ROWS: dict[str, tuple[list[dict[str, Any]], float]] = {  # label -> (method stack, learning rate)
    "full FT": ([{"name": "full"}], 5e-5),
    "LoRA r=8": ([{"name": "lora", "rank": 8, "alpha": 16}], 1e-3),
    "Pfeiffer adapter": ([{"name": "adapter", "kind": "pfeiffer"}], 1e-3),
    "MEFT1": ([{**MEFT, "variant": "meft1"}], 1e-3),
    "MEFT2": ([{**MEFT, "variant": "meft2"}], 1e-3),
    "MEFT3": ([{**MEFT, "variant": "meft3"}], 1e-3),
    "MEFT3, anchor_every=2": ([{**MEFT, "variant": "meft3", "anchor_every": 2}], 1e-3),
    "MEFT1 + DEFT": ([{**MEFT, "variant": "meft1"}, {"name": "deft", "weight": 1.0}], 1e-3),
    # 30 pre-LN layers: reconstruction needs anchors (docs/results/meft.md), as in bbc_smollm2__meft1.yaml
    "SmolLM2 MEFT1": ([{**MEFT, "variant": "meft1", "anchor_every": 6}], 1e-3),
}
DENSITY_ROWS = ("MEFT1", "MEFT1 + DEFT")
DENSITY_KEYS = ("density/exact@fp32", "density/exact_masked@fp32", "density/gt1e-02_masked@fp32")
ONE_SEED_ROWS = ("MEFT1 + DEFT", "MEFT3, anchor_every=2")


@dataclass
class AccuracyConfig:
    """Scale of the runs; the defaults fit about 40 minutes of one CPU thread (docs/results/meft.md)."""

    part: str = "train"                       # train | init | numerics
    out_dir: str = "runs/bench_meft_accuracy"
    rows: str = "all"                         # ";"-separated labels of ROWS (MiniLM rows)
    seeds: str = "0,1"
    max_train_examples: int = 240             # stratified subset of the 1,558 training articles
    max_length: int = 128
    epochs: int = 1
    batch_size: int = 16
    eval_split: str = "test"                  # 444 test articles
    smollm2: bool = True                      # also MEFT1 on SmolLM2-135M (one seed)
    smollm2_train_examples: int = 80
    smollm2_max_length: int = 64
    numerics_docs: int = 16                   # BBC articles for part=init / numerics
    numerics_backbone: str = "minilm"         # part=numerics: minilm | smollm2
    numerics_tables: str = "recon,grad"       # part=numerics: which tables
    variants: str = "meft1,meft2,meft3"       # part=numerics: MEFT variants
    anchors: str = "0,2"                      # part=numerics: anchor_every values of the gradient table
    threads: int = 1


def run_config(cfg: AccuracyConfig, label: str, seed: int, backbone: str = "minilm") -> Any:
    from peftkit.train.config import config_from_dict_tree

    methods, lr = ROWS[label]
    small = backbone == "smollm2"
    slug = "".join(c if c.isalnum() else "_" for c in label.lower())
    return config_from_dict_tree({
        "out_dir": f"{cfg.out_dir}/{backbone}_{slug}_s{seed}", "seed": seed,
        "backbone": {"name": backbone, "task": "classification"},
        "data": {"name": "bbc_news", "max_length": cfg.smollm2_max_length if small else cfg.max_length,
                 "max_train_examples": cfg.smollm2_train_examples if small else cfg.max_train_examples},
        "methods": [dict(m) for m in methods],
        "train": {"epochs": cfg.epochs, "batch_size": 8 if small else cfg.batch_size, "lr": lr,
                  "schedule": "linear", "warmup_ratio": 0.06,
                  "eval_split": "val" if small else cfg.eval_split,
                  "measure_density": label in DENSITY_ROWS, "threads": cfg.threads, "log_every": 5},
    })


def train_rows(cfg: AccuracyConfig) -> list[dict[str, Any]]:
    from peftkit.train.loop import run

    minilm_rows = [r for r in ROWS if not r.startswith("SmolLM2")]
    wanted = minilm_rows if cfg.rows == "all" else [r.strip() for r in cfg.rows.split(";")]
    unknown = [r for r in wanted if r not in ROWS]
    if unknown:
        raise ConfigError(f"unknown row(s) {unknown}; rows: {', '.join(ROWS)}")
    seeds = [int(s) for s in str(cfg.seeds).split(",")]
    jobs = [(label, s, "minilm") for label in wanted
            for s in (seeds[:1] if label in ONE_SEED_ROWS else seeds)]
    if cfg.smollm2 and "MEFT1" in wanted:
        jobs.append(("SmolLM2 MEFT1", seeds[0], "smollm2"))
    runs = []
    for i, (label, seed, backbone) in enumerate(jobs, 1):
        print(f"[{i}/{len(jobs)}] {backbone} {label} seed {seed}", flush=True)
        m = run(run_config(cfg, label, seed, backbone), progress=False)
        runs.append({"label": label, "seed": seed, "backbone": backbone, **{
            k: v for k, v in m.items() if k.startswith(("eval/", "density/", "trainable", "total_params"))
            or k in ("step_time_s", "train_time_s", "steps")}})
        print(f"    accuracy {m.get('eval/accuracy')}, {m.get('train_time_s', 0):.0f} s", flush=True)
    return runs


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds, one row per (backbone, label)."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for r in runs:
        key = (r["backbone"], r["label"])
        out.setdefault(key, {"backbone": r["backbone"], "label": r["label"], "runs": []})["runs"].append(r)
    rows = []
    for row in out.values():
        rs = row.pop("runs")
        for key in ("eval/accuracy", "eval/macro_f1", "step_time_s", *DENSITY_KEYS):
            vals = [r[key] for r in rs if r.get(key) is not None]
            if vals:
                row[key] = statistics.fmean(vals)
                row[key + "_std"] = statistics.stdev(vals) if len(vals) > 1 else None
        row.update(seeds=len(rs), trainable_params=rs[0].get("trainable_params"),
                   trainable_pct=rs[0].get("trainable_pct"))
        rows.append(row)
    return rows


def parse(overrides: list[str]) -> AccuracyConfig:
    cfg = parse_overrides(AccuracyConfig, overrides, "meft_accuracy")
    if cfg.part not in ("train", "init", "numerics"):
        raise ConfigError(f"part must be train, init or numerics, got '{cfg.part}'")
    return cfg


def main(overrides: list[str]) -> int:
    """Run one part of the benchmark and write its report (see the module docstring)."""
    import torch

    from peftkit.bench import meft_report

    cfg = parse(overrides)
    torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    command = "peftkit bench meft_accuracy " + " ".join(overrides)
    if cfg.part == "train":
        runs = train_rows(cfg)
        paths = meft_report.write_accuracy(cfg, summarise(runs), runs, time.perf_counter() - t0, command)
    else:
        from peftkit.bench import meft_numerics as num

        bb, variants = cfg.numerics_backbone, tuple(cfg.variants.split(","))
        batch = num.bbc_batch(cfg.numerics_docs, cfg.max_length, backbone=bb)
        tables = {}
        if cfg.part == "init":
            tables["meft_init"] = num.init_fidelity(batch, backbone=bb)
        if cfg.part == "numerics" and "recon" in cfg.numerics_tables:
            tables["meft_recon"] = num.reconstruction_table(batch, backbone=bb, variants=variants)
        if cfg.part == "numerics" and "grad" in cfg.numerics_tables:
            anchors = tuple(int(a) for a in str(cfg.anchors).split(","))
            tables["meft_grad"] = num.gradient_table(batch, backbone=bb, anchors=anchors, variants=variants)
        paths = meft_report.write_numerics(cfg, tables, time.perf_counter() - t0, command)
    print("wrote " + ", ".join(str(p) for p in paths), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
