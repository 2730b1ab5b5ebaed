"""``peftkit bench deft``: PEFT vs DEFT (Runwal, Pedapati, Chen, arXiv 2402.01911) on BBC News.

For every pair (a PEFT method on a backbone) and seed, two training runs with the same seed, data, batch,
schedule and learning rate; the only difference is the ``deft`` entry of the method stack (like
``--sparse_obj`` in IBM/DEFT ``glue.sh``). Each run measures the task metric and every density metric of
``peftkit.methods.deft.metrics`` on the evaluation split, in fp32. Reported per pair: mean +- std over
seeds of accuracy and densities, and the relative density reduction ``100 * (PEFT - DEFT) / PEFT`` per seed
(mean +- std), next to the paper's 44.94% (arXiv v2; 50.72% in v1) on RoBERTa-large. A per-layer plot
compares PEFT and DEFT. ``t5_check=true`` adds the tiny random T5 mechanics check (``bench/deft_t5.py``).

Writes ``OUT/deft.{json,md,png}`` (and ``OUT/deft_t5.*``); each run lives in
``OUT/runs/<pair>/<variant>_s<seed>`` and is reused when its ``metrics.json`` exists with the same config
(an interrupted bench resumes). Overrides: the fields of ``DeftBenchConfig``
(``pairs=minilm_lora,minilm_prompt seeds=1 weight=10``).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftkit.bench._args import parse_overrides as parse_bench_overrides
from peftkit.core.errors import ConfigError

# pair -> (backbone, PEFT method stack, learning rate); as configs/text/bbc_<backbone>__<method>+deft.yaml
PAIRS: dict[str, tuple[str, tuple[dict[str, Any], ...], float]] = {
    "minilm_pfeiffer": ("minilm", ({"name": "adapter", "kind": "pfeiffer", "reduction_factor": 16,
                                    "activation": "relu"},), 1e-3),
    "minilm_lora": ("minilm", ({"name": "lora", "rank": 8, "alpha": 16},), 1e-3),
    "minilm_prompt": ("minilm", ({"name": "prompt", "num_virtual_tokens": 20},), 3e-2),
    "minilm_prefix": ("minilm", ({"name": "prefix", "num_virtual_tokens": 20},), 1e-2),
    "smollm2_lora": ("smollm2", ({"name": "lora", "rank": 8, "alpha": 16},), 5e-4),
    "smollm2_qlora": ("smollm2", ({"name": "qlora", "rank": 8, "alpha": 16},), 5e-4),
}
METRICS = ("exact", "exact_masked", "gt1e-06", "gt1e-04", "gt1e-02", "preact_pos")
PAPER = "44.94% relative density reduction, RoBERTa-large, arXiv 2402.01911v2 (50.72% in v1)"


@dataclass
class DeftBenchConfig:
    """Scale of the bench; the defaults are the CPU scale of docs/results/deft.md."""

    out_dir: str = "runs/bench/deft"
    img_dir: str | None = None          # also copy the PNGs here (e.g. docs/results/img)
    pairs: str = ",".join(PAIRS)
    seeds: int = 3
    seed0: int = 0
    weight: float = 1.0                 # IBM/DEFT glue.sh --weight_l
    eps: float = 1e-7                   # IBM/DEFT glue.sh --eps
    exclude_padding: bool = False       # reference: padding counted in the loss
    max_length: int = 64
    epochs: int = 1
    batch_size: int = 16
    max_train_examples: int = 480       # stratified subset of the 1,557 BBC train articles
    eval_split: str = "val"             # 222 articles (test: 445)
    smollm2_seeds: int = 1              # SmolLM2-135M is ~10x MiniLM's cost per token on CPU
    smollm2_max_train_examples: int = 160
    smollm2_batch_size: int = 8
    threads: int | None = 1
    reuse: bool = True
    t5_check: bool = True


def parse_overrides(overrides: list[str]) -> DeftBenchConfig:
    """``key=value`` strings -> DeftBenchConfig (the shared bench parser; unknown keys raise ConfigError)."""
    cfg = parse_bench_overrides(DeftBenchConfig, overrides, "deft")
    unknown = sorted(set(_pairs(cfg)) - set(PAIRS))
    if unknown:
        raise ConfigError(f"unknown pair(s) {unknown}; choose from {', '.join(PAIRS)}")
    return cfg


def _pairs(cfg: DeftBenchConfig) -> list[str]:
    return [p.strip() for p in cfg.pairs.split(",") if p.strip()]


def run_config(cfg: DeftBenchConfig, pair: str, seed: int, deft: bool) -> Any:
    """The RunConfig of one run; PEFT and DEFT differ only by the ``deft`` entry of ``methods``."""
    from peftkit.train.config import config_from_dict_tree

    backbone, stack, lr = PAIRS[pair]
    smol = backbone == "smollm2"
    methods = [dict(m) for m in stack]
    name = variant_name(cfg) if deft else "peft"
    if deft:
        methods.append({"name": "deft", "weight": cfg.weight, "eps": cfg.eps,
                        "exclude_padding": cfg.exclude_padding})
    return config_from_dict_tree({
        "out_dir": str(Path(cfg.out_dir) / "runs" / pair / f"{name}_s{seed}"),
        "seed": seed,
        "backbone": {"name": backbone, "task": "classification"},
        "data": {"name": "bbc_news", "max_length": cfg.max_length,
                 "max_train_examples": cfg.smollm2_max_train_examples if smol else cfg.max_train_examples},
        "methods": methods,
        "train": {"epochs": cfg.epochs, "batch_size": cfg.smollm2_batch_size if smol else cfg.batch_size,
                  "eval_batch_size": 32, "lr": lr, "schedule": "linear", "warmup_ratio": 0.06,
                  "measure_density": True, "eval_split": cfg.eval_split, "threads": cfg.threads},
    })


def variant_name(cfg: DeftBenchConfig) -> str:
    """``deft`` at the paper's weight / eps, else ``deft_w<weight>_e<eps>[_nopad]`` (a sweep reuses the
    PEFT runs)."""
    default = DeftBenchConfig()
    if (cfg.weight, cfg.eps, cfg.exclude_padding) == (default.weight, default.eps, default.exclude_padding):
        return "deft"
    return f"deft_w{cfg.weight:g}_e{cfg.eps:g}" + ("_nopad" if cfg.exclude_padding else "")


def train_or_reuse(run_cfg: Any, reuse: bool) -> dict[str, Any]:
    """``metrics.json`` of the run: read when present with the same config (``_reused`` set), else trained."""
    from peftkit.train.config import dump_config
    from peftkit.train.loop import run

    out = Path(run_cfg.out_dir)
    done = out / "metrics.json"
    if reuse and done.is_file() and (out / "config.yaml").read_text() == dump_config(run_cfg):
        return {**json.loads(done.read_text()), "_reused": True}
    return run(run_cfg, progress=False)


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarise(pair: str, peft: list[dict[str, Any]], deft: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Three rows per pair: PEFT, DEFT (mean +- std over seeds) and the per-seed relative reduction."""
    rows = []
    for variant, runs in (("PEFT", peft), ("DEFT", deft)):
        row: dict[str, Any] = {"pair": pair, "variant": variant, "seeds": len(runs)}
        for key, name in [("eval/accuracy", "accuracy")] + [(f"density/{m}@fp32", m) for m in METRICS]:
            vals = [r[key] * (100.0 if name == "accuracy" else 1.0) for r in runs if key in r]
            if vals:
                row[name], row[f"{name}_std"] = _mean_std(vals)
                row[f"{name}_cell"] = f"{row[name]:.2f} ± {row[f'{name}_std']:.2f}"
        row["layers"] = _per_layer(runs)
        rows.append(row)
    red: dict[str, Any] = {"pair": pair, "variant": "reduction", "seeds": len(deft)}
    acc = [100.0 * (d["eval/accuracy"] - p["eval/accuracy"]) for p, d in zip(peft, deft)]
    red["accuracy"], red["accuracy_std"] = _mean_std(acc)
    red["accuracy_cell"] = f"{red['accuracy']:+.2f} ± {red['accuracy_std']:.2f} pt"
    for m in METRICS:
        key = f"density/{m}@fp32"
        rel = [100.0 * (p[key] - d[key]) / p[key] for p, d in zip(peft, deft) if p.get(key)]
        if rel:
            red[m], red[f"{m}_std"] = _mean_std(rel)
            red[f"{m}_cell"] = f"{red[m]:.2f} ± {red[f'{m}_std']:.2f}% rel."
    rows.append(red)
    return rows


def _per_layer(runs: list[dict[str, Any]]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for m in ("exact", "gt1e-02"):
        n = sum(1 for k in runs[0] if k.startswith(f"density/{m}/L") and k.endswith("@fp32"))
        out[m] = [statistics.fmean(r[f"density/{m}/L{i}@fp32"] for r in runs) for i in range(n)]
    return out


def main(overrides: list[str]) -> int:
    """Run every pair x seed x {PEFT, DEFT}; write OUT/deft.{json,md,png}; print the table."""
    from peftkit.bench import deft_report

    t0 = time.perf_counter()
    cfg = parse_overrides(overrides)
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    rows: list[dict[str, Any]] = []
    all_runs: list[dict[str, Any]] = []
    for pair in _pairs(cfg):
        n = cfg.smollm2_seeds if PAIRS[pair][0] == "smollm2" else cfg.seeds
        seeds = list(range(cfg.seed0, cfg.seed0 + n))
        runs: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
        for seed in seeds:
            for deft in (False, True):
                t = time.perf_counter()
                runs[deft].append(train_or_reuse(run_config(cfg, pair, seed, deft), cfg.reuse))
                print(f"[deft bench] {pair} seed {seed} {'DEFT' if deft else 'PEFT'}: acc "
                      f"{runs[deft][-1].get('eval/accuracy', float('nan')):.4f}, exact density "
                      f"{runs[deft][-1].get('density/exact@fp32', float('nan')):.3f}% "
                      f"({time.perf_counter() - t:.0f} s)", flush=True)
        rows += summarise(pair, runs[False], runs[True])
        all_runs += runs[False] + runs[True]
    extra = {}
    if cfg.t5_check:
        from peftkit.bench import deft_t5

        extra["t5"] = deft_t5.run_check(cfg.out_dir, cfg.threads)
    command = "peftkit bench deft " + " ".join(overrides)
    reused = sum(1 for r in all_runs if r.get("_reused"))
    paths = deft_report.write(cfg, rows, command, time.perf_counter() - t0, PAPER, (reused, len(all_runs)))
    if cfg.img_dir:
        Path(cfg.img_dir).mkdir(parents=True, exist_ok=True)
        for p in [paths.get("png"), *(v.get("png") for v in extra.values())]:
            if p is not None:
                shutil.copy(p, Path(cfg.img_dir) / Path(p).name)
    print(Path(paths["md"]).read_text(), flush=True)
    return 0


def config_dict(cfg: DeftBenchConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
