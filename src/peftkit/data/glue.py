"""GLUE (Wang et al., ICLR 2019, arXiv 1804.07461): eight tasks, from the original TSV files or ``datasets``.

On disk, the layout written by GLUE's ``download_glue_data.py``: ``<data_dir>/{train,dev}.tsv`` for one task
(``dev_matched.tsv`` for MNLI), tab-separated without quoting; CoLA's train / dev files have no header and
four columns (source, label, original label, sentence), the others have a header row. Without ``data_dir``
the task is read through ``datasets.load_dataset("nyu-mll/glue", task)`` (needs the package and a network).

GLUE's test labels are hidden, so peftkit reports on the dev set: test = dev, and val is a stratified
``val_fraction`` of train (cut with ``split_seed``, not the run seed). Label ids follow the ``datasets``
GLUE release so a model trained from either source means the same thing. Metrics are GLUE's per task;
STS-B is regression (``num_labels`` 1, MSE loss, Pearson / Spearman).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftkit.core.errors import ConfigError, DataError
from peftkit.core.registry import register_dataset
from peftkit.data.base import TaskData
from peftkit.data.text import few_shot, stratified_split, text_task


@dataclass(frozen=True)
class GlueTask:
    text: str | int  # column name, or index for header-less files (CoLA)
    pair: str | int | None
    label: str | int
    labels: tuple[str, ...]  # label text in the TSV, in id order; () = regression
    names: tuple[str, ...]  # human-readable class names
    metrics: tuple[str, ...]
    hf_text: str  # field names in the ``datasets`` release
    hf_pair: str | None
    header: bool = True
    dev: str = "dev.tsv"


TASKS: dict[str, GlueTask] = {
    "cola": GlueTask(
        3,
        None,
        1,
        ("0", "1"),
        ("unacceptable", "acceptable"),
        ("matthews_corr", "accuracy"),
        "sentence",
        None,
        header=False,
    ),
    "sst2": GlueTask(
        "sentence", None, "label", ("0", "1"), ("negative", "positive"), ("accuracy",), "sentence", None
    ),
    "mrpc": GlueTask(
        "#1 String",
        "#2 String",
        "Quality",
        ("0", "1"),
        ("not_equivalent", "equivalent"),
        ("f1", "accuracy"),
        "sentence1",
        "sentence2",
    ),
    "qqp": GlueTask(
        "question1",
        "question2",
        "is_duplicate",
        ("0", "1"),
        ("not_duplicate", "duplicate"),
        ("f1", "accuracy"),
        "question1",
        "question2",
    ),
    "stsb": GlueTask(
        "sentence1", "sentence2", "score", (), ("score",), ("pearson", "spearman"), "sentence1", "sentence2"
    ),
    "mnli": GlueTask(
        "sentence1",
        "sentence2",
        "gold_label",
        ("entailment", "neutral", "contradiction"),
        ("entailment", "neutral", "contradiction"),
        ("accuracy",),
        "premise",
        "hypothesis",
        dev="dev_matched.tsv",
    ),
    "qnli": GlueTask(
        "question",
        "sentence",
        "label",
        ("entailment", "not_entailment"),
        ("entailment", "not_entailment"),
        ("accuracy",),
        "question",
        "sentence",
    ),
    "rte": GlueTask(
        "sentence1",
        "sentence2",
        "label",
        ("entailment", "not_entailment"),
        ("entailment", "not_entailment"),
        ("accuracy",),
        "sentence1",
        "sentence2",
    ),
}

Split = tuple[list[str], list[Any], list[str] | None]


def read_glue_tsv(path: Path, task: GlueTask, skip_malformed: bool = False) -> Split:
    """(texts, label ids or float scores, pairs or None) of one GLUE TSV file."""
    if not path.is_file():
        raise DataError(
            f"{path} not found: data_dir must hold GLUE's {{train,{task.dev.removesuffix('.tsv')}}}.tsv"
        )
    texts: list[str] = []
    labels: list[Any] = []
    pairs: list[str] | None = [] if task.pair is not None else None
    with path.open(newline="", encoding="utf-8-sig") as fh:  # MRPC starts with a BOM
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None) if task.header else None
        if task.header and header is None:
            raise DataError(f"{path} is empty")
        cols = {name: i for i, name in enumerate(header or [])}

        def col(key: str | int) -> int:
            if isinstance(key, int):
                return key
            if key not in cols:
                raise DataError(f"{path} has no column '{key}'; its columns are: {', '.join(cols)}")
            return cols[key]

        ti, yi = col(task.text), col(task.label)
        pi = col(task.pair) if task.pair is not None else None
        width = len(header) if header else 4
        for row in reader:
            if not row:
                continue
            bad = len(row) != width
            y = None if bad else row[yi].strip()
            if not bad and task.labels and y not in task.labels:
                bad = True
            if not bad and not task.labels:
                try:
                    y = float(y)  # type: ignore[arg-type]
                except ValueError:
                    bad = True
            if bad:
                if skip_malformed:
                    continue
                raise DataError(
                    f"{path}:{reader.line_num}: malformed line (expected {width} tab-separated fields "
                    f"with a label in {list(task.labels) or 'float'}); data.skip_malformed=true skips them"
                )
            texts.append(row[ti])
            labels.append(task.labels.index(y) if task.labels else y)
            if pairs is not None and pi is not None:
                pairs.append(row[pi])
    if not texts:
        raise DataError(f"{path} has no examples")
    return texts, labels, pairs


def _from_datasets(task_name: str, task: GlueTask) -> dict[str, Split]:
    try:
        import datasets  # type: ignore[import-not-found]
    except ImportError:
        raise DataError(
            f"glue '{task_name}': give data.data_dir (a folder with GLUE's TSV files) or install the "
            "'datasets' package (pip install datasets; needs a network)"
        ) from None
    try:
        ds = datasets.load_dataset("nyu-mll/glue", task_name)
    except Exception as e:  # the hub is unreachable, or the cache is incomplete
        raise DataError(
            f"glue '{task_name}': datasets.load_dataset failed ({type(e).__name__}: "
            f"{' '.join(str(e).split())[:200]}); give data.data_dir instead"
        ) from None
    out: dict[str, Split] = {}
    for ours, theirs in (
        ("train", "train"),
        ("test", "validation_matched" if task_name == "mnli" else "validation"),
    ):
        rows = ds[theirs]
        texts = [str(t) for t in rows[task.hf_text]]
        pairs = [str(t) for t in rows[task.hf_pair]] if task.hf_pair else None
        labels = [float(y) for y in rows["label"]] if not task.labels else [int(y) for y in rows["label"]]
        out[ours] = (texts, labels, pairs)
    return out


@register_dataset(
    "glue", "GLUE tasks (cola sst2 mrpc qqp stsb mnli qnli rte) from GLUE's TSV files or datasets"
)
def glue(
    backbone: str = "minilm",
    seed: int = 0,
    task: str = "sst2",
    data_dir: str | None = None,
    max_length: int = 128,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    train_fraction: float = 1.0,
    max_train_examples: int | None = None,
    skip_malformed: bool = False,
) -> TaskData:
    """One GLUE task; test = the dev set, val = a stratified slice of train."""
    if task not in TASKS:
        raise ConfigError(f"unknown GLUE task '{task}'; choose one of: {', '.join(TASKS)}")
    spec = TASKS[task]
    if data_dir is not None:
        root = Path(data_dir)
        if not root.is_dir():
            raise DataError(
                f"data.data_dir {root} is not a folder (expected GLUE's glue_data/<TASK>/ layout)"
            )
        raw = {
            "train": read_glue_tsv(root / "train.tsv", spec, skip_malformed),
            "test": read_glue_tsv(root / spec.dev, spec, skip_malformed),
        }
    else:
        raw = _from_datasets(task, spec)
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
    texts, labels, pairs = raw["train"]
    strata = labels if spec.labels else [0] * len(labels)  # regression: a plain random slice
    train_idx, val_idx = stratified_split(strata, (1.0, val_fraction), split_seed)
    train_idx = few_shot(train_idx, strata, train_fraction, max_train_examples, seed)

    def take(idx: list[int]) -> Split:
        return (
            [texts[i] for i in idx],
            [labels[i] for i in idx],
            None if pairs is None else [pairs[i] for i in idx],
        )

    splits = {"train": take(train_idx), "val": take(val_idx), "test": raw["test"]}
    num_labels = len(spec.labels) or 1
    return text_task(backbone, splits, num_labels, spec.names, max_length, metrics=spec.metrics)
