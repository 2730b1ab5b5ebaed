"""Atomic writers: a file or directory appears whole or not at all; orphans of a killed run are removed."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from peftkit.core.io import (
    atomic_dir,
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    clean_orphans,
    commit_dir,
    is_orphan,
)
from peftkit.core.quiet import quiet_backend_logs


def test_text_bytes_json_round_trip(tmp_path: Path) -> None:
    assert atomic_write_text(tmp_path / "a.txt", "héllo\n").read_text(encoding="utf-8") == "héllo\n"
    assert atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    atomic_write_json(tmp_path / "c.json", {"x": [1.5, float("nan"), float("inf")], "y": (2, 3)})
    assert json.loads((tmp_path / "c.json").read_text()) == {"x": [1.5, None, None], "y": [2, 3]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin", "c.json"]


def test_a_failing_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    path = atomic_write_text(tmp_path / "m.json", "old")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half_then_fail)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_directory_is_swapped_in_whole(tmp_path: Path) -> None:
    final = tmp_path / "adapter"
    for content in ("first", "second"):
        tmp = atomic_dir(final)
        assert tmp.parent == tmp_path and is_orphan(tmp.name)
        (tmp / "w.txt").write_text(content)
        assert not (final / "w.txt").exists() or (final / "w.txt").read_text() == "first"
        commit_dir(tmp, final)
        assert (final / "w.txt").read_text() == content
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]


def test_clean_orphans_removes_only_temporary_names(tmp_path: Path) -> None:
    (tmp_path / ".metrics.json.tmp-123").write_text("x")
    (tmp_path / ".adapter.tmp-ab_9z").mkdir()
    (tmp_path / f".adapter.old-{os.getpid()}").mkdir()
    keep = [".hidden", "a.tmp-1", "notes.old-2", ".x.old-abc", "metrics.json"]
    for name in keep:
        (tmp_path / name).write_text("keep")
    removed = clean_orphans(tmp_path)
    assert removed == sorted([".metrics.json.tmp-123", ".adapter.tmp-ab_9z", f".adapter.old-{os.getpid()}"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)
    assert clean_orphans(tmp_path / "missing") == []


def test_quiet_drops_exactly_the_known_noise(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("torchao")
    quiet_backend_logs()
    n = len(logger.filters)
    quiet_backend_logs()   # idempotent: no second filter
    assert n >= 1 and len(logger.filters) == n
    with caplog.at_level(logging.WARNING, logger="torchao"):
        logger.warning("Failed to load /x/_C_cpu.so: undefined symbol")
        logger.warning("a real warning")
    assert [r.getMessage() for r in caplog.records if r.name == "torchao"] == ["a real warning"]
