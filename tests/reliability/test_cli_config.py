"""Bad configs and overrides on ``peftkit train``: one line, exit 2, the out_dir (often holding an earlier
run) byte-for-byte unchanged."""

from __future__ import annotations

import pytest

from reliability.harness import Case, Workspace, run_case


def _train(*overrides: str, **changes: object) -> object:
    """argv of ``peftkit train`` on the base config with section ``changes`` and ``overrides``."""
    return lambda ws: ["train", ws.config(**changes), *overrides, "--no-progress"]


CASES = [
    # numbers
    Case("lr-nan", _train("train.lr=nan"), r"train\.lr must be float \(a finite number\), got 'nan'"),
    Case("lr-yaml-nan", _train("train.lr=.nan"), r"train\.lr must be float \(a finite number\)"),
    Case("lr-inf", _train("train.lr=inf"), r"train\.lr must be float \(a finite number\)"),
    Case("lr-zero", _train("train.lr=0"), r"train\.lr must be > 0"),
    Case("lr-negative", _train("train.lr=-1e-3"), r"train\.lr must be > 0"),
    Case("lr-text", _train("train.lr=fast"), r"train\.lr must be float \(a number\), got 'fast'"),
    Case("weight-decay-negative", _train("train.weight_decay=-1"), r"train\.weight_decay must be >= 0"),
    Case("grad-clip-zero", _train("train.grad_clip=0"), r"train\.grad_clip must be > 0 or null"),
    Case("warmup-ratio", _train("train.warmup_ratio=1.5"), r"train\.warmup_ratio must be in \[0, 1\)"),
    Case("batch-size-zero", _train("train.batch_size=0"), r"train\.batch_size must be >= 1"),
    Case("epochs-text", _train("train.epochs=abc"), r"train\.epochs must be int"),
    Case("epochs-fraction", _train("train.epochs=1.5"), r"train\.epochs must be int"),
    Case("max-steps-zero", _train("train.max_steps=0"), r"train\.max_steps must be >= 1 or null"),
    Case("num-workers-negative", _train("train.num_workers=-1"), r"train\.num_workers must be >= 0"),
    Case("bf16-not-bool", _train("train.bf16=maybe"), r"train\.bf16 must be bool"),
    Case(
        "schedule", _train("train.schedule=step"), r"train\.schedule must be one of linear, cosine, constant"
    ),
    Case("device", _train("train.device=tpu"), r"train\.device must be auto, cpu, cuda or cuda:N"),
    Case("eval-split", _train("train.eval_split=dev"), r"train\.eval_split must be one of test, val"),
    Case("seed-text", _train("seed=abc"), r"seed must be int"),
    # keys
    Case(
        "unknown-train-key", _train("train.lrr=1"), r"unknown key\(s\) \['lrr'\] in train; valid keys: epochs"
    ),
    Case(
        "unknown-top-key", _train("trian.lr=1"), r"unknown key\(s\) \['trian'\] in the run config; valid keys"
    ),
    Case(
        "unknown-data-key", _train("data.n_trian=3"), r"unknown key\(s\) \['n_trian'\] in data 'toy_tokens'"
    ),
    Case("data-value-type", _train("data.n_train=many"), r"data\.n_train must be int"),
    Case(
        "num-labels-given", _train("backbone.num_labels=3"), r"backbone\.num_labels is filled from the data"
    ),
    Case("unknown-backbone", _train("backbone.name=nope"), r"unknown backbone 'nope'"),
    Case("unknown-dataset", _train("data.name=nope"), r"unknown dataset 'nope'"),
    Case("unknown-task", _train("backbone.task=bogus"), r"unknown task 'bogus'"),
    # methods
    Case("method-alpha-text", _train("method.alpha=abc"), r"methods\.0\.alpha \(lora\) must be float"),
    Case("method-dropout-text", _train("method.dropout=abc"), r"methods\.0\.dropout \(lora\) must be float"),
    Case("method-rank-text", _train("method.rank=abc"), r"methods\.0\.rank \(lora\) must be int"),
    Case("method-rank-zero", _train("method.rank=0"), r"rank must be a positive int"),
    Case("method-dropout-range", _train("method.dropout=1.5"), r"dropout must be in \[0, 1\)"),
    Case("method-targets-type", _train("method.targets=5"), r"methods\.0\.targets \(lora\) must be a list"),
    Case("method-unknown-key", _train("method.rnak=8"), r"unknown key\(s\) \['rnak'\] in methods\[0\]"),
    Case("method-unknown-name", _train("method.name=lorax"), r"unknown method 'lorax'; choose one of"),
    Case("methods-empty", _train("methods=[]"), r"methods must be a non-empty list"),
    Case("methods-index", _train("methods.3.rank=1"), r"index '3' out of range"),
    Case("method-not-a-mapping", _train(methods=[5]), r"methods\[0\] must be a name or a mapping"),
    # override syntax and files
    Case("train-not-a-mapping", _train("train=5"), r"train must be a mapping of keys"),
    Case("train-a-list", _train(train=[1, 2]), r"train must be a mapping of keys"),
    Case("override-no-equals", _train("train.lr"), r"override 'train\.lr' is not key=value"),
    Case("override-bad-yaml", _train("data.n_train=[1"), r"cannot parse value"),
    Case("override-into-scalar", _train("seed.x=1"), r"'seed\.x': 'seed' is not a mapping"),
    Case(
        "config-missing",
        lambda ws: ["train", str(ws.root / "nope.yaml")],
        r"config file .*nope\.yaml not found",
    ),
    Case(
        "config-bad-yaml",
        lambda ws: ["train", str(ws.write("bad.yaml", "train: {lr: [1,\n"))],
        r"bad\.yaml is not valid YAML",
    ),
    Case(
        "config-not-mapping",
        lambda ws: ["train", str(ws.write("list.yaml", "- a\n- b\n"))],
        r"a run config is a YAML mapping, got list",
    ),
    Case(
        "config-binary",
        lambda ws: ["train", str(ws.write("model.bin", b"\x80\x03\xff\xfe binary"))],
        r"model\.bin is not a UTF-8 text file",
    ),
    Case("config-is-a-directory", lambda ws: ["train", str(ws.root)], r"is a directory; give the YAML file"),
    # the command line itself
    Case("unknown-command", lambda ws: ["frobnicate"], r"invalid choice: 'frobnicate'"),
    Case("unknown-option", _train("--frobnicate"), r"unrecognized arguments: --frobnicate"),
    Case("train-without-config", lambda ws: ["train"], r"peftkit train needs a CONFIG"),
    Case("unknown-bench", lambda ws: ["bench", "nope"], r"unknown bench 'nope'; choose one of"),
    Case("unknown-data-prep", lambda ws: ["data", "nope"], r"unknown data preparation 'nope'"),
    # bad input found only once the model / data are built: an earlier run in out_dir stays intact
    Case(
        "vocab-too-small",
        _train("backbone.vocab_size=500"),
        r"token id \d+ >= the backbone's vocab_size 500",
        earlier=True,
    ),
    Case(
        "point-data-on-text-backbone",
        _train(data={"name": "synthetic_shapes", "train_size": 4, "test_size": 2}, methods=["full"]),
        r"backbone 'tiny_bert' with methods \[full\] cannot take a batch of data 'synthetic_shapes'",
        earlier=True,
    ),
    Case(
        "text-data-on-point-backbone",
        _train("backbone.name=tiny_point", methods=["full"]),
        r"cannot take a batch of data 'toy_tokens'",
        earlier=True,
    ),
    Case(
        "lora-on-point-backbone-text-data",
        _train("backbone.name=tiny_point"),
        r"backbone 'tiny_point' with methods \[lora\] cannot take a batch of data 'toy_tokens'",
        earlier=True,
    ),
    Case(
        "unknown-backbone-kwarg",
        _train("backbone.hidden_sz=64"),
        r"unknown key\(s\) \['hidden_sz'\] for backbone 'tiny_bert': not BertConfig fields",
        earlier=True,
    ),
    Case(
        "roberta-vocab-kwarg",
        _train("backbone.name=tiny_roberta", "backbone.vocab_size=500"),
        r"token id \d+ >= the backbone's vocab_size 500",
        earlier=True,
    ),
]


@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_bad_config(case: Case, ws: Workspace, capfd: pytest.CaptureFixture[str]) -> None:
    run_case(case, ws, capfd)
