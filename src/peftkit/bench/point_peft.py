"""``peftkit bench point_peft``: Point-PEFT (arXiv 2310.03059) against full FT, a linear probe and LoRA, its
ablations (prompt only, adapter only, prompts without the bank) and the stack with DEFT, on KiCad.

Every row trains from the same pre-trained checkpoint with the same data, schedule (AdamW, cosine, warm-up,
grad clip: the base config's ``train``) and seeds; only the method stack differs. Each (row, protocol, seed)
is one ``peftkit train`` run in a fresh process (one CPU thread), so its peak memory is its own. Protocols:
``std`` = scale-and-translate augmentation only, ``rot`` = plus a random rotation about the up axis (the
paper's "-aug"). The KiCad loader validates on the test split every epoch, as the papers do: the table shows
the last-epoch accuracy and the best epoch's apart (the best is selected on test, an optimistic number).

Rows and protocols are independent runs under ``OUT/runs/``; a finished run (its ``metrics.json`` and the
same config) is not run again, so an interrupted bench resumes. Writes ``OUT/point_peft.{json,md,png}``.

Overrides (``peftkit bench point_peft key=value ...``): the fields of :class:`BenchConfig`, plus
``backbone.K=v`` / ``data.K=v`` / ``train.K=v`` applied to every run and ``point_peft.K=v`` applied to every
Point-PEFT row (e.g. ``point_peft.prompt_layers=4``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from peftkit.core.errors import ConfigError

BANK_DIR = "bank"
PROTOCOLS = {"std": "scale_translate", "rot": "scale_translate+rotate"}
COST_KEYS = ("step_time_s", "peak_step_bytes", "saved_activation_bytes")
DENSITY_ROWS = ("point_peft", "point_peft_deft")   # MLP activation density measured (DEFT's metric)
DENSITY_KEYS = ("density/exact@fp32", "density/gt1e-02@fp32")


@dataclass
class BenchConfig:
    """What to run. Defaults = the CPU-scaled reproduction reported in docs/results/point_peft.md."""

    config: str = "configs/point/kicad__point_peft.yaml"   # base run: backbone + checkpoint, data, schedule
    out: str = "runs/bench_point_peft"
    rows: str = "full,linear,lora,point_peft,prompt_only,adapter_only,no_bank,point_peft_deft"
    protocols: str = "std,rot"
    rot_rows: str = "full,point_peft"    # rows also run under the rotation protocol
    seeds: str = "0,1,2"
    threads: int = 1
    step_batch: int = 32                 # batch of the step-time / memory measurement (paper batch 32)
    jobs: int = 1                        # training runs at once (each its own process and thread)


def _pp(**kw: Any) -> dict[str, Any]:
    return {"name": "point_peft", "bank_path": "@BANK", **kw}


# label, method stack (``@BANK`` is replaced by the bench's bank directory)
ROWS: dict[str, tuple[str, list[dict[str, Any]]]] = {
    "full": ("full FT", [{"name": "full"}]),
    "linear": ("linear probe", [{"name": "head_only"}]),
    "lora": ("LoRA r=8 (qkv)", [{"name": "lora", "rank": 8, "alpha": 16, "targets": ["attn_qkv"]}]),
    "point_peft": ("Point-PEFT", [_pp()]),
    "prompt_only": ("prompt only", [_pp(use_adapter=False)]),
    "adapter_only": ("adapter only", [_pp(use_prompt=False)]),
    "no_bank": ("prompt w/o bank", [_pp(use_bank=False)]),
    "point_peft_deft": ("Point-PEFT + DEFT", [_pp(), {"name": "deft"}]),
}


def parse(overrides: list[str]) -> tuple[BenchConfig, list[str]]:
    """Split ``key=value`` overrides into the bench's own fields and per-run ``backbone/data/train`` ones."""
    own, run = {}, []
    names = {f.name for f in dataclasses.fields(BenchConfig)}
    for item in overrides:
        key, sep, val = item.partition("=")
        if not sep:
            raise ConfigError(f"override '{item}' is not key=value")
        if key.split(".")[0] in ("backbone", "data", "train", "point_peft"):
            run.append(item)
        elif key in names:
            own[key] = int(val) if key in ("threads", "step_batch", "jobs") else val
        else:
            raise ConfigError(f"unknown bench option '{key}'; valid: {', '.join(sorted(names))}, backbone.*, "
                              "data.*, train.*, point_peft.*")
    cfg = BenchConfig(**own)
    unknown = [r for r in _split(cfg.rows) + _split(cfg.rot_rows) if r not in ROWS]
    if unknown:
        raise ConfigError(f"unknown row(s) {unknown}; choose from {', '.join(ROWS)}")
    bad = [p for p in _split(cfg.protocols) if p not in PROTOCOLS]
    if bad:
        raise ConfigError(f"unknown protocol(s) {bad}; choose from {', '.join(PROTOCOLS)}")
    return cfg, run


def _split(text: str) -> list[str]:
    return [t.strip() for t in str(text).split(",") if t.strip()]


def _runs(cfg: BenchConfig) -> list[tuple[str, str, int]]:
    from peftkit.core.registry import list_methods

    known = set(list_methods())
    out = []
    for proto in _split(cfg.protocols):
        rows = [r for r in _split(cfg.rows) if proto == "std" or r in _split(cfg.rot_rows)]
        for row in rows:
            if all(m["name"] in known for m in ROWS[row][1]):
                out += [(row, proto, int(s)) for s in _split(cfg.seeds)]
    return out


def _run_tree(base: dict[str, Any], row: str, proto: str, seed: int, out: Path) -> dict[str, Any]:
    tree = copy.deepcopy(base)
    extra = tree.pop("point_peft", {})
    methods = copy.deepcopy(ROWS[row][1])
    for m in methods:
        if m.get("bank_path") == "@BANK":
            m.update(bank_path=str(out / BANK_DIR), **extra)
    tree.update(seed=seed, methods=methods, out_dir=str(out / "runs" / f"{row}__{proto}__s{seed}"))
    tree.setdefault("data", {})["augment"] = PROTOCOLS[proto]
    if row in DENSITY_ROWS:
        tree.setdefault("train", {})["measure_density"] = True
    return tree


def _fresh(cmd: list[str], tree: dict[str, Any], cfg_path: Path, done: Path, threads: int) -> None:
    """Run ``cmd`` (it reads ``cfg_path``) in a fresh process unless ``done`` exists for the same config."""
    text = yaml.safe_dump(tree, sort_keys=False)
    if done.is_file() and cfg_path.is_file() and cfg_path.read_text() == text:
        print(f"[point_peft bench] {done.parent.name}/{done.name}: done before, reusing", flush=True)
        return
    cfg_path.parent.mkdir(parents=True, exist_ok=True)
    cfg_path.write_text(text)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    t0 = time.time()
    res = subprocess.run([sys.executable, "-m", *cmd], env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
    print(f"[point_peft bench] {cfg_path.stem}: {time.time() - t0:.0f} s", flush=True)


def _train(tree: dict[str, Any], cfg_dir: Path, threads: int) -> dict[str, Any]:
    """One training run in a fresh process; its summary and per-epoch test accuracy."""
    tree = {**tree, "train": {**tree.get("train", {}), "threads": threads}}
    run_dir = Path(tree["out_dir"])
    cfg_path = cfg_dir / f"{run_dir.name}.yaml"
    done = run_dir / "metrics.json"
    _fresh(["peftkit.cli", "train", str(cfg_path), "--no-progress"], tree, cfg_path, done, threads)
    metrics = json.loads(done.read_text())
    curve = [r["val/accuracy"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
             if "val/accuracy" in r]
    return {"metrics": metrics, "curve": curve}


def _step_cost(tree: dict[str, Any], out: Path, row: str, threads: int, batch_size: int) -> dict[str, Any]:
    """Step time and memory of a row at ``batch_size``, from ``point_peft_step`` in a fresh process."""
    tree = {**tree, "train": {**tree.get("train", {}), "threads": threads}}
    cfg_path = out / "configs" / f"step__{row}.yaml"
    done = out / "step" / f"{row}.json"
    done.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["peftkit.bench.point_peft_step", str(cfg_path), str(done), str(batch_size)]
    _fresh(cmd, tree, cfg_path, done, threads)
    return json.loads(done.read_text())


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def aggregate(results: dict[tuple[str, str, int], dict[str, Any]],
              cost: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One row per (method row, protocol): accuracy mean/std over seeds (last, best epoch), counts, cost."""
    rows = []
    for row, proto in dict.fromkeys((r, p) for r, p, _ in results):
        runs = [v for (r, p, _), v in results.items() if (r, p) == (row, proto)]
        last = [v["metrics"]["eval/accuracy"] for v in runs]
        best = [max(v["curve"]) if v["curve"] else v["metrics"]["eval/accuracy"] for v in runs]
        m = runs[0]["metrics"]
        (lm, ls), (bm, bs) = _mean_std(last), _mean_std(best)
        rows.append({
            "row": row, "label": ROWS[row][0], "protocol": proto, "seeds": len(runs),
            "acc_last": lm, "acc_last_std": ls, "acc_best": bm, "acc_best_std": bs,
            "acc_last_runs": last, "acc_best_runs": best,
            "trainable_params": m["trainable_params"], "total_params": m["total_params"],
            "trainable_pct": m["trainable_pct"], "head_params": m.get("trainable/head", 0),
            "train_step_time_s": statistics.median(v["metrics"]["step_time_s"] for v in runs),
            "epochs": m.get("epochs"), "steps": m.get("steps"),
            **{k: statistics.fmean(v["metrics"][k] for v in runs) for k in DENSITY_KEYS if k in m},
            **{k: (cost or {}).get(row, {}).get(k) for k in COST_KEYS},
        })
    return rows


# ---- report ----------------------------------------------------------------------------------------------


def _acc(key: str) -> Any:
    def fmt(row: dict[str, Any]) -> str:
        return f"{100 * row[key]:.1f} ± {100 * row[key + '_std']:.1f}"

    return fmt


def figure(rows: list[dict[str, Any]], title: str) -> Any:
    """Accuracy (last epoch, mean ± std over seeds) per row and protocol, and the trainable share."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(r["label"] for r in rows))
    protos = list(dict.fromkeys(r["protocol"] for r in rows))
    size = (10, 0.5 * len(labels) + 1.6)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=size, gridspec_kw={"width_ratios": [3, 2]})
    h = 0.8 / len(protos)
    for j, proto in enumerate(protos):
        mine = [(labels.index(r["label"]), r) for r in rows if r["protocol"] == proto]
        ax.barh([i + j * h for i, _ in mine], [100 * r["acc_last"] for _, r in mine], h,
                xerr=[100 * r["acc_last_std"] for _, r in mine], color=f"C{j}", label=proto)
    ax.set_yticks([i + h * (len(protos) - 1) / 2 for i in range(len(labels))], labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("test accuracy, last epoch (%)")
    ax.legend(fontsize=8, loc="lower right")
    pct = {r["label"]: r["trainable_pct"] for r in rows}
    ax2.barh(range(len(labels)), [pct[lab] for lab in labels], color="C2")
    ax2.set_xscale("log")
    ax2.set_yticks(range(len(labels)), [""] * len(labels))
    ax2.invert_yaxis()
    ax2.set_xlabel("trainable parameters (% of model, head included)")
    for i, lab in enumerate(labels):
        ax2.text(pct[lab], i, f" {pct[lab]:.2f}%", va="center", fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def write(out: Path, rows: list[dict[str, Any]], base: dict[str, Any], cfg: BenchConfig,
          overrides: list[str]) -> dict[str, Path]:
    from peftkit.bench.report import Column, fmt_float, fmt_int, fmt_mib, fmt_pct, write_report

    for r in rows:
        r["acc_last_txt"], r["acc_best_txt"] = _acc("acc_last")(r), _acc("acc_best")(r)
    columns = [
        Column("label", "method"), Column("protocol", "protocol"), Column("seeds", "seeds"),
        Column("acc_last_txt", "acc. last epoch (%)"), Column("acc_best_txt", "acc. best epoch (%)"),
        Column("trainable_params", "trainable", fmt_int), Column("trainable_pct", "trainable %", fmt_pct),
        Column("step_time_s", "step time (s)", fmt_float),
        Column("peak_step_bytes", "peak mem / step", fmt_mib),
        Column("saved_activation_bytes", "saved for backward", fmt_mib),
        Column(DENSITY_KEYS[0], "MLP density a!=0", fmt_pct),
        Column(DENSITY_KEYS[1], "MLP density abs(a)>1e-2", fmt_pct),
    ]
    train = base.get("train", {})
    notes = [
        f"backbone {base['backbone']}, data {base['data']}",
        f"schedule: {train}",
        f"seeds {cfg.seeds}; CPU, {cfg.threads} thread(s) per run; best epoch is selected on the test split",
        f"step time / memory: one fixed training batch of {cfg.step_batch} clouds, median of 3 AdamW steps "
        "after a warm-up step, each row in a fresh process (peak RSS over the baseline)",
        "command: peftkit bench point_peft " + " ".join(overrides),
    ]
    meta = {"bench": dataclasses.asdict(cfg), "base_config": base, "overrides": list(overrides)}
    title = f"Point-PEFT on {base['data']['name']} ({base['backbone']['name']}, CPU)"
    return write_report(out, "point_peft", rows=rows, columns=columns, title=title, notes=notes, meta=meta,
                        figure=figure(rows, title))


def main(overrides: list[str]) -> int:
    """Run the bench; see the module docstring."""
    from peftkit.methods.point_peft import bank
    from peftkit.train.config import apply_overrides

    cfg, run_over = parse(list(overrides))
    base_path = Path(cfg.config)
    if not base_path.is_file():
        raise ConfigError(f"bench config {base_path} not found")
    pp_over = [o.partition(".")[2] for o in run_over if o.startswith("point_peft.")]
    rest = [o for o in run_over if not o.startswith("point_peft.")]
    base = apply_overrides(yaml.safe_load(base_path.read_text()), rest)
    base["point_peft"] = apply_overrides({}, pp_over)  # extra fields of every point_peft method
    out = Path(cfg.out)
    runs = _runs(cfg)
    if any(m["name"] == "point_peft" for r, _, _ in runs for m in ROWS[r][1]):
        tree = _run_tree(base, "point_peft", "std", 0, out)
        bank_cfg = out / "configs" / "bank.yaml"
        bank_cfg.parent.mkdir(parents=True, exist_ok=True)
        bank_cfg.write_text(yaml.safe_dump(tree, sort_keys=False))
        t0 = time.time()
        bank.main(str(bank_cfg), [f"train.threads={cfg.threads}"])
        print(f"[point_peft bench] bank: {time.time() - t0:.0f} s", flush=True)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max(1, cfg.jobs)) as pool:
        cfg_dir = out / "configs"
        futures = {r: pool.submit(_train, _run_tree(base, *r, out), cfg_dir, cfg.threads) for r in runs}
        results = {run: f.result() for run, f in futures.items()}
    cost = {r: _step_cost(_run_tree(base, r, "std", 0, out), out, r, cfg.threads, cfg.step_batch)
            for r in dict.fromkeys(r for r, _, _ in runs)}
    rows = aggregate(results, cost)
    paths = write(out, rows, base, cfg, overrides)
    print(paths["md"].read_text())
    return 0
