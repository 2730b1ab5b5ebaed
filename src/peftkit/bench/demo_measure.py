"""The demo's measurements per row: training (the shared loop), interleaved step time, activation memory.

Speed and memory use one fixed synthetic batch of b x t tokens (t = the demo's ``max_length``, which every
BBC article exceeds, so training batches have that shape too), the same for every row.

Shape legend: b batch, t tokens.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from peftkit.bench.memory import StepSpec, default_loss_for, model_inputs, synthetic_batch
from peftkit.core.configs import method_configs

KEEP = ("trainable_params", "total_params", "trainable_pct", "step_time_s", "train_time_s")


def train_row(run_cfg: Any) -> tuple[dict[str, Any], int | None]:
    """Train and evaluate one row with ``peftkit.train.loop.run``; returns (its metrics, num_labels)."""
    from peftkit.train.loop import run

    metrics = run(run_cfg)
    keep = {k: v for k, v in metrics.items()
            if k in KEEP or k.startswith(("eval/", "params/", "trainable/"))
            or (k.startswith("density/") and "/L" not in k)}  # per-layer densities stay in the run's JSON
    keep["train_step_time_s"] = keep.pop("step_time_s", None)  # sequential, not interleaved: JSON only
    num_labels = metrics.get("num_labels")
    return keep, int(num_labels) if num_labels is not None else None


def _spec(cfg: Any, row: Any, num_labels: int) -> StepSpec:
    return StepSpec(
        backbone=cfg.backbone, methods=[dict(m) for m in row.methods],
        backbone_kwargs=dict(cfg.backbone_kwargs), num_labels=num_labels, batch_size=cfg.batch_size,
        seq_len=cfg.max_length, steps=cfg.memory_steps,
        lr=row.lr, seed=cfg.seed, threads=cfg.threads or torch.get_num_threads(),
    )


def _reference(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return next((r for r in results if r["methods"] == [{"name": "full"}]), results[0])


def add_speed(cfg: Any, rows: Sequence[Any], results: list[dict[str, Any]], num_labels: int) -> None:
    """Median step time of every row, all models stepping round-robin in this process; ratio to full FT."""
    import peftkit as pk
    from peftkit.bench.speed import interleaved_times, medians
    from peftkit.train.optim import build_optimizer

    steps = {}
    batch: dict[str, torch.Tensor] = {}
    for row in tqdm(rows, desc="speed: build models", leave=False):
        torch.manual_seed(cfg.seed)
        model = pk.load_backbone(cfg.backbone, task="classification", num_labels=num_labels,
                                 **cfg.backbone_kwargs)
        model = pk.apply(model, method_configs(list(row.methods)))
        model.train()
        if not batch:
            vocab = model.get_input_embeddings().num_embeddings
            batch.update(synthetic_batch(_spec(cfg, row, num_labels), vocab))
        opt = build_optimizer(model, row.lr, 0.01)
        loss_fn = default_loss_for(model)

        def step(model: Any = model, opt: Any = opt, loss_fn: Any = loss_fn, batch: Any = batch) -> None:
            loss_fn(model(**model_inputs(batch)), batch).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        steps[row.label] = step
    tqdm.write(f"speed: {cfg.speed_warmup} warm-up + {cfg.speed_rounds} timed round-robin rounds of "
               f"{len(steps)} models")
    med = medians(interleaved_times(steps, warmup=cfg.speed_warmup, rounds=cfg.speed_rounds))
    for r in results:
        r["step_time_s"] = med[r["label"]]
    ref = _reference(results)["step_time_s"]
    for r in results:
        r["step_time_ratio"] = r["step_time_s"] / ref
    steps.clear()


def add_memory(cfg: Any, rows: Sequence[Any], results: list[dict[str, Any]], num_labels: int) -> None:
    """Saved-activation bytes and whole-step peak per row (fresh process each, unless ``memory=inline``)."""
    if cfg.memory == "off":
        return
    from peftkit.bench._subproc import measure_fresh, measure_step

    specs = [_spec(cfg, row, num_labels) for row in rows]
    if cfg.memory == "fresh":
        workers = max(1, min(cfg.memory_workers, os.cpu_count() or 1))
        with tqdm(total=len(specs), desc=f"memory: fresh process per row ({workers} at a time)",
                  leave=False) as bar:
            measured = measure_fresh(specs, workers, progress=bar)
    else:
        measured = [measure_step(s) for s in tqdm(specs, desc="memory: in process", leave=False)]
    for r, m in zip(results, measured):
        r["saved_activation_bytes"] = m["saved_activation_bytes"]
        r["peak_memory_bytes"] = m["peak_bytes"]
        r["retained_memory_bytes"] = m["retained_bytes"]
        r["memory_trainable_params"] = m["trainable_params"]  # the same model as trained (a check)
        r["memory_mode"] = cfg.memory if m.get("hwm_reset", True) else f"{cfg.memory} (sampled RSS)"
    ref = _reference(results)
    for r in results:
        for k in ("saved_activation_bytes", "peak_memory_bytes"):
            r[k.replace("_bytes", "_ratio")] = r[k] / ref[k] if ref[k] else None


SPARSE_GRID = (0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99)  # target sparsities tried on validation
SPARSE_CALIB = 16        # training articles that calibrate the thresholds
SPARSE_REPS = 15         # interleaved single-sentence repetitions for the speed ratio


def add_sparsity(cfg: Any, rows: Sequence[Any], results: list[dict[str, Any]]) -> None:
    """Rows with ``sparsity``: the calibrated MLP density within 1 point and the sparse MLP's speed-up.

    The trained adapter is reloaded; ``pk.sparsify`` (magnitude rule) is calibrated on ``SPARSE_CALIB``
    training articles for each q of ``SPARSE_GRID``; the largest q whose validation accuracy stays within 1
    point of the dense model's is kept; at that q the eval split gives the accuracy and the measured MLP
    density, and one test sentence (batch 1, ``max_length`` tokens) the end-to-end speed-up of the sparse
    MLP (dense time / sparse time, median of ``SPARSE_REPS`` interleaved runs).
    """
    from torch.utils.data import DataLoader

    import peftkit as pk
    from peftkit.bench.demo import run_config
    from peftkit.bench.sparsity import compare, drop_sparsify, predict, sparse_predict
    from peftkit.train.build import build_data

    for row, res in zip(rows, results):
        if not getattr(row, "sparsity", False):
            continue
        run_cfg = run_config(cfg, row, False)
        data = build_data(run_cfg)
        model = pk.load_backbone(cfg.backbone, task="classification", num_labels=data.num_labels,
                                 **cfg.backbone_kwargs)
        model = pk.load_adapter(model, f"{run_cfg.out_dir}/adapter").eval()
        calib = [data.collate([data.train[i] for i in range(SPARSE_CALIB)])]
        val = DataLoader(data.val, batch_size=cfg.eval_batch_size, collate_fn=data.collate)
        dense, golds = predict(model, val)
        base = compare(dense, dense, golds)["acc"]
        best = 0.0
        for q in tqdm(SPARSE_GRID, desc=f"sparsity: {row.label}", leave=False):
            pk.sparsify(model, q, calib=calib)
            preds, _ = predict(model, val)
            drop_sparsify(model)
            if compare(preds, dense, golds)["acc"] >= base - 1.0:
                best = q
        split = getattr(data, cfg.eval_split)
        evals = DataLoader(split, batch_size=cfg.eval_batch_size, collate_fn=data.collate)
        pk.sparsify(model, best, calib=calib)
        preds, density = sparse_predict(model, evals)
        golds = [int(y) for batch in evals for y in batch["labels"]]
        res["sparse/q"], res["sparse/density"] = best, density
        res["sparse/accuracy"] = compare(preds, preds, golds)["acc"] / 100
        sentence = {k: v for k, v in data.collate([split[0]]).items() if k != "labels"}
        dense_model = pk.load_backbone(cfg.backbone, task="classification", num_labels=data.num_labels,
                                       **cfg.backbone_kwargs)
        dense_model = pk.load_adapter(dense_model, f"{run_cfg.out_dir}/adapter").eval()
        res["sparse/speedup"] = _speedup(dense_model, pk.sparse_mlp(model), sentence)
        tqdm.write(f"sparsity: {row.label}: q {best}, MLP density {density:.1f}%, "
                   f"speed-up {res['sparse/speedup']:.2f}x")


def _speedup(dense: Any, sparse: Any, inputs: dict[str, torch.Tensor]) -> float:
    """Dense time / sparse time of one forward, median of ``SPARSE_REPS`` interleaved runs."""
    from peftkit.bench.sparse_speed import interleaved

    with torch.no_grad():
        med = interleaved({"dense": lambda: dense(**inputs), "sparse": lambda: sparse(**inputs)}, SPARSE_REPS)
    return med["dense"] / med["sparse"]
