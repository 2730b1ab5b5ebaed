"""A killed run resumed from its checkpoint ends with the same adapter as an uninterrupted run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import toytask  # noqa: F401  (registers toy_tokens)
from test_loop import adapter, assert_same, make_cfg

from peftkit.core.errors import CheckpointError, ConfigError
from peftkit.train import checkpointing, loop


class Killed(Exception):
    pass


def _kill_after_checkpoint(monkeypatch: pytest.MonkeyPatch, at_step: int) -> None:
    """The run dies right after writing checkpoint ``step_<at_step>`` (as a kill -9 would leave it)."""
    save = checkpointing.save_checkpoint

    def save_then_die(*args: Any, **kwargs: Any) -> Path:
        path = save(*args, **kwargs)
        if path.name == f"step_{at_step}":
            raise Killed
        return path

    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)


@pytest.mark.parametrize(
    ("overrides", "kill_at"),
    [
        (("train.checkpoint_every=3",), 3),  # mid-epoch (4 steps per epoch)
        (("train.checkpoint_every=3",), 4),  # at an epoch end, after validation
        (("train.checkpoint_every=2", "train.grad_accum=2", "train.batch_size=4"), 2),
    ],
)
def test_resume_matches_uninterrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overrides: tuple[str, ...], kill_at: int
) -> None:
    # dropout stays on: the torch RNG stream must be restored too
    common = ("train.epochs=3", "train.keep_checkpoints=10", *overrides)
    straight = loop.run(make_cfg(tmp_path / "straight", *common), progress=False)

    with monkeypatch.context() as m:
        _kill_after_checkpoint(m, kill_at)
        with pytest.raises(Killed):
            loop.run(make_cfg(tmp_path / "killed", *common), progress=False)
    assert not (tmp_path / "killed" / "adapter").exists()
    resumed = loop.run(
        make_cfg(tmp_path / "elsewhere", *common), resume=str(tmp_path / "killed"), progress=False
    )

    assert_same(adapter(tmp_path / "straight"), adapter(tmp_path / "killed"))
    for key in ("eval/accuracy", "val/accuracy/best", "val/best_step", "steps"):
        assert resumed[key] == straight[key], key
    assert not (tmp_path / "elsewhere").exists()  # the resumed run stays in its RUN_DIR
    steps = [
        json.loads(ln)["step"] for ln in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    ]
    ref = [
        json.loads(ln)["step"] for ln in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == ref  # no record written twice


def test_checkpoint_contents_load_weights_only(tmp_path: Path) -> None:
    loop.run(make_cfg(tmp_path / "r", "train.max_steps=3", "train.checkpoint_every=2"), progress=False)
    ck = tmp_path / "r" / "checkpoints" / "step_2"
    assert sorted(p.name for p in ck.iterdir()) == [
        "adapter",
        "optimizer.pt",
        "rng_rank0.pt",
        "scheduler.pt",
        "trainer_state.json",
    ]
    for name in ("optimizer.pt", "rng_rank0.pt", "scheduler.pt"):
        torch.load(ck / name, weights_only=True)
    assert json.loads((ck / "trainer_state.json").read_text())["step"] == 2
    assert not [
        p for p in (tmp_path / "r" / "checkpoints").iterdir() if p.name.startswith(".")
    ]  # no temp dirs


def test_resume_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a run directory"):
        loop.run(make_cfg(tmp_path / "a"), resume=str(tmp_path / "nothing"), progress=False)
    loop.run(make_cfg(tmp_path / "b", "train.max_steps=2", "train.epochs=1"), progress=False)
    shutil.rmtree(tmp_path / "b" / "checkpoints", ignore_errors=True)
    with pytest.raises(CheckpointError, match="no checkpoint under"):
        loop.run(make_cfg(tmp_path / "b"), resume=str(tmp_path / "b"), progress=False)
    loop.run(make_cfg(tmp_path / "c", "train.max_steps=3", "train.checkpoint_every=2"), progress=False)
    (tmp_path / "c" / "checkpoints" / "step_2" / "optimizer.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="optimizer.pt cannot be read"):
        loop.run(make_cfg(tmp_path / "c", "train.max_steps=3"), resume=str(tmp_path / "c"), progress=False)
