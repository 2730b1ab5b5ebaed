"""``peftkit data kicad`` options: every bad value is one line, exit 2, before anything is fetched."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from peftkit.core.errors import ConfigError
from peftkit.recipes.kicad_fetch import main, parse_options

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "bad, msg",
    [
        ("pointz=3", "unknown option"),
        ("points=abc", "points must be a whole number"),
        ("points=0", "points must be between"),
        ("write_split=maybe", "write_split must be true or false"),
        ("cache=", "cache must be a directory"),
        ("points", "unknown option"),
    ],
)
def test_bad_options_raise_config_error(bad: str, msg: str) -> None:
    with pytest.raises(ConfigError, match=msg):
        main([bad])


def test_options_parse() -> None:
    pts, cache, write = parse_options(["points=512", "cache=/tmp/x; touch y", "write_split=no"])
    assert pts == 512 and cache == Path("/tmp/x; touch y") and write is False


def test_cli_points_abc_is_one_line_exit_2(tmp_path: Path) -> None:
    env = {**os.environ, "PEFTKIT_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    res = subprocess.run(
        [sys.executable, "-m", "peftkit.cli", "data", "kicad", "points=abc"],
        capture_output=True, text=True, cwd=ROOT, env=env,
    )
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        "peftkit: error: points must be a whole number such as 2048, got 'abc'"
    ]
    assert not (tmp_path / "cache").exists()
