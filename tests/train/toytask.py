"""A synthetic token-classification task for the training tests (no tokenizer, no files, tiny_bert vocab).

Importing registers the dataset ``toy_tokens``. Each example is a random sequence of "noise" tokens in
[100, 1000) with the marker token ``10 + label`` planted a few times; the label is learnable from it.
Run as a script, this is ``peftkit`` with the dataset registered (used under torchrun by the tests).
"""

from __future__ import annotations

import sys

import torch

from peftkit.core.registry import _DATASETS, register_dataset
from peftkit.data.base import TaskData
from peftkit.data.text import PadCollate, TextDataset


def _examples(n: int, num_labels: int, regression: bool, gen: torch.Generator) -> TextDataset:
    feats = []
    for _ in range(n):
        t = int(torch.randint(6, 17, (), generator=gen))
        ids = torch.randint(100, 1000, (t,), generator=gen)
        label = int(torch.randint(0, num_labels, (), generator=gen))
        pos = torch.randperm(t - 1, generator=gen)[:3] + 1
        ids[pos] = 10 + label
        ids[0] = 2  # a "CLS" token
        y: float | int = float(label) / max(num_labels - 1, 1) if regression else label
        feats.append({"input_ids": ids.tolist(), "labels": y})
    return TextDataset(feats)


def toy_tokens(
    backbone: str = "tiny_bert",
    seed: int = 0,
    n_train: int = 48,
    n_val: int = 16,
    n_test: int = 16,
    num_labels: int = 3,
    regression: bool = False,
    data_seed: int = 0,
) -> TaskData:
    """Synthetic marker-token classification (or regression on label / (num_labels - 1))."""
    gen = torch.Generator().manual_seed(data_seed)
    train, val, test = (_examples(n, num_labels, regression, gen) for n in (n_train, n_val, n_test))
    return TaskData(
        train=train,
        val=val if n_val else None,
        test=test,
        num_labels=1 if regression else num_labels,
        collate=PadCollate(0, regression=regression),
        metrics=("pearson", "spearman") if regression else ("accuracy", "macro_f1"),
    )


if "toy_tokens" not in _DATASETS:
    register_dataset("toy_tokens", "synthetic marker tokens (tests)")(toy_tokens)


if __name__ == "__main__":
    from peftkit.cli import main

    sys.exit(main(sys.argv[1:]))
