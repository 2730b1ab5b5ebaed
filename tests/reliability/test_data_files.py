"""Bad data files through ``peftkit train`` (text_file, glue) and the readers' API: one line each, nothing
written; and the TSV promise: quote characters are data, rows in = examples out."""

from __future__ import annotations

from pathlib import Path

import pytest

from peftkit.core.errors import DataError
from peftkit.data.squad import read_squad
from peftkit.data.text_file import text_file
from reliability.harness import Case, Workspace, check_exception, run_case

GOOD = "text,label\n" + "".join(f"review number {i},{'pos' if i % 2 else 'neg'}\n" for i in range(20))


def _text_file(name: str, content: str | bytes | None, *overrides: str, **data: object) -> object:
    """argv of a run on ``text_file`` reading ``name`` (written with ``content`` unless None)."""

    def argv(ws: Workspace) -> list[str]:
        path = ws.root / name
        if content is not None:
            ws.write(name, content)
        spec = {"name": "text_file", "train_file": str(path), **data}
        return ["train", ws.config(data=spec), *overrides, "--no-progress"]

    return argv


def _glue(task: str, files: dict[str, str], **data: object) -> object:
    def argv(ws: Workspace) -> list[str]:
        for name, text in files.items():
            ws.write(f"glue/{name}", text)
        spec = {"name": "glue", "task": task, "data_dir": str(ws.root / "glue"), **data}
        return ["train", ws.config(data=spec), "--no-progress"]

    return argv


SST2_TRAIN = "sentence\tlabel\n" + "".join(f"a fine film {i}\t{i % 2}\n" for i in range(12))

CASES = [
    Case("file-missing", _text_file("none.csv", None), r"data file .*none\.csv not found"),
    Case("file-empty", _text_file("e.csv", ""), r"e\.csv is empty"),
    Case("header-only", _text_file("h.csv", "text,label\n"), r"h\.csv has no data rows"),
    Case(
        "no-text-column",
        _text_file("c.csv", GOOD, text_column="review"),
        r"has no column 'review'; its columns are: text, label",
    ),
    Case("no-label-column", _text_file("c.csv", GOOD, label_column="stars"), r"has no column 'stars'"),
    Case(
        "tsv-field-count",
        _text_file("t.tsv", "text\tlabel\nfine\tpos\nbad\tneg\textra\n"),
        r"t\.tsv:3: expected 2 fields \(text, label\), got 3",
    ),
    Case(
        "csv-unclosed-quote",
        _text_file("q.csv", 'text,label\n"great film,pos\nok,neg\n'),
        r"q\.csv:\d+: malformed line .*a quoted field is not closed",
    ),
    Case(
        "jsonl-bad-line",
        _text_file("j.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "lab\n'),
        r"j\.jsonl:2: not valid JSON",
    ),
    Case(
        "jsonl-not-object",
        _text_file("k.jsonl", '{"text": "a", "label": 1}\n[1, 2]\n'),
        r"k\.jsonl:2: expected a JSON object, got list",
    ),
    Case("not-utf8", _text_file("l.csv", b"text,label\n\xff\xfe bad,1\nok,0\n"), r"l\.csv is not UTF-8 text"),
    Case(
        "empty-label",
        _text_file("m.csv", "text,label\nfine,\nok,neg\n"),
        r"m\.csv:2: empty or missing 'label'",
    ),
    Case(
        "label-not-in-names",
        _text_file("n.csv", GOOD, label_names=["pos", "neutral"]),
        r"label 'neg' is not one of data\.label_names",
    ),
    Case("single-class", _text_file("o.csv", "text,label\na,x\nb,x\nc,x\n"), r"has a single class"),
    Case(
        "num-labels-mismatch",
        _text_file("p.csv", GOOD, num_labels=3),
        r"has 2 classes \(neg, pos\) but data\.num_labels is 3",
    ),
    Case("unknown-extension", _text_file("r.xml", GOOD), r"cannot tell the format of .*r\.xml"),
    Case(
        "bad-format", _text_file("s.csv", GOOD, format="xml"), r"data\.format must be auto, csv, tsv or jsonl"
    ),
    Case(
        "val-fraction", _text_file("u.csv", GOOD, val_fraction=1.5), r"data\.val_fraction must be in \[0, 1\)"
    ),
    Case(
        "fractions-sum",
        _text_file("v.csv", GOOD, val_fraction=0.5, test_fraction=0.5),
        r"val_fraction \+ data\.test_fraction must be < 1",
    ),
    Case(
        "no-train-file",
        lambda ws: ["train", ws.config(data={"name": "text_file"})],
        r"data\.train_file is required",
    ),
    Case(
        "test-file-missing",
        _text_file("w.csv", GOOD, test_file="/nonexistent/test.csv"),
        r"data file /nonexistent/test\.csv not found",
    ),
    Case(
        "label-names-not-list",
        _text_file("x.csv", GOOD, label_names="neg,pos"),
        r"data\.label_names must be a list",
    ),
    Case("glue-unknown-task", _glue("sst3", {}), r"unknown GLUE task 'sst3'; choose one of"),
    Case("glue-missing-dir", _glue("sst2", {}, data_dir="/nonexistent/glue"), r"/nonexistent/glue"),
    Case(
        "glue-bad-label",
        _glue("sst2", {"SST-2/train.tsv": SST2_TRAIN + "odd\t7\n", "SST-2/dev.tsv": SST2_TRAIN}),
        r"train\.tsv",
    ),
]


@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_bad_data_file(case: Case, ws: Workspace, capfd: pytest.CaptureFixture[str]) -> None:
    run_case(case, ws, capfd)


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        ("missing.json", None, r"SQuAD file .*missing\.json not found"),
        ("bad.json", '{"data": [', r"bad\.json is not valid JSON"),
        ("shape.json", '{"data": [{"title": "t"}]}', r"has no 'paragraphs' \(not SQuAD v1\.1 format\)"),
        ("empty.json", '{"data": []}', r"holds no questions"),
    ],
)
def test_bad_squad_file(tmp_path: Path, name: str, text: str | None, match: str) -> None:
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    with pytest.raises(DataError) as info:
        read_squad(path)
    check_exception(info.value, DataError, match)


def test_tsv_quotes_are_data(tmp_path: Path) -> None:
    """60 reviews, some with a lone or paired double quote: 60 examples, texts byte-for-byte."""
    quoted = ['a 12" screen', 'he said "meh', '"quoted" praise', "fine"]
    texts = [f"review {i}: {quoted[i % 4]}" for i in range(60)]
    lines = "".join(f"{t}\t{i % 2}\n" for i, t in enumerate(texts))
    train = tmp_path / "train.tsv"
    train.write_text("text\tlabel\n" + lines)
    test = tmp_path / "test.tsv"
    test.write_text("text\tlabel\nok\t0\nfine\t1\n")
    data = text_file("tiny_bert", train_file=str(train), test_file=str(test), val_fraction=0.0)
    assert len(data.train) == 60
    from peftkit.data.text_file import read_rows

    _, rows = read_rows(train)
    assert [r["text"] for _, r in rows] == texts
