"""Your own text classification data: CSV, TSV or JSONL files with a text column and a label column.

    data: {name: text_file, train_file: my.csv, text_column: review, label_column: stars}

Splits: give ``train_file`` alone (stratified train / val / test cut by ``val_fraction`` / ``test_fraction``
with ``split_seed``, independent of the run seed), or add ``test_file`` (val is cut from train) and
``val_file``. Labels map to ids in sorted order (numerically when every label is an integer), or in the
order of an explicit ``label_names`` list (a label matches a name by its text, or is its index).
Every problem in a file is a DataError naming the file and, where it applies, the line.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from peftkit.core.errors import ConfigError, DataError
from peftkit.core.registry import register_dataset
from peftkit.data.base import TaskData
from peftkit.data.text import few_shot, stratified_split, text_task

_FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}
Row = tuple[int, dict[str, Any]]  # (line number, fields)


def _rows_delimited(path: Path, delimiter: str) -> tuple[list[str], list[Row]]:
    """CSV: RFC 4180 quoting, strictly (an unclosed quote is an error, never rows merged into one).
    TSV: no quoting at all; every line is one row and quote characters are text."""
    with path.open(newline="", encoding="utf-8-sig") as fh:
        if delimiter == "\t":
            reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE, strict=True)
        else:
            reader = csv.reader(fh, delimiter=delimiter, strict=True)
        try:
            header = next(reader)
        except StopIteration:
            raise DataError(f"{path} is empty") from None
        except csv.Error as e:
            raise DataError(f"{path}:1: malformed header ({e})") from None
        rows: list[Row] = []
        try:
            for row in reader:
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) != len(header):
                    raise DataError(
                        f"{path}:{reader.line_num}: expected {len(header)} fields "
                        f"({', '.join(header)}), got {len(row)}"
                    )
                rows.append((reader.line_num, dict(zip(header, row))))
        except csv.Error as e:
            hint = "; a quoted field is not closed" if "end of data" in str(e) else ""
            raise DataError(f"{path}:{reader.line_num}: malformed line ({e}{hint})") from None
    return header, rows


def _rows_jsonl(path: Path) -> tuple[list[str], list[Row]]:
    rows: list[Row] = []
    keys: dict[str, None] = {}
    with path.open(encoding="utf-8-sig") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: not valid JSON ({e.msg}); one JSON object per line") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}")
            keys.update(dict.fromkeys(obj))
            rows.append((n, obj))
    return list(keys), rows


def read_rows(path: str | Path, fmt: str = "auto") -> tuple[list[str], list[Row]]:
    """(column names, rows) of a CSV / TSV / JSONL file."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file {p} not found")
    if fmt == "auto":
        fmt = _FORMATS.get(p.suffix.lower(), "")
        if not fmt:
            raise DataError(
                f"cannot tell the format of {p} from its extension; set data.format to csv, tsv or jsonl"
            )
    if fmt not in ("csv", "tsv", "jsonl"):
        raise ConfigError(f"data.format must be auto, csv, tsv or jsonl, got '{fmt}'")
    try:
        header, rows = _rows_jsonl(p) if fmt == "jsonl" else _rows_delimited(p, "," if fmt == "csv" else "\t")
    except UnicodeDecodeError as e:
        raise DataError(f"{p} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not rows:
        raise DataError(f"{p} has no data rows")
    return header, rows


def _column(path: str, header: list[str], rows: list[Row], name: str) -> list[Any]:
    if name not in header:
        raise DataError(f"{path} has no column '{name}'; its columns are: {', '.join(header)}")
    out = []
    for n, r in rows:
        if name not in r or r[name] is None or (isinstance(r[name], str) and r[name] == ""):
            raise DataError(f"{path}:{n}: empty or missing '{name}'")
        out.append(r[name])
    return out


def _is_int(s: str) -> bool:
    try:
        int(s)
        return True
    except ValueError:
        return False


def label_mapping(values: list[str], label_names: list[str] | None) -> tuple[list[str], dict[str, int]]:
    """(class names, label text -> id): sorted-stable, or the order of ``label_names``."""
    if label_names is not None:
        names = [str(n) for n in label_names]
        if len(set(names)) != len(names):
            raise ConfigError(f"data.label_names has duplicates: {names}")
        mapping = {n: i for i, n in enumerate(names)}
        if not set(values) <= set(mapping) and all(_is_int(v) and 0 <= int(v) < len(names) for v in values):
            mapping = {str(i): i for i in range(len(names))}
        return names, mapping
    uniq = set(values)
    names = sorted(uniq, key=int) if all(_is_int(v) for v in uniq) else sorted(uniq)
    return names, {n: i for i, n in enumerate(names)}


@register_dataset("text_file", "your CSV / TSV / JSONL files: a text (+ pair) column and a label column")
def text_file(
    backbone: str = "minilm",
    seed: int = 0,
    train_file: str = "",
    val_file: str | None = None,
    test_file: str | None = None,
    text_column: str = "text",
    label_column: str = "label",
    text_pair_column: str | None = None,
    label_names: list[str] | None = None,
    num_labels: int | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    max_length: int = 128,
    train_fraction: float = 1.0,
    max_train_examples: int | None = None,
    format: str = "auto",
) -> TaskData:
    """Classification data from your files (see the module docstring for the split and label rules)."""
    if not train_file:
        raise ConfigError("data.train_file is required for text_file (a .csv, .tsv or .jsonl file)")
    files = {"train": train_file, "val": val_file, "test": test_file}
    raw: dict[str, tuple[list[str], list[str], list[str] | None, list[int]]] = {}
    for split, f in files.items():
        if f is None:
            continue
        header, rows = read_rows(f, format)
        texts = [str(t) for t in _column(f, header, rows, text_column)]
        pairs = [str(t) for t in _column(f, header, rows, text_pair_column)] if text_pair_column else None
        labels = [str(y) for y in _column(f, header, rows, label_column)]
        raw[split] = (texts, labels, pairs, [n for n, _ in rows])
    names, mapping = label_mapping([y for v in raw.values() for y in v[1]], label_names)
    ids: dict[str, list[int]] = {}
    for split, (_, labels, _, lines) in raw.items():
        for y, n in zip(labels, lines):
            if y not in mapping:
                raise DataError(f"{files[split]}:{n}: label '{y}' is not one of data.label_names {names}")
        ids[split] = [mapping[y] for y in labels]
    if len(names) < 2:
        raise DataError(f"column '{label_column}' has a single class {names}; classification needs >= 2")
    if num_labels is not None and num_labels != len(names):
        raise DataError(
            f"column '{label_column}' has {len(names)} classes ({', '.join(names[:10])}) "
            f"but data.num_labels is {num_labels}"
        )
    for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= frac < 1.0:
            raise ConfigError(f"data.{name} must be in [0, 1), got {frac}")
    if val_fraction + test_fraction >= 1.0:
        raise ConfigError("data.val_fraction + data.test_fraction must be < 1")

    def take(split: str, idx: list[int]) -> tuple[list[str], list[int], list[str] | None]:
        t, _, p, _ = raw[split]
        return [t[i] for i in idx], [ids[split][i] for i in idx], None if p is None else [p[i] for i in idx]

    everything = list(range(len(ids["train"])))
    cut = {
        "val": val_fraction if val_file is None else 0.0,
        "test": test_fraction if test_file is None else 0.0,
    }
    train_idx, val_idx, test_idx = (
        stratified_split(ids["train"], (1.0, cut["val"], cut["test"]), split_seed)
        if cut["val"] or cut["test"]
        else (everything, [], [])
    )
    train_idx = few_shot(train_idx, ids["train"], train_fraction, max_train_examples, seed)
    splits = {"train": take("train", train_idx)}
    splits["val"] = take("val", list(range(len(ids["val"])))) if val_file else take("train", val_idx)
    splits["test"] = take("test", list(range(len(ids["test"])))) if test_file else take("train", test_idx)
    if not splits["test"][0]:
        raise DataError(f"{train_file}: no test examples; give data.test_file or a larger data.test_fraction")
    return text_task(backbone, splits, len(names), names, max_length)
