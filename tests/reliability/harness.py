"""Shared pieces of the bad-input suite: run the CLI in-process, hash a directory tree, check the promise.

The promise for every case: exit code 2 (or the documented exception class), exactly one line on stderr,
``peftkit: error: ...``, no traceback, and the case's directory tree byte-for-byte unchanged.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS / "train"))
import toytask  # noqa: E402,F401  (registers the synthetic dataset toy_tokens)

from peftkit import cli  # noqa: E402

BASE: dict[str, Any] = {
    "seed": 0,
    "backbone": {"name": "tiny_bert"},
    "data": {"name": "toy_tokens", "n_train": 16, "n_val": 8, "n_test": 8},
    "methods": [{"name": "lora", "rank": 4}],
    "train": {"epochs": 1, "batch_size": 8, "eval_batch_size": 8, "threads": 1, "checkpoint_every": 1},
}


def tree_hash(root: Path) -> str:
    """A digest of every name, file type, file content and link target under ``root`` (and root's own)."""
    h = hashlib.sha256()
    if not root.exists() and not root.is_symlink():
        return "absent"
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            h.update(str(p.relative_to(root)).encode() + b"\0")
            if p.is_symlink():
                h.update(b"L" + os.readlink(p).encode())
            elif p.is_file():
                h.update(b"F" + p.read_bytes())
            else:
                h.update(b"D")
    return h.hexdigest()


@dataclass
class Workspace:
    """A case's directory: ``root`` is hashed before and after; ``out`` is the run's out_dir."""

    root: Path
    earlier: Path | None = None  # a finished run that may be copied into ``out``

    @property
    def out(self) -> Path:
        return self.root / "run"

    def config(self, name: str = "c.yaml", **changes: Any) -> str:
        """Write BASE with top-level sections replaced by ``changes`` (out_dir defaults to ``out``)."""
        tree = {"out_dir": str(self.out), **BASE, **changes}
        path = self.root / name
        path.write_text(yaml.safe_dump(tree))
        return str(path)

    def write(self, name: str, text: str | bytes) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
        return path

    def with_earlier_run(self) -> Path:
        """Copy the finished earlier run into ``out``; returns ``out``."""
        assert self.earlier is not None
        shutil.copytree(self.earlier, self.out, symlinks=True)
        return self.out


@dataclass(frozen=True)
class Case:
    """One bad input: ``argv(ws)`` builds its files and returns the command line; ``match`` is a regex the
    error line must contain. ``earlier``: out_dir first receives a finished run (``argv`` may then damage
    it), and everything must stay as it was."""

    id: str
    argv: Callable[[Workspace], list[str]]
    match: str
    earlier: bool = False
    marks: tuple[Any, ...] = field(default=())

    def param(self) -> Any:
        return pytest.param(self, id=self.id, marks=self.marks)


def run_case(case: Case, ws: Workspace, capfd: pytest.CaptureFixture[str]) -> str:
    """Run ``case`` through ``peftkit.cli.main`` and assert the promise; returns the error line."""
    if case.earlier:
        ws.with_earlier_run()
    argv = case.argv(ws)
    capfd.readouterr()
    before = tree_hash(ws.root)
    code = cli.main(argv)
    out, err = capfd.readouterr()
    return check_one_line(code, err, case.match, before, tree_hash(ws.root))


def check_one_line(code: int, err: str, match: str, before: str, after: str) -> str:
    assert code == 2, f"exit code {code}, stderr: {err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    lines = err.splitlines()
    assert len(lines) == 1, f"{len(lines)} lines on stderr:\n{err[-3000:]}"
    assert lines[0].startswith("peftkit: error: "), lines[0]
    assert re.search(match, lines[0]), f"{match!r} not in {lines[0]!r}"
    assert after == before, "the directory tree changed"
    return lines[0]


def check_exception(exc: BaseException, cls: type[BaseException], match: str) -> None:
    """The documented class, a one-line message, and no chained traceback shown to the user."""
    assert isinstance(exc, cls), f"{type(exc).__name__}: {exc}"
    msg = str(exc)
    assert "\n" not in msg.strip(), msg
    assert re.search(match, msg), f"{match!r} not in {msg!r}"
