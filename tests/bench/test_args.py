"""``key=value`` bench options: typed through the one scalar checker, unknown keys list the options."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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
    mode: str = "fresh"
    dtypes: str = "fp32"
    note: str | None = "x"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)


def test_values_are_typed() -> None:
    cfg = parse_overrides(_Cfg, ["lr=1e-7", "seeds=2", "reuse=0", "out_dir=2024", "limit=null"], "t")
    assert cfg == _Cfg(lr=1e-7, seeds=2, reuse=False, out_dir="2024", limit=None)
    assert type(cfg.lr) is float and parse_overrides(_Cfg, ["limit=5"], "t").limit == 5


@pytest.mark.parametrize("item,msg", [
    ("sedes=2", r"bench t: unknown option 'sedes=2'; valid keys: dtypes, limit, lr, mode, note, out_dir, "
                r"reuse, seeds, backbone.KEY"),
    ("backbone_kwargs=3", r"unknown option 'backbone_kwargs=3'"),
    ("data.x=3", r"unknown option 'data.x=3'"),
    ("seeds", r"unknown option 'seeds'"),
    ("seeds=2.5", r"seeds must be int \(a whole number\), got 2.5"),
    ("lr=fast", r"lr must be float \(a number\), got 'fast'"),
])
def test_bad_options(item: str, msg: str) -> None:
    with pytest.raises(pk.ConfigError, match=msg):
        parse_overrides(_Cfg, [item], "t")


def test_text_fields_keep_the_text_and_nested_kwargs_collect() -> None:
    cfg = parse_overrides(_Cfg, ["mode=off", "dtypes=fp32,bf16", "note=null", "backbone.vocab_size=30522",
                                 "backbone.name=minilm", "out_dir=007"], "t")
    assert (cfg.mode, cfg.dtypes, cfg.note, cfg.out_dir) == ("off", "fp32,bf16", None, "007")
    assert cfg.backbone_kwargs == {"vocab_size": 30522, "name": "minilm"}
    assert _Cfg().backbone_kwargs == {}   # the default is not shared
