"""Fixtures of the bad-input suite: a workspace per case, one finished earlier run per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from reliability.harness import BASE, Workspace


@pytest.fixture(scope="session")
def earlier_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny run (adapter, metrics, two checkpoints) that cases copy into their out_dir."""
    from peftkit.train.config import config_from_dict_tree
    from peftkit.train.loop import run

    out = tmp_path_factory.mktemp("earlier") / "run"
    run(config_from_dict_tree({"out_dir": str(out), **BASE}), progress=False)
    return out


@pytest.fixture
def ws(tmp_path: Path, earlier_run: Path) -> Workspace:
    return Workspace(tmp_path, earlier_run)
