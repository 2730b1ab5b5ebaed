"""Run directories: nothing the user owns is lost, a failing run leaves an earlier one intact, one run per
directory at a time, resume tells the truth, orphans and torn logs of a killed run are cleaned up."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from peftkit import cli
from peftkit.train import checkpointing
from peftkit.train.rundir import LOCK_NAME, RunLock
from reliability.harness import Case, Workspace, check_one_line, run_case, tree_hash
from reliability.readonly import read_only


def _train(ws: Workspace, *overrides: str, **changes: object) -> list[str]:
    return ["train", ws.config(**changes), *overrides, "--no-progress"]


def _resume(ws: Workspace, *overrides: str, **changes: object) -> list[str]:
    return [*_train(ws, *overrides, **changes), "--resume", str(ws.out)]


def _user_folder(ws: Workspace) -> list[str]:
    ws.write("run/checkpoints/mine.ckpt", b"user data")
    ws.write("run/notes.txt", "mine")
    return _train(ws)


def _damage(ws: Workspace, name: str, data: bytes | None) -> list[str]:
    """Truncate / replace / remove a file of the newest checkpoint (``""``: all checkpoints), then resume."""
    newest = checkpointing.list_checkpoints(ws.out)[-1][1] / name
    if not name:
        shutil.rmtree(ws.out / "checkpoints")
    elif data is None:
        newest.unlink()
    else:
        newest.write_bytes(data)
    return _resume(ws)


class _Payload:
    """Unpickling this would create ``marker``: the file must be refused before any of it runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def _code_in_optimizer(ws: Workspace) -> list[str]:
    newest = checkpointing.list_checkpoints(ws.out)[-1][1]
    torch.save({"state": _Payload(ws.root / "pwned")}, newest / "optimizer.pt")
    return _resume(ws)


def _held(ws: Workspace, argv: list[str]) -> list[str]:
    """Lock the out_dir from this process (another open file: flock conflicts like another process)."""
    lock = RunLock(ws.out).acquire()
    ws.__dict__.setdefault("_locks", []).append(lock)
    return argv


CASES = [
    Case("out-dir-empty", lambda ws: _train(ws, "out_dir="), r"out_dir is empty"),
    Case("out-dir-empty-yaml", lambda ws: _train(ws, out_dir=""), r"out_dir is empty"),
    Case(
        "out-dir-is-file",
        lambda ws: _train(ws, f"out_dir={ws.write('f.txt', 'x')}"),
        r"out_dir .*f\.txt is an existing file, not a directory",
    ),
    Case(
        "out-dir-under-file",
        lambda ws: _train(ws, f"out_dir={ws.write('g.txt', 'x')}/run"),
        r"g\.txt is a file, not a directory",
    ),
    Case(
        "out-dir-user-folder",
        _user_folder,
        r"is not empty and is not a peftkit run \(it holds checkpoints, notes\.txt\).*pass --overwrite",
    ),
    Case(
        "out-dir-foreign-yaml",
        lambda ws: _train(ws) if ws.write("run/config.yaml", "name: my other tool\n") else [],
        r"is not empty and is not a peftkit run \(it holds config\.yaml\)",
    ),
    Case("resume-missing", _resume, r"--resume .*run: not a run directory \(no config\.yaml\)"),
    Case(
        "resume-changed-lr",
        lambda ws: _resume(ws, "train.lr=0.1"),
        r"differs from the run's config\.yaml in train\.lr: 0\.0005 -> 0\.1; only train\.\{epochs, max_steps",
        earlier=True,
    ),
    Case(
        "resume-changed-method",
        lambda ws: _resume(ws, "method.rank=8"),
        r"differs from the run's config\.yaml in methods\.0\.rank: 4 -> 8",
        earlier=True,
    ),
    Case(
        "resume-changed-seed-and-data",
        lambda ws: _resume(ws, "seed=1", "data.n_train=24"),
        r"in data\.n_train: 16 -> 24; seed: 0 -> 1",
        earlier=True,
    ),
    Case(
        "resume-no-checkpoint",
        lambda ws: _damage(ws, "", None),
        r"no checkpoint under .*checkpoints: nothing to resume",
        earlier=True,
    ),
    Case(
        "resume-corrupt-optimizer",
        lambda ws: _damage(ws, "optimizer.pt", b"not a checkpoint"),
        r"optimizer\.pt cannot be read",
        earlier=True,
    ),
    Case(
        "resume-code-in-optimizer",
        _code_in_optimizer,
        r"optimizer\.pt cannot be read: it holds more than tensors and plain values and is refused",
        earlier=True,
    ),
    Case(
        "resume-truncated-state",
        lambda ws: _damage(ws, "trainer_state.json", b'{"step": 1, "ep'),
        r"trainer_state\.json cannot be read .*the checkpoint is corrupt",
        earlier=True,
    ),
    Case(
        "resume-missing-rng",
        lambda ws: _damage(ws, "rng_rank0.pt", None),
        r"rng_rank0\.pt not found: the checkpoint is incomplete",
        earlier=True,
    ),
    Case(
        "resume-corrupt-adapter",
        lambda ws: _damage(ws, "adapter/adapter_model.safetensors", b"\x00" * 10),
        r"adapter_model\.safetensors is corrupt",
        earlier=True,
    ),
    Case(
        "train-while-locked",
        lambda ws: _held(ws, _train(ws)),
        rf"run is in use by another peftkit run \(PID {os.getpid()}\)",
        earlier=True,
    ),
    Case(
        "resume-while-locked",
        lambda ws: _held(ws, _resume(ws)),
        rf"in use by another peftkit run \(PID {os.getpid()}\)",
        earlier=True,
    ),
]


@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_bad_run_dir(case: Case, ws: Workspace, capfd: pytest.CaptureFixture[str]) -> None:
    try:
        run_case(case, ws, capfd)
        assert not (ws.root / "pwned").exists()  # no code ran from a planted file
    finally:
        for lock in ws.__dict__.get("_locks", []):
            lock.release()


@pytest.mark.parametrize("command", ["train", "resume", "eval"])
def test_read_only_out_dir(command: str, ws: Workspace, capfd: pytest.CaptureFixture[str]) -> None:
    ws.with_earlier_run()
    argv = {
        "train": _train(ws, "train.max_steps=1"),
        "resume": _resume(ws),
        "eval": ["eval", str(ws.out), "--no-progress"],
    }[command]
    with read_only(ws.out):
        capfd.readouterr()
        before = tree_hash(ws.root)
        code = cli.main(argv)
        err = capfd.readouterr().err
        check_one_line(code, err, r"is not writable \((read-only file system|permission denied)", before,
                       tree_hash(ws.root))


def test_concurrent_run_is_refused(ws: Workspace, capfd: pytest.CaptureFixture[str]) -> None:
    """A second process holds the run's lock (as a running ``peftkit train`` does): this run exits 2 naming
    its PID and touches nothing."""
    ws.with_earlier_run()
    code = (
        "import sys, time; from pathlib import Path; from peftkit.train.rundir import RunLock; "
        "RunLock(Path(sys.argv[1])).acquire(); print('locked', flush=True); time.sleep(120)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(ws.out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        argv = _train(ws)
        capfd.readouterr()
        before = tree_hash(ws.root)
        rc = cli.main(argv)
        line = check_one_line(rc, capfd.readouterr().err, rf"PID {holder.pid}\)", before, tree_hash(ws.root))
        assert "wait for it to finish or choose another out_dir" in line
    finally:
        holder.kill()
        holder.wait()
    assert cli.main(_train(ws, "train.max_steps=1")) == 0  # the lock goes with its holder
    assert (ws.out / LOCK_NAME).read_text() == ""  # free again, and empty when free


def test_failing_run_keeps_earlier_checkpoints(
    ws: Workspace, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Disk full while writing the second checkpoint: one line, the first checkpoint intact, no temporary
    directory left, and ``--resume`` finishes the run."""
    real_save = checkpointing.torch.save
    calls = {"n": 0}

    def save(obj: Any, path: Any, *args: Any, **kwargs: Any) -> None:
        if "step_2" in str(path):
            calls["n"] += 1
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_save(obj, path, *args, **kwargs)

    argv = _train(ws, "train.max_steps=3", "train.epochs=2")
    with monkeypatch.context() as m:
        m.setattr(checkpointing.torch, "save", save)
        rc = cli.main(argv)
    err = capfd.readouterr().err
    assert calls["n"] == 1
    check_one_line(rc, err, r"no space left on the device: .*step_2.*--resume RUN_DIR", "", "")
    ckpts = ws.out / "checkpoints"
    assert [p.name for p in ckpts.iterdir()] == ["step_1"]  # no .step_2.tmp-* left behind
    checkpointing._load(ckpts / "step_1" / "optimizer.pt")
    assert cli.main([*argv, "--resume", str(ws.out)]) == 0
    assert json.loads((ws.out / "metrics.json").read_text())["steps"] == 3


def test_resume_applies_resumable_keys_and_rewrites_config(ws: Workspace) -> None:
    ws.with_earlier_run()
    assert cli.main(_resume(ws, "train.max_steps=3", "train.log_every=1")) == 0
    saved = yaml.safe_load((ws.out / "config.yaml").read_text())
    assert saved["train"]["max_steps"] == 3 and saved["train"]["log_every"] == 1
    assert json.loads((ws.out / "metrics.json").read_text())["steps"] == 3


def test_resume_without_config_uses_the_runs_own(ws: Workspace, capfd: pytest.CaptureFixture[str]) -> None:
    ws.with_earlier_run()
    assert cli.main(["train", "--resume", str(ws.out), "train.max_steps=3", "--no-progress"]) == 0
    assert yaml.safe_load((ws.out / "config.yaml").read_text())["train"]["max_steps"] == 3
    assert cli.main(["train", "--resume", str(ws.out), "train.lr=1"]) == 2
    assert "differs from the run's config.yaml in train.lr" in capfd.readouterr().err


def test_orphans_cleaned_user_files_kept(ws: Workspace) -> None:
    """A killed run's temporary / parked names go at the next start; what the user put there stays."""
    ws.with_earlier_run()
    orphans = [
        ".config.yaml.tmp-123",
        ".adapter.tmp-abcd1234/x",
        ".adapter.old-999/adapter_config.json",
        "checkpoints/.step_7.tmp-q1w2e3/optimizer.pt",
        "adapter/.adapter_model.safetensors.tmp-55",
    ]
    for name in orphans:
        ws.write(f"run/{name}", b"partial")
    ws.write("run/notes.txt", "mine")
    assert cli.main(_train(ws, "train.max_steps=1")) == 0
    assert (ws.out / "notes.txt").read_text() == "mine"
    assert not [p for p in ws.out.rglob(".*") if p.name != LOCK_NAME]


def test_torn_metrics_line_does_not_break_resume(ws: Workspace) -> None:
    ws.with_earlier_run()
    with (ws.out / "metrics.jsonl").open("a") as fh:
        fh.write('{"step": 2, "epoch": 0, "lo')  # killed mid-write
    assert cli.main(_resume(ws)) == 0
    records = [json.loads(ln) for ln in (ws.out / "metrics.jsonl").read_text().splitlines()]
    assert records and all("step" in r for r in records)


def test_overwrite_writes_into_a_user_folder_and_keeps_other_files(ws: Workspace) -> None:
    ws.write("run/notes.txt", "mine")
    assert cli.main([*_train(ws, "train.max_steps=1"), "--overwrite"]) == 0
    assert (ws.out / "notes.txt").read_text() == "mine"
    assert (ws.out / "adapter" / "adapter_config.json").is_file()


def test_options_anywhere_and_headline_summary(ws: Workspace, capfd: pytest.CaptureFixture[str]) -> None:
    cfg = ws.config()
    assert cli.main(["train", cfg, "--no-progress", "train.max_steps=1", "method.0.rank=2"]) == 0
    out = capfd.readouterr().out.strip().splitlines()
    assert out[-2].startswith(f"peftkit: {ws.out}: eval/accuracy=") and "density/" not in out[-2]
    assert out[-1] == f"peftkit: all {len(json.loads((ws.out / 'metrics.json').read_text()))} metrics in " \
        f"{ws.out / 'metrics.json'}"
    assert yaml.safe_load((ws.out / "config.yaml").read_text())["methods"][0]["rank"] == 2
