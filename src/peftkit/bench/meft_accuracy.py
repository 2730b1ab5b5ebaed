"""``peftkit bench meft_accuracy``: MEFT1/2/3 against full FT, LoRA and an adapter on MiniLM + BBC News.

MEFT (Liao, Tan, Monz; NeurIPS 2023; arXiv 2306.00477) claims the same GLUE score as full fine-tuning. On a
CPU we check the relative claim on BBC News (5 topics) with an honest protocol (``part=train``):

1. **Sweep** (seed ``sweep_seed``): every method at each learning rate of its grid ``GRIDS``, evaluated on the
   223 validation articles only (``eval_split=val``; the test split is not read).
2. **Select** per method the learning rate with the highest final validation accuracy (ties: the smaller).
3. **Final**: every method at its selected rate, for each of ``seeds``, evaluated once on the 444 test
   articles.

Every run trains with the same data subset (the seed picks the stratified subset and the inits), length,
batch size and schedule (linear decay after 6% warm-up) through ``peftkit.train.loop.run``; only the method
stack and its learning rate differ. Each run's result is kept as a small JSON in ``rows_dir`` (in the
repository), and runs whose JSON exists are skipped, so the table accumulates across sessions and re-renders
without rerunning (``part=report``).

``part=init`` and ``part=numerics`` write the starting-point and reconstruction tables of
:mod:`peftkit.bench.meft_numerics` instead. Writes OUT/meft_accuracy.* (or meft_init.*, meft_recon.*,
meft_grad.*).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftkit.bench._args import parse_overrides
from peftkit.core.errors import ConfigError

MEFT = {"name": "meft"}
# label -> (method stack, learning-rate grid of the sweep)
GRIDS: dict[str, tuple[list[dict[str, Any]], tuple[float, ...]]] = {
    "full FT": ([{"name": "full"}], (5e-5, 1.5e-4)),
    "LoRA r=8": ([{"name": "lora", "rank": 8, "alpha": 16}], (1e-3, 3e-3)),
    "Pfeiffer adapter": ([{"name": "adapter", "kind": "pfeiffer"}], (1e-3, 3e-3)),
    "MEFT1": ([{**MEFT, "variant": "meft1"}], (1e-3, 3e-3)),
    "MEFT2": ([{**MEFT, "variant": "meft2"}], (1e-3, 3e-3)),
    "MEFT3": ([{**MEFT, "variant": "meft3"}], (1e-3, 3e-3)),
}
# remedies for MEFT's slow start (issue: accuracy), measured on validation only (``seeds=`` empty): the
# adapter init scale sigma (paper: 0.02) and the leak lam = beta (paper: 0.1 for MEFT3), at the selected rate
REMEDIES: dict[str, tuple[list[dict[str, Any]], tuple[float, ...]]] = {
    "MEFT3, init std 0.1": ([{**MEFT, "variant": "meft3", "adapter_init_std": 0.1}], (3e-3,)),
    "MEFT3, lam=beta 0.3": ([{**MEFT, "variant": "meft3", "lam": 0.3, "beta": 0.3}], (3e-3,)),
    "MEFT3, lam=beta 0.03": ([{**MEFT, "variant": "meft3", "lam": 0.03, "beta": 0.03}], (3e-3,)),
    # the gap to full FT at 4 epochs: more adapter capacity (paper: bottleneck 8)
    "MEFT3, adapter 64": ([{**MEFT, "variant": "meft3", "adapter_dim": 64}], (1e-3, 3e-3)),
}
ALL_ROWS = {**GRIDS, **REMEDIES}
KEEP = ("eval/", "val/", "trainable", "total_params")


@dataclass
class AccuracyConfig:
    """Scale of the runs (state it beside every figure); see the module docstring for the protocol."""

    part: str = "train"                       # train | report | init | numerics
    out_dir: str = "runs/bench_meft_accuracy"
    data: str = "bbc_news"                    # bbc_news | drug_reviews (set rows_dir to match)
    rows_dir: str = "docs/results/meft_rows/bbc_minilm"  # one JSON per run (kept in the repository)
    backbone: str = "minilm"                  # part=train: a registered text backbone (e.g. via --import)
    rows: str = "all"                         # ";"-separated labels of GRIDS or REMEDIES (all = GRIDS)
    seeds: str = "0,1,2"                      # final runs ("" = the validation sweep only)
    lr_grid: str = ""                         # comma-separated rates replacing every grid ("" = its own)
    sweep_seed: int = 0
    max_train_examples: int = 160             # stratified subset of the 1,558 training articles
    max_length: int = 64                      # tokens per article (CPU scale: 2 shared cores)
    epochs: int = 2
    batch_size: int = 16
    numerics_docs: int = 16                   # BBC articles for part=init / numerics
    numerics_backbone: str = "minilm"         # part=numerics: minilm | smollm2
    numerics_model_dir: str = ""              # part=numerics: a local transformers folder instead (MPNet)
    numerics_tables: str = "default"          # part=numerics: default (auto anchors), recon, grad
    variants: str = "meft1,meft2,meft3"       # part=numerics: MEFT variants
    anchors: str = "0,2,auto"                 # part=numerics: anchor_every values of the gradient table
    decoder_backbone: str = "smollm2"         # part=decoder: MEFT1 training run under bf16 autocast
    decoder_examples: int = 64                # part=decoder: stratified BBC training articles
    decoder_batch: int = 8
    decoder_lr: float = 1e-3
    decoder_methods: str = "meft1"            # part=decoder: labels of meft_decoder.DECODER_STACKS
    threads: int = 1


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text.lower()).strip("_")


def run_key(phase: str, label: str, lr: float, seed: int) -> str:
    return f"{phase}__{slug(label)}__lr{lr:g}__s{seed}"


def run_config(cfg: AccuracyConfig, label: str, lr: float, seed: int, eval_split: str) -> Any:
    from peftkit.train.config import config_from_dict_tree

    methods, _ = ALL_ROWS[label]
    return config_from_dict_tree({
        "out_dir": f"{cfg.out_dir}/{run_key(eval_split, label, lr, seed)}", "seed": seed,
        "backbone": {"name": cfg.backbone, "task": "classification"},
        "data": {"name": cfg.data, "max_length": cfg.max_length,
                 "max_train_examples": cfg.max_train_examples},
        "methods": [dict(m) for m in methods],
        "train": {"epochs": cfg.epochs, "batch_size": cfg.batch_size, "lr": lr, "schedule": "linear",
                  "warmup_ratio": 0.06, "eval_split": eval_split, "threads": cfg.threads, "log_every": 5},
    })


def scale(cfg: AccuracyConfig) -> dict[str, Any]:
    out = {"max_train_examples": cfg.max_train_examples, "max_length": cfg.max_length, "epochs": cfg.epochs,
           "batch_size": cfg.batch_size, "threads": cfg.threads}
    out = out if cfg.data == "bbc_news" else {**out, "data": cfg.data}
    return out if cfg.backbone == "minilm" else {**out, "backbone": cfg.backbone}


def _run(cfg: AccuracyConfig, phase: str, label: str, lr: float, seed: int) -> dict[str, Any]:
    """One run, or its stored JSON when present (same scale); returns the row."""
    import platform

    from peftkit.core.io import atomic_write_json
    from peftkit.train.loop import run

    path = Path(cfg.rows_dir) / f"{run_key(phase, label, lr, seed)}.json"
    if path.exists():
        row = json.loads(path.read_text())
        if row.get("scale") == scale(cfg):
            return row
    split = "val" if phase == "sweep" else "test"
    rc = run_config(cfg, label, lr, seed, split)
    done = Path(rc.out_dir) / "metrics.json"  # a finished run whose row was not written (killed in between)
    if phase == "final" and seed == cfg.sweep_seed:
        print(f"test of the selected sweep model: {label} lr {lr:g} seed {seed}", flush=True)
        m = _test_of_sweep_model(cfg, label, lr, seed)
    elif done.exists():
        m = json.loads(done.read_text())
    else:
        print(f"{phase} {label} lr {lr:g} seed {seed}", flush=True)
        m = run(rc, progress=False)
    row = {"phase": phase, "label": label, "lr": lr, "seed": seed, "scale": scale(cfg),
           "cpu": platform.processor() or platform.machine(),
           "val_curve": val_curve(Path(run_config(cfg, label, lr, seed, "val").out_dir if phase == "final"
                                       and seed == cfg.sweep_seed else rc.out_dir) / "metrics.jsonl"),
           **{k: v for k, v in m.items()
              if k.startswith(KEEP) or k in ("step_time_s", "train_time_s", "steps")}}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, row)
    print(f"    {split} accuracy {m.get('eval/accuracy')}, {m.get('train_time_s', 0):.0f} s", flush=True)
    return row


def val_curve(path: Path) -> list[float]:
    """Validation accuracy after each epoch, from a run's ``metrics.jsonl`` (empty when absent)."""
    if not path.exists():
        return []
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r["val/accuracy"] for r in recs if "val/accuracy" in r]


def _test_of_sweep_model(cfg: AccuracyConfig, label: str, lr: float, seed: int) -> dict[str, Any]:
    """The test metrics of the model the sweep trained at (label, lr, seed): the test split is read once,
    for the selected rate only. Training metrics (time, parameters) are the sweep run's."""
    import torch

    import peftkit as pk
    from peftkit.train.build import build_data, build_model, eval_loader
    from peftkit.train.evaluate import evaluate

    rc = run_config(cfg, label, lr, seed, "val")
    sweep = json.loads((Path(rc.out_dir) / "metrics.json").read_text())
    data = build_data(rc)
    model = pk.load_adapter(build_model(rc, data), Path(rc.out_dir) / "adapter").eval()
    res = evaluate(model, eval_loader(data, "test", 64, 0), torch.device("cpu"), data.num_labels,
                   data.metrics, progress=False, desc="test")
    keep = {k: v for k, v in sweep.items() if not k.startswith("eval/")}
    return {**keep, **{f"eval/{k}": v for k, v in res.items()}, "eval_split": "test"}


def _labels(cfg: AccuracyConfig) -> list[str]:
    wanted = list(GRIDS) if cfg.rows == "all" else [r.strip() for r in cfg.rows.split(";")]
    unknown = [r for r in wanted if r not in ALL_ROWS]
    if unknown:
        raise ConfigError(f"unknown row(s) {unknown}; rows: {'; '.join(ALL_ROWS)}")
    return wanted


def grid(cfg: AccuracyConfig, label: str) -> tuple[float, ...]:
    """The learning rates swept for ``label``: its own grid, or ``lr_grid`` when given."""
    return tuple(float(x) for x in cfg.lr_grid.split(",")) if cfg.lr_grid.strip() else ALL_ROWS[label][1]


def select(sweep: list[dict[str, Any]]) -> dict[str, float]:
    """label -> the learning rate with the highest final validation accuracy (ties: the smaller rate)."""
    best: dict[str, tuple[float, float]] = {}
    for r in sorted(sweep, key=lambda r: r["lr"]):
        acc = r.get("eval/accuracy", float("-inf"))
        if r["label"] not in best or acc > best[r["label"]][0]:
            best[r["label"]] = (acc, r["lr"])
    return {k: v[1] for k, v in best.items()}


def train_rows(cfg: AccuracyConfig, run_missing: bool = True) -> tuple[list[dict[str, Any]], dict[str, float],
                                                                        list[dict[str, Any]]]:
    """The sweep rows, the selected rates and the final rows (missing runs are run when ``run_missing``)."""
    labels = _labels(cfg)
    seeds = [int(s) for s in str(cfg.seeds).split(",") if s.strip()]

    def get(phase: str, label: str, lr: float, seed: int) -> dict[str, Any] | None:
        path = Path(cfg.rows_dir) / f"{run_key(phase, label, lr, seed)}.json"
        if run_missing:
            return _run(cfg, phase, label, lr, seed)
        if path.exists() and (row := json.loads(path.read_text())).get("scale") == scale(cfg):
            return row
        return None

    sweep = [r for label in labels for lr in grid(cfg, label)
             if (r := get("sweep", label, lr, cfg.sweep_seed)) is not None]
    chosen = select(sweep)
    final = [r for seed in seeds for label in labels if label in chosen   # seed-major: every method early
             if (r := get("final", label, chosen[label], seed)) is not None]
    return sweep, chosen, final


def summarise(final: list[dict[str, Any]], sweep: list[dict[str, Any]],
              chosen: dict[str, float]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds, one row per method, with its sweep."""
    out = []
    for label, lr in chosen.items():
        rs = [r for r in final if r["label"] == label]
        row: dict[str, Any] = {"label": label, "lr": lr, "seeds": len(rs), "sweep": {
            f"{r['lr']:g}": r.get("eval/accuracy") for r in sweep if r["label"] == label}}
        for r in rs:
            r["val_last"] = r["val_curve"][-1] if r.get("val_curve") else None
        for key in ("eval/accuracy", "eval/macro_f1", "step_time_s", "val_last"):
            vals = [r[key] for r in rs if r.get(key) is not None]
            if vals:
                row[key] = statistics.fmean(vals)
                row[key + "_std"] = statistics.stdev(vals) if len(vals) > 1 else None
        if rs:
            row.update(trainable_params=rs[0].get("trainable_params"),
                       trainable_pct=rs[0].get("trainable_pct"))
        out.append(row)
    return out


REFERENCES = ("LoRA r=8", "full FT")  # the baselines each row is compared with, paired over seeds


def paired_rows(final: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every row minus each reference of ``REFERENCES`` present, paired over the seeds both have, on test
    accuracy and on the validation accuracy after the last epoch (``bench.report.paired_diff``)."""
    from peftkit.bench.report import paired_diff

    labels = list(dict.fromkeys(r["label"] for r in final))
    out = []
    for ref in (x for x in REFERENCES if x in labels):
        earlier = REFERENCES[: REFERENCES.index(ref)]  # full FT - LoRA is shown, not also LoRA - full FT
        for label in (x for x in labels if x != ref and x not in earlier):
            row: dict[str, Any] = {"label": label, "reference": ref}
            for key, name in (("eval/accuracy", "test"), ("val_last", "val")):
                per = {lab: {r["seed"]: r[key] for r in final if r["label"] == lab and r.get(key) is not None}
                       for lab in (label, ref)}
                row[name] = paired_diff(per[label], per[ref])
            out.append(row)
    return out


def parse(overrides: list[str]) -> AccuracyConfig:
    cfg = parse_overrides(AccuracyConfig, overrides, "meft_accuracy")
    try:
        rates = grid(cfg, "full FT")
    except ValueError:
        raise ConfigError(f"lr_grid must be comma-separated numbers, got '{cfg.lr_grid}'") from None
    if not all(r > 0 for r in rates):
        raise ConfigError(f"lr_grid: every rate must be > 0, got '{cfg.lr_grid}'")
    if cfg.part not in ("train", "report", "init", "numerics", "decoder"):
        raise ConfigError(f"part must be train, report, init, numerics or decoder, got '{cfg.part}'")
    return cfg


def main(overrides: list[str]) -> int:
    """Run one part of the benchmark and write its report (see the module docstring)."""
    import torch

    from peftkit.bench import meft_report

    cfg = parse(overrides)
    torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    command = "peftkit bench meft_accuracy " + " ".join(overrides)
    if cfg.part == "decoder":
        from peftkit.bench.meft_decoder import run_part

        return run_part(cfg)
    if cfg.part in ("train", "report"):
        sweep, chosen, final = train_rows(cfg, run_missing=cfg.part == "train")
        rows = summarise(final, sweep, chosen)
        paths = meft_report.write_accuracy(cfg, rows, sweep + final, time.perf_counter() - t0, command,
                                           paired_rows(final))
    else:
        from peftkit.bench import meft_numerics as num

        bb, variants = cfg.numerics_backbone, tuple(cfg.variants.split(","))
        local = cfg.numerics_model_dir
        batch = (num.local_bbc_batch(local, cfg.numerics_docs, cfg.max_length) if local
                 else num.bbc_batch(cfg.numerics_docs, cfg.max_length, backbone=bb))
        tables = {}
        if cfg.part == "init":
            tables["meft_init"] = num.init_fidelity(batch, backbone=bb)
        if cfg.part == "numerics" and "recon" in cfg.numerics_tables:
            tables["meft_recon"] = num.reconstruction_table(batch, backbone=bb, variants=variants)
        if cfg.part == "numerics" and "default" in cfg.numerics_tables:
            tables["meft_recon_default"] = num.default_reconstruction_table(
                batch, backbone=bb, variants=variants, model_dir=local)
        if cfg.part == "numerics" and "grad" in cfg.numerics_tables:
            anchors = tuple(a if a == "auto" else int(a) for a in str(cfg.anchors).split(","))
            tables["meft_grad"] = num.gradient_table(batch, backbone=bb, anchors=anchors, variants=variants)
        paths = meft_report.write_numerics(cfg, tables, time.perf_counter() - t0, command)
    print("wrote " + ", ".join(str(p) for p in paths), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
