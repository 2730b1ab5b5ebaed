"""Damaged, foreign or misplaced adapter checkpoints: ``peftkit eval`` answers one line and writes nothing;
``pk.load_adapter`` / ``pk.save_adapter`` raise CheckpointError with a one-line message and never replace
what is not theirs."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import peftkit as pk
from peftkit.core.errors import CheckpointError
from reliability.harness import Case, Workspace, check_exception, run_case, tree_hash


def _edit_config(edit: Callable[[dict[str, Any]], None]) -> Callable[[Workspace], list[str]]:
    """Edit the finished run's adapter_config.json, then ``peftkit eval`` it."""

    def argv(ws: Workspace) -> list[str]:
        path = ws.out / "adapter" / "adapter_config.json"
        cfg = json.loads(path.read_text())
        edit(cfg)
        path.write_text(json.dumps(cfg))
        return ["eval", str(ws.out), "--no-progress"]

    return argv


def _write_adapter_file(name: str, data: bytes | None) -> Callable[[Workspace], list[str]]:
    def argv(ws: Workspace) -> list[str]:
        path = ws.out / "adapter" / name
        if data is None:
            path.unlink()
        else:
            path.write_bytes(data)
        return ["eval", str(ws.out), "--no-progress"]

    return argv


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda cfg: cfg.__setitem__(key, value)


def _drop(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda cfg: cfg.pop(key)


EVAL = "eval"
CASES = [
    Case("eval-missing-dir", lambda ws: [EVAL, str(ws.root / "nope")], r"nope is not a run directory"),
    Case("eval-not-a-run", lambda ws: [EVAL, str(ws.root)], r"is not a run directory \(no config\.yaml\)"),
    Case("eval-bad-split", lambda ws: [EVAL, str(ws.out), "--split", "dev"], r"invalid choice: 'dev'", True),
    Case(
        "eval-unfinished-run",
        lambda ws: [EVAL, str(ws.out)] if shutil.rmtree(ws.out / "adapter") is None else [],
        r"has no adapter/: the run did not finish",
        earlier=True,
    ),
    Case("no-methods", _edit_config(_drop("methods")), r"adapter_config\.json has no 'methods'", True),
    Case("methods-string", _edit_config(_set("methods", "lora")), r"'methods' must be a list", True),
    Case(
        "methods-entry-string",
        _edit_config(_set("methods", ["lora"])),
        r"methods\[0\] must be a mapping",
        True,
    ),
    Case("methods-entry-no-config", _edit_config(_set("methods", [{"name": "lora"}])), r"methods\[0\]", True),
    Case(
        "methods-bad-value",
        _edit_config(_set("methods", [{"name": "lora", "config": {"rank": "abc"}}])),
        r"rank",
        earlier=True,
    ),
    Case(
        "methods-unknown-method",
        _edit_config(_set("methods", [{"name": "lorax", "config": {}}])),
        r"unknown method 'lorax'",
        earlier=True,
    ),
    Case("no-backbone", _edit_config(_drop("backbone")), r"adapter_config\.json has no 'backbone'", True),
    Case("backbone-not-text", _edit_config(_set("backbone", 5)), r"'backbone' must be", True),
    Case(
        "other-backbone",
        _edit_config(_set("backbone", "tiny_llama")),
        r"was made for backbone 'tiny_llama', this model is 'tiny_bert'",
        earlier=True,
    ),
    Case("wrong-format", _edit_config(_set("format", "peft")), r"is not a peftkit adapter checkpoint", True),
    Case(
        "config-not-json",
        _write_adapter_file("adapter_config.json", b'{"format": '),
        r"adapter_config\.json is not valid JSON",
        earlier=True,
    ),
    Case("config-not-object", _write_adapter_file("adapter_config.json", b"[1, 2]"), r"JSON object", True),
    Case(
        "weights-truncated",
        _write_adapter_file("adapter_model.safetensors", b"\x10\x00\x00"),
        r"adapter_model\.safetensors is corrupt",
        earlier=True,
    ),
    Case(
        "weights-missing",
        _write_adapter_file("adapter_model.safetensors", None),
        r"adapter_model\.safetensors not found",
        earlier=True,
    ),
]


@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_bad_checkpoint(case: Case, ws: Workspace, capfd: pytest.CaptureFixture[str]) -> None:
    run_case(case, ws, capfd)


@pytest.fixture
def lora_model() -> Any:
    return pk.apply(pk.load_backbone("tiny_bert", num_labels=2), [pk.LoRA(rank=2)])


def test_save_adapter_refuses_an_existing_file(tmp_path: Path, lora_model: Any) -> None:
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    with pytest.raises(CheckpointError) as info:
        pk.save_adapter(lora_model, target)
    check_exception(info.value, CheckpointError, r"notes\.txt is an existing file")
    assert target.read_text() == "mine"


def test_save_adapter_refuses_a_foreign_directory(tmp_path: Path, lora_model: Any) -> None:
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "thesis.tex").write_text("years of work")
    before = tree_hash(tmp_path)
    with pytest.raises(CheckpointError) as info:
        pk.save_adapter(lora_model, tmp_path / "home")
    check_exception(info.value, CheckpointError, r"home is a directory that is not a peftkit checkpoint")
    assert tree_hash(tmp_path) == before


def test_save_adapter_replaces_its_own_checkpoint(tmp_path: Path, lora_model: Any) -> None:
    pk.save_adapter(lora_model, tmp_path / "ad")
    pk.save_adapter(lora_model, tmp_path / "ad")  # a peftkit adapter directory is replaced atomically
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ad"]
