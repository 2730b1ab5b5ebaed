"""The linear probe row of ``peftkit bench point_peft``: softmax regression on frozen encoder features.

Features: ``[cls; max over patch tokens]`` of the frozen pre-trained encoder (``PointTransformer.pooled``)
on the un-augmented clouds (FPS to n), at the CPU protocol of ``configs/point/kicad__linear.yaml``.
Classifier: ``softmax(W z + b)`` on standardised features, fitted to convergence with L-BFGS on

    L(W, b) = CE(W z + b, y) + lambda * ||W||^2,

lambda chosen on the validation split from a small grid; the test split is read once, with that lambda.
Deterministic (no augmentation, no sampling): every seed gives the same number, so one seed is run.
"""

from __future__ import annotations

from typing import Any

import torch

CONFIG = "configs/point/kicad__linear.yaml"


@torch.no_grad()
def features(
    model: torch.nn.Module, ds: Any, collate: Any, batch: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[N, 2d]`` pooled features and ``[N]`` labels of every example of ``ds``."""
    xs, ys = [], []
    for i in range(0, len(ds), batch):
        b = collate([ds[j] for j in range(i, min(len(ds), i + batch))])
        xs.append(model.pooled(model.forward_features(b["points"])))
        ys.append(b["labels"])
    return torch.cat(xs), torch.cat(ys)


def fit_softmax(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float) -> tuple[torch.Tensor, ...]:
    """``(W, b, mu, sd)`` of an L2-regularised softmax regression (L-BFGS) on standardised ``x``."""
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mu) / sd
    w = torch.zeros(x.shape[1], num_classes, requires_grad=True)
    b = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z @ w + b, y) + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach(), mu, sd


def accuracy(params: tuple[torch.Tensor, ...], x: torch.Tensor, y: torch.Tensor) -> float:
    w, b, mu, sd = params
    return float((((x - mu) / sd) @ w + b).argmax(1).eq(y).float().mean())


def probe(seed: int, threads: int, grid: tuple[float, ...]) -> dict[str, Any]:
    """The probe's row record (see the module docstring)."""
    from peftkit.core.registry import get_backbone, get_dataset
    from peftkit.train.config import load_config

    torch.set_num_threads(threads)
    cfg = load_config(CONFIG, [f"seed={seed}"])
    data = get_dataset(cfg.data.name)(backbone=cfg.backbone.name, seed=seed, **cfg.data.kwargs)
    model = get_backbone(cfg.backbone.name)(num_labels=data.num_labels, seed=seed, **cfg.backbone.kwargs)
    model.eval()
    collate = data.eval_collate
    xtr, ytr = features(model, data.train, collate)
    xva, yva = features(model, data.val, collate)
    val = {l2: accuracy(fit_softmax(xtr, ytr, data.num_labels, l2), xva, yva) for l2 in grid}
    best = max(grid, key=lambda l2: (val[l2], l2))  # ties: the stronger regulariser
    xte, yte = features(model, data.test, collate)
    test = accuracy(fit_softmax(xtr, ytr, data.num_labels, best), xte, yte)
    n_params = xtr.shape[1] * data.num_labels + data.num_labels
    return {
        "row": "linear_probe", "label": "linear probe (L-BFGS)", "seed": seed,
        "val_curve": [], "val_last": val[best], "val_best": val[best],
        "val_by_l2": {str(k): v for k, v in val.items()},
        "l2": best, "test": test, "test_macro_f1": None,
        "trainable_params": n_params, "total_params": None, "trainable_by_owner": {"probe": n_params},
        "head_params": n_params, "step_time_s": None, "peak_memory_bytes": None, "density": {},
        "epochs": None, "steps": None, "train_time_s": None,
        "command": f"peftkit bench point_peft rows=linear_probe seeds={seed}",
        "scale": "CPU, deterministic (no augmentation), fitted on train minus val",
    }
