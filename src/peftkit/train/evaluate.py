"""Forward, task loss and evaluation shared by the training loop, ``peftkit eval`` and the benchmarks.

Shapes: b batch, c classes (c = 1: regression, the single output is the prediction).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from peftkit import metrics as M
from peftkit.data.base import Batch


def logits_of(output: Any) -> torch.Tensor:
    """The class scores (b, c) of a model output: ``.logits``, ``["logits"]`` or the tensor itself."""
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, dict) and "logits" in output:
        return output["logits"]
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"cannot find logits in a model output of type {type(output).__name__}")


def task_loss(logits: torch.Tensor, labels: torch.Tensor, num_labels: int) -> torch.Tensor:
    """Cross-entropy (classification) or MSE on the single output (num_labels == 1, regression)."""
    if num_labels == 1:
        return F.mse_loss(logits.float().view(-1), labels.float().view(-1))
    return F.cross_entropy(logits.float(), labels.long())


def split_batch(batch: Batch, device: torch.device) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """(model inputs on ``device``, labels on ``device``)."""
    moved = {k: v.to(device, non_blocking=True) for k, v in batch.items() if isinstance(v, torch.Tensor)}
    labels = moved.pop("labels")
    return moved, labels


@torch.no_grad()
def predict(
    model: nn.Module,
    loader: Iterable[Batch],
    device: torch.device,
    num_labels: int,
    bf16: bool = False,
    progress: bool = True,
    desc: str = "eval",
) -> tuple[list[Any], list[Any], float]:
    """(predictions, gold labels, mean task loss) over ``loader`` in eval mode (training mode is restored)."""
    was_training = model.training
    model.eval()
    preds: list[Any] = []
    golds: list[Any] = []
    total, count = torch.zeros((), dtype=torch.float64), 0
    try:
        for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
            inputs, labels = split_batch(batch, device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = logits_of(model(**inputs))
            loss = task_loss(logits, labels, num_labels)
            total += loss.double().cpu() * labels.shape[0]
            count += labels.shape[0]
            out = logits.float().view(-1) if num_labels == 1 else logits.argmax(-1)
            preds.extend(out.cpu().tolist())
            golds.extend(labels.cpu().tolist())
    finally:
        model.train(was_training)
    return preds, golds, float(total / max(count, 1))


def evaluate(
    model: nn.Module,
    loader: Iterable[Batch],
    device: torch.device,
    num_labels: int,
    metric_names: Sequence[str],
    bf16: bool = False,
    progress: bool = True,
    desc: str = "eval",
) -> dict[str, float]:
    """``{metric: value, ..., "loss": mean task loss}`` of ``model`` on ``loader``."""
    preds, golds, loss = predict(model, loader, device, num_labels, bf16=bf16, progress=progress, desc=desc)
    out = M.compute(metric_names, preds, golds)
    out["loss"] = loss
    return out
