"""Run-directory rules (peftkit.train.rundir) and resume settings (peftkit.train.resume), unit by unit."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import toytask  # noqa: F401  (registers toy_tokens)
from test_loop import make_cfg

from peftkit.core.errors import ConfigError
from peftkit.train.config import dump_config
from peftkit.train.resume import RESUMABLE, flat_settings, resumed_config
from peftkit.train.rundir import (
    LOCK_NAME,
    RunLock,
    check_out_dir,
    clean_run_dir,
    clean_run_orphans,
    is_run_dir,
)


def test_is_run_dir(tmp_path: Path) -> None:
    assert not is_run_dir(tmp_path)
    (tmp_path / "config.yaml").write_text("name: another tool\n")
    assert not is_run_dir(tmp_path)
    (tmp_path / "config.yaml").write_text("[unclosed\n")
    assert not is_run_dir(tmp_path)
    (tmp_path / "config.yaml").write_text(dump_config(make_cfg(tmp_path)))
    assert is_run_dir(tmp_path)


def test_check_out_dir(tmp_path: Path) -> None:
    assert check_out_dir(str(tmp_path / "new")) == tmp_path / "new"  # absent: fine, and not created
    assert not (tmp_path / "new").exists()
    (tmp_path / "only_orphans").mkdir()
    (tmp_path / "only_orphans" / ".adapter.tmp-xyz").mkdir()
    (tmp_path / "only_orphans" / LOCK_NAME).write_text("")
    check_out_dir(str(tmp_path / "only_orphans"))  # counts as empty
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "a.txt").write_text("x")
    with pytest.raises(ConfigError, match=r"not a peftkit run \(it holds a\.txt\).*--overwrite"):
        check_out_dir(str(tmp_path / "mine"))
    check_out_dir(str(tmp_path / "mine"), overwrite=True)
    for bad, match in (("", "out_dir is empty"), ("  ", "out_dir is empty")):
        with pytest.raises(ConfigError, match=match):
            check_out_dir(bad)
    with pytest.raises(ConfigError, match="not a run directory"):
        check_out_dir(str(tmp_path / "mine"), resume=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "only_orphans"]  # the probe is gone


def test_lock_is_exclusive_and_names_the_holder(tmp_path: Path) -> None:
    with RunLock(tmp_path):
        assert (tmp_path / LOCK_NAME).read_text().strip().isdigit()
        with pytest.raises(ConfigError, match=r"in use by another peftkit run \(PID \d+\)"):
            RunLock(tmp_path).acquire()
    assert (tmp_path / LOCK_NAME).read_text() == ""
    RunLock(tmp_path).acquire().release()  # free again


def test_clean_only_what_a_run_writes(tmp_path: Path) -> None:
    for name in (
        "adapter/x",
        "checkpoints/step_1/y",
        "tb/z",
        "notes/keep",
        ".config.yaml.tmp-1",
        "checkpoints/.step_2.tmp-abc/w",
        ".adapter.old-42/v",
    ):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    (tmp_path / "metrics.json").write_text("{}")
    removed = clean_run_orphans(tmp_path)
    assert sorted(r.split("/")[-1] for r in removed) == [
        ".adapter.old-42",
        ".config.yaml.tmp-1",
        ".step_2.tmp-abc",
    ]
    assert clean_run_dir(tmp_path) == ["metrics.json", "adapter", "checkpoints", "tb"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes"]


def test_resume_settings(tmp_path: Path) -> None:
    saved = make_cfg(tmp_path / "run")
    same, changed = resumed_config(saved, make_cfg(tmp_path / "elsewhere"), str(tmp_path / "run"))
    assert changed == [] and same.out_dir == str(tmp_path / "run")
    given = make_cfg(tmp_path / "run", "train.max_steps=7", "train.log_every=1")
    new, changed = resumed_config(saved, given, str(tmp_path / "run"))
    assert changed == ["train.log_every", "train.max_steps"]
    assert new.train == dataclasses.replace(saved.train, max_steps=7, log_every=1)
    with pytest.raises(
        ConfigError, match=r"in train\.lr: 0\.001 -> 0\.01; train\.weight_decay: 0\.01 -> 0\.0"
    ):
        resumed_config(saved, make_cfg(tmp_path, "train.lr=0.01", "train.weight_decay=0"), "run")
    assert {k[len("train.") :] for k in flat_settings(saved) if k.startswith("train.")} >= set(RESUMABLE)
