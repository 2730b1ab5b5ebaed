"""GLUE readers on small files written in the real on-disk formats of ``glue_data/<TASK>/``."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
from test_text import fake_tok  # noqa: F401  (fixture)

from peftkit.core.errors import ConfigError, DataError
from peftkit.data.glue import TASKS, glue

MNLI_TRAIN = (
    "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
    "sentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label"
)
MNLI_DEV = (
    "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
    "sentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label"
)


def _rows(task: str, i: int) -> str:
    """One line of ``task``'s train/dev TSV with label index i % num_labels (made-up sentences)."""
    s1, s2 = f"the cat sat {i} times .", f'a dog ran "far" {i}'
    if task == "cola":
        return f"src{i}\t{i % 2}\t{'' if i % 2 else '*'}\t{s1}"
    if task == "sst2":
        return f"{s1} \t{i % 2}"
    if task == "mrpc":
        return f"{i % 2}\t{1000 + i}\t{2000 + i}\t{s1}\t{s2}"
    if task == "qqp":
        return f"{i}\t{10 + i}\t{20 + i}\t{s1}?\t{s2}?\t{i % 2}"
    if task == "stsb":
        return f"{i}\tmain-captions\tMSRvid\t2012test\t{i:04d}\tnone\tnone\t{s1}\t{s2}\t{(i % 6) * 1.0:.3f}"
    lab = TASKS[task].labels[i % len(TASKS[task].labels)]
    if task == "mnli":
        return f"{i}\t{i}\t{i}n\tfiction\t( a )\t( b )\t(ROOT a)\t(ROOT b)\t{s1}\t{s2}\t{lab}\t{lab}"
    return f"{i}\t{s1}\t{s2}\t{lab}"  # qnli, rte


HEADERS = {
    "cola": None,
    "sst2": "sentence\tlabel",
    "mrpc": "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String",
    "qqp": "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
    "stsb": "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
    "mnli": MNLI_TRAIN,
    "qnli": "index\tquestion\tsentence\tlabel",
    "rte": "index\tsentence1\tsentence2\tlabel",
}


def write_task(root: Path, task: str, n_train: int = 20, n_dev: int = 6) -> Path:
    d = root / task.upper()
    d.mkdir(parents=True)
    for name, n in (("train.tsv", n_train), (TASKS[task].dev, n_dev)):
        lines = [_rows(task, i) for i in range(n)]
        if task == "mnli" and name != "train.tsv":
            lines = [ln.rsplit("\t", 1)[0] + "\tx\tx\tx\tx\t" + ln.rsplit("\t", 1)[1] for ln in lines]
            header = MNLI_DEV
        else:
            header = HEADERS[task]
        (d / name).write_text("\n".join(([header] if header else []) + lines) + "\n", encoding="utf-8")
    return d


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_task_reads_its_real_format(tmp_path: Path, fake_tok: None, task: str) -> None:  # noqa: F811
    d = write_task(tmp_path, task)
    data = glue(task=task, data_dir=str(d), val_fraction=0.2)
    spec = TASKS[task]
    n_labels = len(spec.labels) or 1
    assert data.num_labels == n_labels and tuple(data.metrics) == spec.metrics
    assert len(data.test) == 6 and len(data.train) + len(data.val) == 20 and len(data.val) >= 3
    expected = [float(i % 6) for i in range(6)] if task == "stsb" else [i % n_labels for i in range(6)]
    assert [e["labels"] for e in data.test] == expected  # label ids in file order
    has_pair = spec.pair is not None
    assert ("token_type_ids" in data.test[0]) == has_pair


def test_main_metric_per_task() -> None:
    assert TASKS["cola"].metrics[0] == "matthews_corr" and TASKS["mrpc"].metrics[0] == "f1"
    assert TASKS["stsb"].metrics == ("pearson", "spearman") and TASKS["mnli"].dev == "dev_matched.tsv"


def test_malformed_lines(tmp_path: Path, fake_tok: None) -> None:  # noqa: F811
    d = write_task(tmp_path, "qqp")
    with (d / "train.tsv").open("a") as fh:
        fh.write("99\tonly three\tfields\n")
        fh.write(f"{_rows('qqp', 1).rsplit(chr(9), 1)[0]}\tmaybe\n")  # label not 0/1
    with pytest.raises(DataError, match=r"train.tsv:22: malformed line .*skip_malformed"):
        glue(task="qqp", data_dir=str(d))
    data = glue(task="qqp", data_dir=str(d), skip_malformed=True, val_fraction=0.0)
    assert len(data.train) == 20


def test_errors(tmp_path: Path, fake_tok: None, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    with pytest.raises(ConfigError, match="unknown GLUE task 'sst'; choose one of: cola, sst2"):
        glue(task="sst")
    with pytest.raises(DataError, match="is not a folder"):
        glue(task="rte", data_dir=str(tmp_path / "nope"))
    (tmp_path / "RTE").mkdir()
    with pytest.raises(DataError, match=r"train.tsv not found"):
        glue(task="rte", data_dir=str(tmp_path / "RTE"))
    d = write_task(tmp_path, "sst2")
    (d / "dev.tsv").write_text("sentence\tlabel\n")
    with pytest.raises(DataError, match="dev.tsv has no examples"):
        glue(task="sst2", data_dir=str(d))
    d = write_task(tmp_path / "x", "rte")
    (d / "train.tsv").write_text("index\tpremise\thypothesis\tlabel\n0\ta\tb\tentailment\n")
    with pytest.raises(DataError, match="has no column 'sentence1'; its columns are: index, premise"):
        glue(task="rte", data_dir=str(d))
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed
    with pytest.raises(DataError, match="give data.data_dir"):
        glue(task="rte")


def test_through_the_datasets_package(fake_tok: None, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    calls = []

    def load_dataset(path: str, name: str) -> dict[str, dict[str, list[object]]]:
        calls.append((path, name))
        split = {
            "premise": [f"p {i}" for i in range(10)],
            "hypothesis": ["h h"] * 10,
            "label": [i % 3 for i in range(10)],
        }
        return {"train": split, "validation_matched": {k: v[:4] for k, v in split.items()}}

    fake = types.ModuleType("datasets")
    fake.load_dataset = load_dataset  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "datasets", fake)
    data = glue(task="mnli", val_fraction=0.0)
    assert calls == [("nyu-mll/glue", "mnli")]
    assert len(data.train) == 10 and [e["labels"] for e in data.test] == [0, 1, 2, 0]
