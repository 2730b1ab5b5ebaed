"""What every dataset builder returns: the splits, the label space, and how to batch them.

A builder is registered with ``@register_dataset(name)`` and called as
``builder(backbone=<backbone name>, seed=<int>, **data_config_fields)``; it returns a ``TaskData``.
A batch from ``collate`` is a dict of model keyword inputs plus ``"labels"``; the training loop calls
``model(**inputs)`` and takes ``.logits`` (or the tensor itself) as the class scores.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

Batch = dict[str, torch.Tensor]


@dataclass
class TaskData:
    """Splits and batching of one task.

    Attributes:
        train / val / test: map-style datasets of examples (whatever ``collate`` understands).
        num_labels: number of classes (the head's output size).
        collate: list of examples -> batch dict (model inputs + ``labels``), used for training.
        eval_collate: the same for evaluation when it differs (e.g. no augmentation); defaults to ``collate``.
        metrics: names of the metrics to report (see ``peftkit.metrics``), the first is the main one.
        label_names: human-readable class names.
        pad_key: the input key holding the attention mask (for density metrics with padding masked), if any.
    """

    train: Dataset[Any]
    val: Dataset[Any] | None
    test: Dataset[Any]
    num_labels: int
    collate: Callable[[list[Any]], Batch]
    eval_collate: Callable[[list[Any]], Batch] | None = None
    metrics: Sequence[str] = ("accuracy", "macro_f1")
    label_names: Sequence[str] = ()
    pad_key: str | None = "attention_mask"
