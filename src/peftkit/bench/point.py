"""``peftkit bench point``: KiCad classification with point_mae_small, pretrained vs random init.

Rows (each a ``peftkit train`` run of ``configs/point/kicad__<stem>.yaml`` in a fresh process, so its peak
memory is its own): full fine-tuning, head only (frozen encoder) and LoRA from the shipped CPU-pretrained
checkpoint, full fine-tuning from a random init (``backbone.checkpoint=null``), and the same without the
rotation augmentation (``*_norot``). Plus a linear probe: multinomial logistic regression (L-BFGS, L2
``probe_l2``) on the frozen encoder's ``[cls ; max]`` features of the un-augmented clouds, pretrained vs
random; the Point-MAE papers monitor pretraining the same way (with a linear SVM).

Accuracy: the test split after the last epoch and the best epoch (the papers report the best). Step time:
median seconds of one optimiser step (batch 32) of full FT, head only and LoRA measured interleaved in one
process (``timing``), and its ratio to full FT; the shared CPU makes the runs' own step times incomparable.
Peak memory: peak RSS of the training steps over the RSS after the model was built (CPU).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from peftkit.bench._args import parse_overrides
from peftkit.bench.point_probe import features
from peftkit.bench.report import (
    Column,
    Panel,
    bar_panels,
    fmt_frac_pct,
    fmt_int,
    fmt_mib,
    text_table,
    write_report,
)
from peftkit.core.errors import ConfigError

SHIPPED = "checkpoints/point_mae_small_kicad.safetensors"
NOROT = ("data.augment=scale_translate",)
ROWS = {  # slug: (label, config stem, pretrained, extra overrides)
    "full": ("full FT, pretrained", "full", True, ()),
    "full_random": ("full FT, random init", "full", False, ()),
    "linear": ("head only, pretrained", "linear", True, ()),
    "linear_random": ("head only, random init", "linear", False, ()),
    "lora": ("LoRA r=8, pretrained", "lora", True, ()),
    # without the rotation augmentation (KiCad parts have a canonical orientation in the library)
    "full_norot": ("full FT, pretrained, no rotation", "full", True, NOROT),
    "full_random_norot": ("full FT, random init, no rotation", "full", False, NOROT),
    "linear_norot": ("head only, pretrained, no rotation", "linear", True, NOROT),
}


@dataclass
class PointBenchConfig:
    out_dir: str = "runs/bench"  # point.{json,md,png}
    runs_dir: str = "runs/bench/point"  # the training runs
    rows: str = "full,full_random,linear,lora,full_norot,full_random_norot,linear_norot"  # +linear_random
    epochs: int = 5  # CPU budget (the configs say 30)
    seed: int = 0
    threads: int = 1
    probe: bool = True
    probe_l2: float = 1e-3
    checkpoint: str = SHIPPED
    timing: bool = True                         # interleaved step times of full / head only / LoRA
    reuse: bool = True                          # keep a row whose run already finished (metrics.json)


def parse(overrides: list[str]) -> PointBenchConfig:
    return parse_overrides(PointBenchConfig, overrides, "point")


def run_row(cfg: PointBenchConfig, slug: str) -> dict[str, Any]:
    label, stem, pretrained, extra = ROWS[slug]
    out = Path(cfg.runs_dir) / slug
    args = [
        sys.executable,
        "-m",
        "peftkit",
        "train",
        f"configs/point/kicad__{stem}.yaml",
        f"out_dir={out}",
        f"seed={cfg.seed}",
        f"train.epochs={cfg.epochs}",
        f"train.threads={cfg.threads}",
        "train.measure_memory=true",
        f"backbone.checkpoint={cfg.checkpoint if pretrained else 'null'}",
        *extra,
        "--no-progress",
    ]
    if not (cfg.reuse and (out / "metrics.json").is_file()):
        res = subprocess.run(args, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"row {slug} failed:\n{res.stderr[-2000:]}")
    m = json.loads((out / "metrics.json").read_text())
    return {
        "row": label,
        "slug": slug,
        "acc_last": m.get("val/accuracy/last", m.get("eval/accuracy")),
        "acc_best": m.get("val/accuracy/best"),
        "trainable": m["trainable_params"],
        "trainable_pct": m["trainable_pct"],
        "run_step_time_s": m.get("step_time_s"),   # wall, under whatever load the run met
        "peak_bytes": m.get("peak_memory_bytes"),
        "command": " ".join(args[2:]),
    }


def logistic_probe(
    xtr: torch.Tensor, ytr: torch.Tensor, xte: torch.Tensor, yte: torch.Tensor, num_classes: int, l2: float
) -> float:
    """Test accuracy of an L2-regularised softmax regression fitted with L-BFGS on standardised features."""
    from peftkit.bench.point_probe import accuracy, fit_softmax

    return accuracy(fit_softmax(xtr, ytr, num_classes, l2), xte, yte)


def probe_rows(cfg: PointBenchConfig) -> list[dict[str, Any]]:
    import peftkit as pk
    from peftkit.core.registry import get_dataset

    torch.set_num_threads(cfg.threads)
    data = get_dataset("kicad")(backbone="point_mae_small", seed=cfg.seed, val="none")
    rows = []
    for label, ckpt in (("linear probe, pretrained", cfg.checkpoint), ("linear probe, random init", None)):
        model = pk.load_backbone(
            "point_mae_small", num_labels=data.num_labels, seed=cfg.seed, checkpoint=ckpt
        )
        xtr, ytr = features(model, data.train, data.eval_collate)
        xte, yte = features(model, data.test, data.eval_collate)
        acc = logistic_probe(xtr, ytr, xte, yte, data.num_labels, cfg.probe_l2)
        rows.append(
            {
                "row": label,
                "slug": "probe",
                "acc_last": acc,
                "trainable": xtr.shape[1] * data.num_labels + data.num_labels,
                "command": f"peftkit bench point (probe_l2={cfg.probe_l2})",
            }
        )
    return rows


def time_steps(cfg: PointBenchConfig, rounds: int = 3) -> dict[str, float]:
    """Median seconds of one optimiser step (batch 32) per method, interleaved in one process."""
    import peftkit as pk
    from peftkit.bench.speed import interleaved_times, medians
    from peftkit.core.registry import get_dataset
    from peftkit.train.config import load_config

    torch.set_num_threads(cfg.threads)
    data = get_dataset("kicad")(backbone="point_mae_small", seed=cfg.seed, val="none")
    batch = data.collate([data.train[i] for i in range(32)])
    steps = {}
    for stem in ("full", "linear", "lora"):
        run = load_config(f"configs/point/kicad__{stem}.yaml", [f"backbone.checkpoint={cfg.checkpoint}"])
        base = pk.load_backbone("point_mae_small", num_labels=data.num_labels, checkpoint=cfg.checkpoint)
        model = pk.apply(base, run.method_configs()).train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

        def step(model: torch.nn.Module = model, opt: torch.optim.Optimizer = opt) -> None:
            loss = torch.nn.functional.cross_entropy(model(points=batch["points"]), batch["labels"])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        steps[stem] = step
    return medians(interleaved_times(steps, warmup=1, rounds=rounds))


def plot_curves(cfg: PointBenchConfig, slugs: list[str], path: Path) -> None:
    """Test accuracy after every epoch of each training row (from its metrics.jsonl)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.0, 3.2), dpi=110)
    for slug in slugs:
        recs = [json.loads(x) for x in (Path(cfg.runs_dir) / slug / "metrics.jsonl").read_text().splitlines()]
        pts = [(r["epoch"] + 1, r["val/accuracy"]) for r in recs if "val/accuracy" in r]
        ax.plot(*zip(*pts), marker="o", label=ROWS[slug][0])
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy")
    ax.set_title("KiCad-12: test accuracy per epoch")
    ax.legend(frameon=False, fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(overrides: list[str] | None = None) -> int:
    cfg = parse(overrides or [])
    slugs = [s for s in cfg.rows.split(",") if s]
    unknown = sorted(set(slugs) - set(ROWS))
    if unknown:
        raise ConfigError(f"bench point: unknown rows {unknown}; choose from {', '.join(ROWS)}")
    rows = [run_row(cfg, s) for s in slugs]
    if cfg.probe:
        rows += probe_rows(cfg)
    if cfg.timing:
        times = time_steps(cfg)
        for r in rows:
            stem = ROWS[r["slug"]][1] if r["slug"] in ROWS else None
            if stem:
                r["step_time_s"], r["step_ratio"] = times[stem], times[stem] / times["full"]
    cols = [
        Column("row", "run"),
        Column("acc_last", "test acc (last)", fmt_frac_pct),
        Column("acc_best", "test acc (best epoch)", fmt_frac_pct),
        Column("trainable", "trainable", fmt_int),
        Column("step_time_s", "step s", lambda x: f"{x:.2f}" if x else "–"),
        Column("step_ratio", "step / full", lambda x: f"{x:.2f}x" if x else "–"),
        Column("peak_bytes", "peak RSS", fmt_mib),
    ]
    fig = bar_panels(
        rows,
        "row",
        [Panel("acc_last", "test accuracy (last epoch)", fmt_frac_pct)],
        title="KiCad-12, point_mae_small",
    )
    notes = [
        f"KiCad 12 classes, family-disjoint split; {cfg.epochs} epochs, batch 32, seed {cfg.seed}; CPU, "
        f"{cfg.threads} thread(s), torch {torch.__version__}",
        "command: peftkit bench point " + " ".join(overrides or []),
    ]
    paths = write_report(
        cfg.out_dir,
        "point",
        rows=rows,
        columns=cols,
        title="KiCad classification",
        notes=notes,
        meta={"config": dataclasses.asdict(cfg)},
        figure=fig,
    )
    plot_curves(cfg, slugs, Path(cfg.out_dir) / "point_curves.png")
    print(text_table(rows, cols))
    print(f"wrote {paths['md']}")
    return 0
