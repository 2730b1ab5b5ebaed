"""``peftkit bench sparsity``: does DEFT buy calibrated activation sparsity? The Pareto benchmark.

For each dataset x training variant x seed (a *row*): train MiniLM with the variant's method stack on the
same data, seed, schedule and batch; then, for each sparsifier rule (magnitude, sign, magnitude with the mean
fold) and target sparsity q in ``Q_GRID``, calibrate ``pk.sparsify`` on training examples and record on the
validation split: accuracy, agreement with the dense predictions, the McNemar discordant counts against the
dense model, and the measured MLP density. Each row is one small JSON under ``OUT/rows`` and is skipped when
present; its trained adapter is kept under ``runs_dir`` for the test read.

The summary (``bench/sparsity_report.py``) picks, per variant and dataset, the rule and the largest q whose
validation accuracy (mean over seeds) stays within 1 point of dense and whose pooled McNemar test against the
dense predictions is not significant at 5%; only then is the test split read, once, at that point.

Variants (what is not in the DEFT paper is marked): ``lora`` (LoRA r8 on q, v + head), ``lora+deft`` (the
paper's eps 1e-7, weight 1), ``lora+deft_e1e-2`` (eps 1e-2: not in the paper), ``lora_st`` /
``lora+deft_e1e-2_st`` (sparsity-aware fine-tuning, not in the paper: the last epoch runs with a magnitude
sparsifier at ``st_q`` calibrated at its start, gradients straight through), ``lora_mlp`` /
``lora_mlp+deft_e1e-2`` (LoRA also on ``mlp_in``, so the density loss moves the pre-activations directly).
Remedies, not in the paper either: ``lora+deft_thr_st`` (the threshold-aware surrogate
``DEFT(centre="threshold", eps=1e-2)``, centred on the per-layer threshold calibrated at the start of the
sparsity-aware epoch, at ``st_q``, and active only in that epoch; ``_w10``: weight 10);
``lora+deft_e1e-2_w0.1_st`` (DEFT weight 0.1); ``lora+deft_e1e-2_late_st`` (DEFT eps 1e-2 only in the
sparsity-aware epoch); ``pfeiffer_st`` / ``pfeiffer+deft_e1e-2_st`` (the Pfeiffer adapter instead of LoRA).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

Q_GRID = (0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.97, 0.98, 0.99)
RULES = {"magnitude": ("magnitude", False), "sign": ("sign", False), "magnitude_fold": ("magnitude", True)}
QV, QV_MLP = ("attn_q", "attn_v"), ("attn_q", "attn_v", "mlp_in")


class Variant(NamedTuple):
    """One training recipe of the bench."""

    targets: tuple[str, ...]                # LoRA targets (ignored by the adapter)
    deft: tuple[float, float] | None        # DEFT (eps, weight), or no DEFT
    st: bool                                # straight-through sparsifier in the last epoch
    late: bool = False                      # DEFT only in the last (sparsity-aware) epoch
    centred: bool = False                   # DEFT(centre="threshold"), calibrated at the last epoch's start
    adapter: bool = False                   # the Pfeiffer adapter instead of LoRA


VARIANTS: dict[str, Variant] = {
    "lora": Variant(QV, None, False),
    "lora+deft": Variant(QV, (1e-7, 1.0), False),
    "lora+deft_e1e-2": Variant(QV, (1e-2, 1.0), False),
    "lora_st": Variant(QV, None, True),
    "lora+deft_e1e-2_st": Variant(QV, (1e-2, 1.0), True),
    "lora_mlp": Variant(QV_MLP, None, False),
    "lora_mlp+deft_e1e-2": Variant(QV_MLP, (1e-2, 1.0), False),
    "lora+deft_thr_st": Variant(QV, (1e-2, 1.0), True, late=True, centred=True),
    "lora+deft_thr_w10_st": Variant(QV, (1e-2, 10.0), True, late=True, centred=True),
    "lora+deft_e1e-2_w0.1_st": Variant(QV, (1e-2, 0.1), True),
    "lora+deft_e1e-2_late_st": Variant(QV, (1e-2, 1.0), True, late=True),
    "pfeiffer_st": Variant((), None, True, adapter=True),
    "pfeiffer+deft_e1e-2_st": Variant((), (1e-2, 1.0), True, adapter=True),
}


@dataclass
class SparsityBenchConfig:
    """Scale of the bench (the defaults are the CPU scale of docs/results/deft.md)."""

    out_dir: str = "docs/results/sparsity"
    runs_dir: str = "runs/bench/sparsity"    # trained adapters (git-ignored), read back for the test split
    datasets: str = "bbc_news"               # drug_reviews needs lr=3e-3 epochs=4 max_length=128 (docs)
    variants: str = "lora,lora+deft,lora+deft_e1e-2,lora_st,lora+deft_e1e-2_st"
    seeds: int = 3
    seed0: int = 0
    backbone: str = "minilm"
    max_length: int = 64
    max_train_examples: int = 400
    epochs: int = 3
    batch_size: int = 16
    lr: float = 1e-3
    warmup_ratio: float = 0.06
    calib_examples: int = 32                 # training examples (x max_length tokens) for the thresholds
    st_q: float = 0.9                        # target sparsity of the straight-through last epoch
    rules: str = "magnitude"                # also: sign, magnitude_fold (one more pass per q and rule)
    threads: int = 1
    report_only: bool = False                # only re-render the summary from the stored rows


def _list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def parse(overrides: list[str]) -> SparsityBenchConfig:
    from peftkit.bench._args import parse_overrides
    from peftkit.core.errors import ConfigError

    cfg = parse_overrides(SparsityBenchConfig, overrides, "sparsity")
    bad = [v for v in _list(cfg.variants) if v not in VARIANTS]
    bad += [r for r in _list(cfg.rules) if r not in RULES]
    if bad:
        raise ConfigError(f"bench sparsity: unknown variant/rule {bad}; variants {list(VARIANTS)}, "
                          f"rules {list(RULES)}")
    return cfg


def row_path(cfg: SparsityBenchConfig, dataset: str, variant: str, seed: int) -> Path:
    return Path(cfg.out_dir) / "rows" / f"{dataset}__{variant}__s{seed}.json"


def adapter_dir(cfg: SparsityBenchConfig, dataset: str, variant: str, seed: int) -> Path:
    return Path(cfg.runs_dir) / f"{dataset}__{variant}__s{seed}"


def build_model(cfg: SparsityBenchConfig, variant: str, num_labels: int) -> Any:
    import peftkit as pk

    v = VARIANTS[variant]
    peft = (pk.Adapter(kind="pfeiffer", reduction_factor=16, activation="relu") if v.adapter
            else pk.LoRA(rank=8, alpha=16, targets=v.targets))
    stack: list[Any] = [peft]
    if v.deft is not None:
        stack.append(pk.DEFT(eps=v.deft[0], weight=v.deft[1], centre="threshold" if v.centred else "zero",
                             centre_q=cfg.st_q))
    return pk.apply(pk.load_backbone(cfg.backbone, task="classification", num_labels=num_labels), stack)


def loaders(cfg: SparsityBenchConfig, data: Any, seed: int) -> tuple[Any, Any, list[Any]]:
    """(train loader, validation loader, calibration batches from the training examples)."""
    import torch
    from torch.utils.data import DataLoader, Subset

    g = torch.Generator().manual_seed(seed)
    train = DataLoader(data.train, batch_size=cfg.batch_size, shuffle=True, generator=g,
                       collate_fn=data.collate)
    val = DataLoader(data.val, batch_size=32, collate_fn=data.collate)
    pick = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(10_000 + seed))
    calib = list(DataLoader(Subset(data.train, pick[: cfg.calib_examples].tolist()), batch_size=16,
                            collate_fn=data.collate))
    return train, val, calib


def train(cfg: SparsityBenchConfig, model: Any, variant: str, train_loader: Any, calib: list[Any]) -> float:
    """AdamW, linear schedule with warm-up; task loss + ``pk.aux_loss``. Returns seconds."""
    import peftkit as pk
    from peftkit.train.evaluate import logits_of, split_batch, task_loss
    from peftkit.train.optim import build_optimizer, build_scheduler

    t0 = time.perf_counter()
    opt = build_optimizer(model, cfg.lr, 0.0)
    sched = build_scheduler(opt, cfg.epochs * len(train_loader), cfg.warmup_ratio, "linear")
    import torch

    from peftkit.methods.deft.centre import calibrate_centres

    device = torch.device("cpu")
    v = VARIANTS[variant]
    model.train()
    for epoch in range(cfg.epochs):
        last = epoch == cfg.epochs - 1
        if v.st and last:  # sparsity-aware last epoch
            model.eval()
            pk.sparsify(model, cfg.st_q, calib=calib, allow_training=True)
            if v.centred:
                calibrate_centres(model, calib)  # the same thresholds, for the centred surrogate
            model.train()
        aux = v.deft is not None and (last or not v.late)
        for batch in train_loader:
            inputs, labels = split_batch(batch, device)
            logits = logits_of(model(**inputs))
            loss = task_loss(logits, labels, logits.shape[-1])
            if aux:
                loss = loss + pk.aux_loss(model)
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
    if v.st:
        drop_sparsify(model)
    model.eval()
    return time.perf_counter() - t0


def drop_sparsify(model: Any) -> None:
    """Take the last applied ``sparsify`` off ``model`` (the trained methods stay)."""
    from peftkit.core.state import get_state

    state = get_state(model)
    if state is not None and state.applied and state.applied[-1].name == "sparsify":
        state.applied.pop().undo()


def predict(model: Any, loader: Any) -> tuple[list[int], list[int]]:
    """Class predictions and gold labels over ``loader`` (eval mode, no grad)."""
    import torch

    from peftkit.train.evaluate import predict as _predict

    preds, golds, _ = _predict(model, loader, torch.device("cpu"), num_labels=2, progress=False)
    return preds, golds


def sparse_predict(model: Any, loader: Any) -> tuple[list[int], float]:
    """(predictions, measured MLP density %) of a sparsified model in one pass over ``loader``."""
    from peftkit.methods.deft.calibrate import measure_density
    from peftkit.train.evaluate import logits_of

    outs: list[Any] = []
    density = measure_density(model, loader, outputs=outs)["mean"]
    return [int(i) for o in outs for i in logits_of(o).argmax(-1).tolist()], density


def compare(preds: list[int], dense: list[int], golds: list[int]) -> dict[str, Any]:
    """Accuracy, agreement with the dense predictions, McNemar discordant counts vs dense."""
    n = len(golds)
    right = [p == g for p, g in zip(preds, golds)]
    dense_right = [p == g for p, g in zip(dense, golds)]
    return {"acc": 100.0 * sum(right) / n, "agree": 100.0 * sum(p == d for p, d in zip(preds, dense)) / n,
            "only_dense": sum(d and not s for s, d in zip(right, dense_right)),
            "only_sparse": sum(s and not d for s, d in zip(right, dense_right)), "n": n}


def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar p: 2 * P(X <= min(b, c)), X ~ Binomial(b + c, 1/2), capped at 1."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


def sparse_curve(cfg: SparsityBenchConfig, model: Any, loader: Any, calib: list[Any], dense: list[int],
                 golds: list[int], rule: str) -> list[dict[str, Any]]:
    """One point per q: validation metrics and measured MLP density of the sparsified model."""
    import peftkit as pk

    kind, fold = RULES[rule]
    points = []
    for q in Q_GRID:
        pk.sparsify(model, q, calib=calib, rule=kind, fold_mean=fold)
        try:
            preds, density = sparse_predict(model, loader)
        finally:
            drop_sparsify(model)
        points.append({"q": q, "density": density, **compare(preds, dense, golds)})
    return points


DENSITY_KEYS = {"density_exact": "exact@fp32", "density_gt1e-02": "gt1e-02@fp32",
                "preact_pos": "preact_pos@fp32"}


def dense_densities(model: Any, loader: Any) -> dict[str, float | None]:
    """Exact-zero, |a| > 1e-2 and positive pre-activation densities (%) of the dense model on ``loader``."""
    from peftkit.methods.deft.metrics import density_report

    dens = density_report(model, loader, pad_key="attention_mask")
    return {k: dens.get(v) for k, v in DENSITY_KEYS.items()}


def run_row(cfg: SparsityBenchConfig, dataset: str, variant: str, seed: int) -> dict[str, Any]:
    """Train one model and measure its validation curves; the adapter is saved for the test read."""
    import peftkit as pk
    from peftkit.core.registry import get_dataset
    from peftkit.train.build import seed_everything

    data = get_dataset(dataset)(backbone=cfg.backbone, seed=seed, max_length=cfg.max_length,
                                max_train_examples=cfg.max_train_examples)
    seed_everything(seed)
    model = build_model(cfg, variant, data.num_labels)
    train_loader, val, calib = loaders(cfg, data, seed)
    seconds = train(cfg, model, variant, train_loader, calib)
    pk.save_adapter(model, adapter_dir(cfg, dataset, variant, seed))
    dense, golds = predict(model, val)
    dens = dense_densities(model, val)
    t1 = time.perf_counter()
    curves = {r: sparse_curve(cfg, model, val, calib, dense, golds, r) for r in _list(cfg.rules)}
    return {"dataset": dataset, "variant": variant, "seed": seed, "train_seconds": seconds,
            "curve_seconds": time.perf_counter() - t1, "val_dense_acc": compare(dense, dense, golds)["acc"],
            **dens, "n_train": len(data.train),
            "n_val": len(golds), "curves": curves, "config": asdict(cfg)}


def main(overrides: list[str]) -> int:
    """Run the missing rows (seed-major, so partial results stay balanced), then write the summary."""
    import torch

    from peftkit.bench import sparsity_read, sparsity_report
    from peftkit.core.io import atomic_write_json

    cfg = parse(overrides)
    torch.set_num_threads(cfg.threads)
    if not cfg.report_only:
        for seed in range(cfg.seed0, cfg.seed0 + cfg.seeds):
            for dataset in _list(cfg.datasets):
                for variant in _list(cfg.variants):
                    path = row_path(cfg, dataset, variant, seed)
                    if path.is_file():
                        continue
                    t = time.perf_counter()
                    row = run_row(cfg, dataset, variant, seed)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    atomic_write_json(path, row)
                    print(f"[sparsity] {dataset} {variant} s{seed}: val dense {row['val_dense_acc']:.1f} "
                          f"({time.perf_counter() - t:.0f} s)", flush=True)
        sparsity_read.read_tests(cfg)
    paths = sparsity_report.write(cfg, "peftkit bench sparsity " + " ".join(overrides))
    print(Path(paths["md"]).read_text(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
