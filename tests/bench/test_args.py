"""``key=value`` bench options: typed through the one scalar checker, unknown keys list the options."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

import peftkit as pk
from peftkit.bench._args import parse_overrides


@dataclass
class _Cfg:
    lr: float = 1e-3
    seeds: int = 3
    reuse: bool = True
    out_dir: str = "runs/x"
    limit: int | None = None


def test_values_are_typed() -> None:
    cfg = parse_overrides(_Cfg, ["lr=1e-7", "seeds=2", "reuse=0", "out_dir=2024", "limit=null"], "t")
    assert cfg == _Cfg(lr=1e-7, seeds=2, reuse=False, out_dir="2024", limit=None)
    assert type(cfg.lr) is float and parse_overrides(_Cfg, ["limit=5"], "t").limit == 5


@pytest.mark.parametrize("item,msg", [
    ("sedes=2", r"bench t: unknown option 'sedes=2'; options: limit, lr, out_dir, reuse, seeds"),
    ("seeds", r"unknown option 'seeds'"),
    ("seeds=2.5", r"seeds must be int \(a whole number\), got 2.5"),
    ("lr=fast", r"lr must be float \(a number\), got 'fast'"),
])
def test_bad_options(item: str, msg: str) -> None:
    with pytest.raises(pk.ConfigError, match=msg):
        parse_overrides(_Cfg, [item], "t")
