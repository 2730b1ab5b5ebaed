"""The Python API on bad arguments: peftkit's own error classes with a one-line message that says what is
wrong (never a bare TypeError / KeyError, never a silent fallback)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import peftkit as pk
from peftkit.core.errors import CheckpointError, ConfigError, PeftkitError
from reliability.harness import check_exception


def _bert(**kw: Any) -> Any:
    return pk.load_backbone("tiny_bert", **kw)


def _lora_bert() -> Any:
    return pk.apply(_bert(num_labels=2), [pk.LoRA(rank=2)])


def _saved(tmp: Path) -> Path:
    pk.save_adapter(_lora_bert(), tmp / "ad")
    return tmp / "ad"


CASES: list[Any] = [
    ("num-labels-text", lambda t: _bert(num_labels="5"), ConfigError, r"num_labels must be int .*got '5'"),
    ("num-labels-zero", lambda t: _bert(num_labels=0), ConfigError, r"num_labels must be >= 1 .*got 0"),
    ("num-labels-negative", lambda t: _bert(num_labels=-1), ConfigError, r"num_labels must be >= 1"),
    ("num-labels-fraction", lambda t: _bert(num_labels=2.5), ConfigError, r"num_labels must be int"),
    ("num-labels-bool", lambda t: _bert(num_labels=True), ConfigError, r"num_labels must be int"),
    ("unknown-kwarg-hf", lambda t: _bert(colour="red"), ConfigError, r"unknown key\(s\) \['colour'\]"),
    (
        "unknown-kwarg-point",
        lambda t: pk.load_backbone("tiny_point", colour="red"),
        ConfigError,
        r"unknown .*\['colour'\]",
    ),
    pytest.param(
        "unknown-kwarg-pretrained",
        lambda t: pk.load_backbone("minilm", num_labels=2, hidden_sz=64),
        ConfigError,
        r"unknown key\(s\) \['hidden_sz'\] for the pretrained model at .*not BertConfig fields",
        marks=pytest.mark.slow,
    ),
    ("unknown-backbone", lambda t: pk.load_backbone("nope"), ConfigError, r"unknown backbone 'nope'; choose"),
    ("apply-empty", lambda t: pk.apply(_bert(num_labels=2), []), ConfigError, r"at least one method"),
    ("apply-string", lambda t: pk.apply(_bert(num_labels=2), "lora"), ConfigError, r"str is not the config"),
    ("apply-object", lambda t: pk.apply(_bert(num_labels=2), [object()]), ConfigError, r"not the config of"),
    ("apply-twice", lambda t: pk.apply(_lora_bert(), [pk.LoRA()]), PeftkitError, r"already"),
    ("tokenizer-unknown", lambda t: pk.load_tokenizer("nope"), ConfigError, r"no tokenizer for backbone"),
    (
        "tokenizer-point",
        lambda t: pk.load_tokenizer("tiny_point"),
        ConfigError,
        r"no tokenizer for backbone 'tiny_point'",
    ),
    ("lora-rank-text", lambda t: pk.LoRA(rank="8"), ConfigError, r"LoRA\.rank must be a positive int"),
    ("lora-rank-zero", lambda t: pk.LoRA(rank=0), ConfigError, r"LoRA\.rank must be a positive int"),
    ("lora-dropout", lambda t: pk.LoRA(dropout=1.5), ConfigError, r"LoRA\.dropout must be in \[0, 1\)"),
    ("save-unapplied", lambda t: pk.save_adapter(_bert(num_labels=2), t / "x"), CheckpointError, r"no peft"),
    (
        "load-missing",
        lambda t: pk.load_adapter(_bert(num_labels=2), t / "none"),
        CheckpointError,
        r"adapter_config\.json not found",
    ),
    (
        "load-other-backbone",
        lambda t: pk.load_adapter(pk.load_backbone("tiny_llama", num_labels=2), _saved(t)),
        CheckpointError,
        r"made for backbone 'tiny_bert', this model is 'tiny_llama'",
    ),
    (
        "load-other-stack",
        lambda t: pk.load_adapter(pk.apply(_bert(num_labels=2), [pk.IA3()]), _saved(t)),
        CheckpointError,
        r"holds methods \['lora'\], the model has \['ia3'\] applied",
    ),
    (
        "load-config-missing",
        lambda t: __import__("peftkit.train.config", fromlist=["load_config"]).load_config(t / "no.yaml"),
        ConfigError,
        r"config file .*no\.yaml not found",
    ),
]


def _param(case: Any) -> Any:
    if hasattr(case, "marks"):  # a pytest.param (a named tuple itself)
        name, *rest = case.values
        return pytest.param(*rest, id=name, marks=case.marks)
    return pytest.param(*case[1:], id=case[0])


@pytest.mark.parametrize(("call", "cls", "match"), [_param(c) for c in CASES])
def test_bad_api_call(
    tmp_path: Path, call: Callable[[Path], Any], cls: type[PeftkitError], match: str
) -> None:
    with pytest.raises(PeftkitError) as info:
        call(tmp_path)
    check_exception(info.value, cls, match)


def test_roberta_takes_its_own_config_keys() -> None:
    """A key the builder also sets (vocab_size) is an override, not a 'multiple values' TypeError."""
    model = pk.load_backbone("tiny_roberta", num_labels=3, vocab_size=600)
    assert model.config.vocab_size == 600 and model.config.num_labels == 3
