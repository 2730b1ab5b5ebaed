"""The Point-MAE pretraining config: typed fields with the paper's defaults, every value range-checked.

Defaults are Point-MAE's (arXiv 2203.06604, cfgs/pretrain.yaml); ``peftkit pretrain CONFIG k=v`` overrides
them. A wrong value (``epochs=abc``, ``batch_size=0``, ``lr=nan``) is one ConfigError line naming the key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from peftkit.backbones.point.mae import DECODER_DEPTH, MASK_RATIO
from peftkit.core.configs import config_from_dict
from peftkit.core.errors import ConfigError

SOURCES = ("kicad_train", "urdf", "synthetic")
# Fields that do not change what is trained: a resumed run may differ in these.
RESUMABLE = ("max_steps", "export", "threads", "checkpoint_every")


@dataclass
class PretrainConfig:
    out_dir: str = "runs/pretrain_point_mae_small"
    seed: int = 0
    backbone: str = "point_mae_small"
    model: dict[str, Any] = field(default_factory=dict)  # PointTransformer size overrides
    sources: tuple[str, ...] = ("kicad_train", "urdf")
    stored_points: int = 2048  # points per cached cloud
    num_points: int = 1024  # paper: 1024 sampled per cloud
    mask_ratio: float = MASK_RATIO  # paper: 0.6
    decoder_depth: int = DECODER_DEPTH  # paper: 4
    decoder_heads: int | None = None  # paper: 6 (= encoder heads at d=384)
    epochs: int = 300  # paper: 300
    warmup_epochs: float = 10  # paper: 10
    batch_size: int = 128  # paper: 128
    lr: float = 1e-3  # paper: 1e-3
    weight_decay: float = 0.05  # paper: 0.05
    min_lr: float = 1e-6  # paper (timm CosineLRScheduler lr_min)
    grad_clip: float | None = None  # paper: none in pretraining
    threads: int = 1
    checkpoint_every: int = 100  # steps
    max_steps: int | None = None  # stop early (the schedule keeps its length)
    export: str | None = None  # fp16 encoder for shipping
    synthetic_count: int = 256  # clouds of the "synthetic" source

    def __post_init__(self) -> None:
        for name, low in (
            ("seed", 0),
            ("stored_points", 1),
            ("num_points", 1),
            ("decoder_depth", 1),
            ("epochs", 1),
            ("batch_size", 1),
            ("threads", 1),
            ("checkpoint_every", 1),
            ("synthetic_count", 1),
        ):
            _int(self, name, low)
        for name in ("decoder_heads", "max_steps"):
            if getattr(self, name) is not None:
                _int(self, name, 1)
        for name, low, high in (
            ("mask_ratio", 0.0, 1.0),
            ("warmup_epochs", 0.0, math.inf),
            ("lr", 0.0, math.inf),
            ("weight_decay", 0.0, math.inf),
            ("min_lr", 0.0, math.inf),
        ):
            _float(self, name, low, high)
        if self.grad_clip is not None:
            _float(self, "grad_clip", 0.0, math.inf)
        if self.num_points > self.stored_points:
            raise ConfigError(
                f"num_points ({self.num_points}) must be <= stored_points ({self.stored_points})"
            )
        if not isinstance(self.out_dir, str) or not self.out_dir.strip():
            raise ConfigError(f"out_dir must be a directory path, got {self.out_dir!r}")
        if not isinstance(self.backbone, str):
            raise ConfigError(f"backbone must be a registered point backbone name, got {self.backbone!r}")
        bad = [s for s in self.sources if s not in SOURCES]
        if bad or not self.sources:
            raise ConfigError(f"unknown pretraining source(s) {bad}; choose from {', '.join(SOURCES)}")
        if not isinstance(self.model, dict):
            raise ConfigError(f"model must be a mapping of size overrides, got {self.model!r}")


def _int(cfg: PretrainConfig, name: str, low: int) -> None:
    v = getattr(cfg, name)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"{name} must be a whole number, got {v!r}")
    if v < low:
        raise ConfigError(f"{name} must be >= {low}, got {v}")


def _float(cfg: PretrainConfig, name: str, low: float, high: float) -> None:
    v = getattr(cfg, name)
    if isinstance(v, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            v = float(v)
        except ValueError:
            raise ConfigError(f"{name} must be a number, got '{v}'") from None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ConfigError(f"{name} must be a finite number, got {v!r}")
    if not low <= v <= high:
        raise ConfigError(f"{name} must be in [{low}, {high}], got {v}")
    setattr(cfg, name, float(v))


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> PretrainConfig:
    """YAML + ``key=value`` overrides (``model.dim=96`` sets a size override)."""
    tree: dict[str, Any] = {}
    if path is not None:
        try:
            tree = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as e:
            raise ConfigError(f"cannot read the pretraining config {path}: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: a pretraining config is a mapping of keys")
    for item in overrides or []:
        key, sep, val = item.partition("=")
        if not sep:
            raise ConfigError(f"override '{item}' is not key=value")
        try:
            parsed = yaml.safe_load(val)
        except yaml.YAMLError:
            parsed = val
        if key.startswith("model."):
            tree.setdefault("model", {})[key[6:]] = parsed
        else:
            tree[key] = parsed
    return config_from_dict(PretrainConfig, tree, where=str(path or "overrides"))


def recipe_fields(cfg: dict[str, Any]) -> dict[str, Any]:
    """The config fields that change what is trained (a resumed run must match them)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items() if k not in RESUMABLE}
