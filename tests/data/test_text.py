"""Text data: splits, padding, user files (CSV / TSV / JSONL) with their errors, and BBC News (slow)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch

from peftkit.core.errors import ConfigError, DataError
from peftkit.data import text
from peftkit.data.text import PadCollate, stratified_split, stratified_subset
from peftkit.data.text_file import label_mapping, text_file


class FakeTokenizer:
    """Whitespace 'tokenizer' (id = 100 + word length) with BERT's [CLS] a [SEP] b [SEP] layout."""

    pad_token_id = 0
    model_input_names = ["input_ids", "token_type_ids", "attention_mask"]

    def __call__(
        self, texts: list[str], pairs: list[str] | None = None, truncation: bool = True, max_length: int = 128
    ) -> dict[str, list[list[int]]]:
        ids, types = [], []
        for i, t in enumerate(texts):
            a = [2] + [100 + len(w) for w in t.split()] + [3]
            b = [] if pairs is None else [100 + len(w) for w in pairs[i].split()] + [3]
            ids.append((a + b)[:max_length])
            types.append(([0] * len(a) + [1] * len(b))[:max_length])
        return {"input_ids": ids, "token_type_ids": types}


@pytest.fixture
def fake_tok(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(text, "_tokenizer", lambda backbone: FakeTokenizer())


# ---- splits and batching -------------------------------------------------------------------------------


def test_stratified_split_sizes_and_determinism() -> None:
    labels = ["a"] * 50 + ["b"] * 30 + ["c"] * 7
    train, val, test = stratified_split(labels, (0.7, 0.1, 0.2), seed=5)
    assert sorted(train + val + test) == list(range(len(labels)))  # a partition
    for cls, n in (("a", 50), ("b", 30), ("c", 7)):
        assert sum(labels[i] == cls for i in test) == round(0.2 * n)
        assert sum(labels[i] == cls for i in val) == round(0.1 * n)
    assert stratified_split(labels, (0.7, 0.1, 0.2), seed=5) == [train, val, test]
    assert stratified_split(labels, (0.7, 0.1, 0.2), seed=6) != [train, val, test]


def test_stratified_subset_is_proportional() -> None:
    labels = [0] * 60 + [1] * 30 + [2] * 10
    sub = stratified_subset(labels, 10, seed=0)
    assert len(sub) == 10 and Counter(labels[i] for i in sub) == {0: 6, 1: 3, 2: 1}
    assert stratified_subset(labels, 7, seed=0) != stratified_subset(labels, 7, seed=1)
    assert len(stratified_subset(labels, 7, seed=0)) == 7


def test_pad_collate() -> None:
    batch = PadCollate(pad_id=9)([{"input_ids": [1, 2, 3], "labels": 1}, {"input_ids": [4], "labels": 0}])
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 9, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].dtype == torch.long and "token_type_ids" not in batch
    pairs = PadCollate(0, regression=True)([{"input_ids": [1, 2], "token_type_ids": [0, 1], "labels": 0.5}])
    assert pairs["token_type_ids"].tolist() == [[0, 1]] and pairs["labels"].dtype == torch.float32


# ---- user files ------------------------------------------------------------------------------------------


def _csv(path: Path, rows: list[str]) -> str:
    path.write_text("\n".join(rows) + "\n")
    return str(path)


def _labelled(n: int, labels: tuple[str, ...] = ("neg", "pos")) -> list[str]:
    return ["text,label"] + [f'"words number {i}, here",{labels[i % len(labels)]}' for i in range(n)]


def test_csv_fraction_split(tmp_path: Path, fake_tok: None) -> None:
    data = text_file(train_file=_csv(tmp_path / "d.csv", _labelled(40)), max_length=16)
    assert data.num_labels == 2 and tuple(data.label_names) == ("neg", "pos")
    assert (len(data.train), len(data.val), len(data.test)) == (28, 4, 8)  # 70 / 10 / 20, stratified
    batch = data.collate([data.train[0], data.train[1]])
    assert batch["input_ids"].shape[0] == 2 and set(batch) == {"input_ids", "attention_mask", "labels"}
    # the split follows split_seed, not the run seed; the few-shot subset follows the run seed
    again = text_file(train_file=str(tmp_path / "d.csv"), seed=9)
    assert [e["labels"] for e in again.test] == [e["labels"] for e in data.test]
    few = text_file(train_file=str(tmp_path / "d.csv"), max_train_examples=6)
    assert len(few.train) == 6 and Counter(e["labels"] for e in few.train) == {0: 3, 1: 3}


def test_tsv_and_jsonl_with_pairs_and_files(tmp_path: Path, fake_tok: None) -> None:
    tsv = tmp_path / "train.tsv"
    tsv.write_text("q\tctx\ty\n" + "".join(f"what {i}\tsome context here\t{i % 3}\n" for i in range(12)))
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps({"q": f"who {i}", "ctx": "a b", "y": i % 3}) + "\n" for i in range(6)))
    data = text_file(
        train_file=str(tsv),
        test_file=str(test),
        text_column="q",
        text_pair_column="ctx",
        label_column="y",
        val_fraction=0.25,
    )
    assert (len(data.train), len(data.val), len(data.test)) == (9, 3, 6)
    assert tuple(data.label_names) == ("0", "1", "2")
    ex = data.test[0]
    assert ex["token_type_ids"].count(1) == 3 and ex["labels"] == 0  # "a b [SEP]" is segment 1


def test_label_mapping_rules() -> None:
    assert label_mapping(["10", "9", "2"], None) == (["2", "9", "10"], {"2": 0, "9": 1, "10": 2})  # numeric
    assert label_mapping(["b", "a", "b"], None)[0] == ["a", "b"]
    assert label_mapping(["pos", "neg"], ["pos", "neg"])[1] == {"pos": 0, "neg": 1}  # explicit order
    assert label_mapping(["1", "0"], ["neg", "pos"])[1] == {"0": 0, "1": 1}  # indices


@pytest.mark.parametrize(
    ("setup", "kwargs", "message"),
    [
        (lambda d: None, {"train_file": "missing.csv"}, r"data file .*missing.csv not found"),
        (lambda d: (d / "e.csv").write_text(""), {"train_file": "e.csv"}, r"e.csv is empty"),
        (
            lambda d: (d / "h.csv").write_text("text,label\n"),
            {"train_file": "h.csv"},
            r"h.csv has no data rows",
        ),
        (
            lambda d: _csv(d / "c.csv", _labelled(8)),
            {"train_file": "c.csv", "label_column": "topic"},
            r"c.csv has no column 'topic'; its columns are: text, label",
        ),
        (
            lambda d: _csv(d / "m.csv", [*_labelled(4), "just one field"]),
            {"train_file": "m.csv"},
            r"m.csv:6: expected 2 fields \(text, label\), got 1",
        ),
        (
            lambda d: (d / "j.jsonl").write_text('{"text": "a", "label": 1}\n{"text": "b",\n'),
            {"train_file": "j.jsonl"},
            r"j.jsonl:2: not valid JSON",
        ),
        (
            lambda d: (d / "l.jsonl").write_text('{"text": "a", "label": 1}\n[1, 2]\n'),
            {"train_file": "l.jsonl"},
            r"l.jsonl:2: expected a JSON object, got list",
        ),
        (
            lambda d: _csv(d / "n.csv", _labelled(9, ("a", "b", "c"))),
            {"train_file": "n.csv", "num_labels": 2},
            r"column 'label' has 3 classes \(a, b, c\) but data.num_labels is 2",
        ),
        (
            lambda d: _csv(d / "k.csv", _labelled(6)),
            {"train_file": "k.csv", "label_names": ["neg", "other"]},
            r"k.csv:3: label 'pos' is not one of data.label_names",
        ),
        (lambda d: _csv(d / "s.csv", _labelled(6, ("x",))), {"train_file": "s.csv"}, r"a single class"),
        (
            lambda d: _csv(d / "v.csv", ["text,label", "hello,", "b,1"]),
            {"train_file": "v.csv"},
            r"v.csv:2: empty or missing 'label'",
        ),
        (lambda d: (d / "x.txt").write_text("a\n"), {"train_file": "x.txt"}, r"cannot tell the format"),
    ],
)
def test_text_file_errors(
    tmp_path: Path,
    fake_tok: None,
    monkeypatch: pytest.MonkeyPatch,
    setup: Any,
    kwargs: dict[str, Any],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    setup(tmp_path)
    with pytest.raises(DataError, match=message):
        text_file(**kwargs)


def test_text_file_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="train_file is required"):
        text_file()
    with pytest.raises(ConfigError, match="val_fraction"):
        text_file(train_file=_csv(tmp_path / "a.csv", _labelled(10)), val_fraction=1.5)


# ---- the real tokenizer and BBC News (installed packages) -----------------------------------------------


@pytest.mark.slow
def test_bbc_split_file_is_the_documented_split() -> None:
    docs = text.bbc_documents()
    stored = json.loads(text.BBC_SPLIT_FILE.read_text())
    assert stored == text.make_bbc_split(list(docs))  # rebuilt == committed
    sizes = {k: len(stored[k]) for k in ("train", "val", "test")}
    assert sizes == {"train": 1558, "val": 223, "test": 444} and sum(sizes.values()) == len(docs) == 2225
    assert not set(stored["train"]) & set(stored["test"]) and not set(stored["val"]) & set(stored["test"])
    per_class = Counter(i.split("/")[0] for i in stored["test"])
    total = Counter(i.split("/")[0] for i in docs)
    assert all(per_class[c] == round(0.2 * total[c]) for c in total)
    assert all("text" not in k for k in stored)  # ids only


@pytest.mark.slow
def test_bbc_news_with_the_minilm_tokenizer() -> None:
    data = text.bbc_news(backbone="tiny_bert", max_length=32, max_train_examples=25, seed=3)
    assert data.num_labels == 5 and len(data.train) == 25 and len(data.test) == 444 and len(data.val) == 223
    assert Counter(e["labels"] for e in data.train).most_common(1)[0][1] <= 6  # stratified
    batch = data.collate([data.test[i] for i in range(4)])
    assert batch["input_ids"].shape == (4, 32) and batch["input_ids"][:, 0].tolist() == [101] * 4  # [CLS]
    assert int(batch["input_ids"].max()) < 30522


def test_tsv_has_no_quoting_and_csv_quotes_are_strict(tmp_path: Path) -> None:
    from peftkit.data.text_file import read_rows

    lines = [f'"{i} inch screen\t{i % 2}' if i % 3 == 0 else f"plain {i}\t{i % 2}" for i in range(30)]
    (tmp_path / "a.tsv").write_text("text\tlabel\n" + "\n".join(lines) + "\n")
    _, rows = read_rows(tmp_path / "a.tsv")
    assert [r["text"] for _, r in rows] == [ln.split("\t")[0] for ln in lines]  # 30 in, 30 out, quotes kept
    (tmp_path / "b.csv").write_text('text,label\n"a ""quoted"" word",1\n"open quote,0\nnext,1\n')
    with pytest.raises(DataError, match=r"b\.csv:\d+: malformed line .*a quoted field is not closed"):
        read_rows(tmp_path / "b.csv")
    (tmp_path / "c.csv").write_text('text,label\n"a ""quoted"" word, with comma",1\n')
    assert read_rows(tmp_path / "c.csv")[1][0][1]["text"] == 'a "quoted" word, with comma'
