"""Run configs: flat typed dataclasses <-> YAML, with dotted ``key=value`` overrides.

    out_dir: runs/bbc_minilm__lora
    seed: 0
    backbone: {name: minilm, task: classification}     # other keys: the backbone builder's keyword arguments
    data: {name: bbc_news, max_length: 128}            # other keys: the dataset builder's keyword arguments
    methods: [{name: lora, rank: 8}]                   # method config fields (core.configs.config_from_dict)
    train: {epochs: 3, lr: 5.0e-4, ...}                # TrainConfig

Overrides: ``train.lr=1e-4``, ``data.max_length=64``, ``methods.0.rank=16`` or ``method.rank=16`` (the
single method); values are parsed as YAML scalars. Every unknown key is a ConfigError listing the valid ones.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from peftkit.core.configs import coerce_scalar, config_to_dict, method_configs
from peftkit.core.errors import ConfigError
from peftkit.train.overrides import apply_overrides, parse_value

SCHEDULES = ("linear", "cosine", "constant")
EVAL_SPLITS = ("test", "val")


@dataclass
class BackboneConfig:
    name: str = "minilm"
    task: str = "classification"
    kwargs: dict[str, Any] = field(default_factory=dict)  # builder keyword arguments (YAML: flat keys)


@dataclass
class DataConfig:
    name: str = "bbc_news"
    kwargs: dict[str, Any] = field(
        default_factory=dict
    )  # dataset builder keyword arguments (YAML: flat keys)


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping. ``batch_size`` is the global batch (split evenly over torchrun ranks)."""

    epochs: int = 3
    batch_size: int = 16
    eval_batch_size: int = 64
    lr: float = 5.0e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    schedule: str = "linear"  # linear | cosine | constant (after warm-up)
    grad_clip: float | None = 1.0  # max global grad norm; null disables
    grad_accum: int = 1
    bf16: bool = False  # bf16 autocast for forward + loss
    max_steps: int | None = None  # optimizer steps; overrides epochs
    log_every: int = 10
    checkpoint_every: int | None = None  # steps; checkpoints are also written at each epoch end
    keep_checkpoints: int = 2
    tensorboard: bool = False
    num_workers: int = 0
    measure_memory: bool = False
    measure_density: bool = False
    eval_split: str = "test"  # split of the final evaluation: test | val
    threads: int | None = None  # torch.set_num_threads
    device: str = "auto"  # auto | cpu | cuda | cuda:N


@dataclass
class RunConfig:
    out_dir: str = "runs/run"
    seed: int = 0
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    data: DataConfig = field(default_factory=DataConfig)
    methods: list[dict[str, Any]] = field(default_factory=lambda: [{"name": "full"}])
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        """The YAML form (builder kwargs flattened back into ``backbone`` / ``data``)."""
        return {
            "out_dir": self.out_dir,
            "seed": self.seed,
            "backbone": {"name": self.backbone.name, "task": self.backbone.task, **self.backbone.kwargs},
            "data": {"name": self.data.name, **self.data.kwargs},
            "methods": [dict(m) for m in self.methods],
            "train": dataclasses.asdict(self.train),
        }

    def method_configs(self) -> list[Any]:
        """The method config dataclasses, in stack order (typed fields checked by ``coerce_scalar``)."""
        return method_configs(self.methods)


# ---- typed values ------------------------------------------------------------------------------------------


def _train_from_dict(values: dict[str, Any]) -> TrainConfig:
    hints = typing.get_type_hints(TrainConfig)
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in train; valid keys: {', '.join(names)}")
    cfg = TrainConfig(**{k: coerce_scalar(v, hints[k], f"train.{k}") for k, v in values.items()})
    if cfg.schedule not in SCHEDULES:
        raise ConfigError(f"train.schedule must be one of {', '.join(SCHEDULES)}, got '{cfg.schedule}'")
    if cfg.eval_split not in EVAL_SPLITS:
        raise ConfigError(f"train.eval_split must be one of {', '.join(EVAL_SPLITS)}, got '{cfg.eval_split}'")
    for k in ("epochs", "batch_size", "eval_batch_size", "grad_accum", "log_every", "keep_checkpoints"):
        if getattr(cfg, k) < 1:
            raise ConfigError(f"train.{k} must be >= 1, got {getattr(cfg, k)}")
    for k in ("max_steps", "checkpoint_every", "threads"):
        if getattr(cfg, k) is not None and getattr(cfg, k) < 1:
            raise ConfigError(f"train.{k} must be >= 1 or null, got {getattr(cfg, k)}")
    if not 0.0 <= cfg.warmup_ratio < 1.0:
        raise ConfigError(f"train.warmup_ratio must be in [0, 1), got {cfg.warmup_ratio}")
    if cfg.lr <= 0:
        raise ConfigError(f"train.lr must be > 0, got {cfg.lr}")
    if cfg.weight_decay < 0:
        raise ConfigError(f"train.weight_decay must be >= 0, got {cfg.weight_decay}")
    if cfg.grad_clip is not None and cfg.grad_clip <= 0:
        raise ConfigError(f"train.grad_clip must be > 0 or null (no clipping), got {cfg.grad_clip}")
    if cfg.num_workers < 0:
        raise ConfigError(f"train.num_workers must be >= 0, got {cfg.num_workers}")
    if cfg.device != "auto" and cfg.device != "cpu" and not cfg.device.startswith("cuda"):
        raise ConfigError(f"train.device must be auto, cpu, cuda or cuda:N, got '{cfg.device}'")
    return cfg


_NAME_LISTS = (list[str], list[str] | None, tuple[str, ...], tuple[str, ...] | None)
_CHECKED_HINTS = (int, float, bool, str, int | None, float | None, str | None, *_NAME_LISTS)


def _check_kwargs(fn: Any, kwargs: dict[str, Any], fixed: set[str], section: str, name: str) -> None:
    """Unknown builder keyword arguments are a ConfigError listing the valid ones; typed ones are coerced."""
    try:
        params = inspect.signature(fn).parameters
        hints = typing.get_type_hints(fn)
    except (TypeError, ValueError, NameError):
        return
    for k, v in kwargs.items():
        if k in hints and hints[k] in _NAME_LISTS and isinstance(v, str):
            raise ConfigError(f"{section}.{k} must be a list, e.g. [a, b], got {v!r}")
        if k in hints and hints[k] in _CHECKED_HINTS:
            kwargs[k] = coerce_scalar(v, hints[k], f"{section}.{k}")
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return  # the builder forwards extra keywords (e.g. to a model config): it checks them itself
    valid = [
        n for n, p in params.items() if n not in fixed and p.kind is not inspect.Parameter.VAR_POSITIONAL
    ]
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        valid = ", ".join(["name", *valid])
        raise ConfigError(f"unknown key(s) {unknown} in {section} '{name}'; valid keys: {valid}")


def _named(node: Any, where: str) -> dict[str, Any]:
    """A mapping with a 'name' (a bare string is shorthand for ``{name: <string>}``); a copy."""
    if isinstance(node, str):
        return {"name": node}
    if not isinstance(node, dict) or "name" not in node:
        raise ConfigError(f"{where} must be a name or a mapping with a 'name', got {node!r}")
    return dict(node)


def _section(node: Any, where: str) -> dict[str, Any]:
    """A mapping section (absent or null: empty); anything else is a ConfigError."""
    if node is None:
        return {}
    if not isinstance(node, dict):
        raise ConfigError(f"{where} must be a mapping of keys, e.g. {where}: {{epochs: 3}}, got {node!r}")
    return dict(node)


def config_from_dict_tree(tree: dict[str, Any]) -> RunConfig:
    """Build and validate a RunConfig from its YAML form."""
    from peftkit.core.registry import get_backbone, get_dataset

    if not isinstance(tree, dict):
        raise ConfigError(f"a run config is a YAML mapping, got {type(tree).__name__}")
    top = [f.name for f in dataclasses.fields(RunConfig)]
    unknown = sorted(set(tree) - set(top))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in the run config; valid keys: {', '.join(top)}")
    bb = _named(tree.get("backbone") or {"name": "minilm"}, "backbone")
    data = _named(tree.get("data") or {"name": "bbc_news"}, "data")
    methods = tree.get("methods", [{"name": "full"}])
    if not isinstance(methods, list) or not methods:
        raise ConfigError("methods must be a non-empty list, e.g. [{name: lora, rank: 8}] or [full]")
    methods = [_named(m, f"methods[{i}]") for i, m in enumerate(methods)]
    bcfg = BackboneConfig(
        name=str(bb.pop("name", "minilm")), task=str(bb.pop("task", "classification")), kwargs=bb
    )
    dcfg = DataConfig(name=str(data.pop("name", "bbc_news")), kwargs=data)
    if "num_labels" in bcfg.kwargs:
        raise ConfigError("backbone.num_labels is filled from the data; remove it (set data options instead)")
    _check_kwargs(get_backbone(bcfg.name), bcfg.kwargs, {"task", "num_labels"}, "backbone", bcfg.name)
    _check_kwargs(get_dataset(dcfg.name), dcfg.kwargs, {"backbone", "seed"}, "data", dcfg.name)
    if tree.get("out_dir", RunConfig.out_dir) in (None, ""):
        raise ConfigError("out_dir is empty; give the run its own directory, e.g. out_dir=runs/my_run")
    cfg = RunConfig(
        out_dir=coerce_scalar(tree.get("out_dir", RunConfig.out_dir), str, "out_dir"),
        seed=coerce_scalar(tree.get("seed", 0), int, "seed"),
        backbone=bcfg,
        data=dcfg,
        methods=[dict(m) for m in methods],
        train=_train_from_dict(_section(tree.get("train"), "train")),
    )
    cfg.method_configs()  # validates every method's fields now, before anything heavy runs
    return cfg


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML run config, apply overrides, validate.

    Raises:
        ConfigError: unknown keys, bad values, a missing or unparsable file.
    """
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if p.is_dir():
            raise ConfigError(f"config file {p} is a directory; give the YAML file (e.g. {p}/config.yaml)")
        if not p.is_file():
            raise ConfigError(f"config file {p} not found")
        try:
            tree = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p} is not valid YAML: {' '.join(str(e).split())}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"{p} is not a UTF-8 text file ({e.reason} at byte {e.start})") from None
    return config_from_dict_tree(apply_overrides(tree, overrides or []))


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


__all__ = [
    "RunConfig",
    "TrainConfig",
    "BackboneConfig",
    "DataConfig",
    "load_config",
    "apply_overrides",
    "config_from_dict_tree",
    "dump_config",
    "parse_value",
    "config_to_dict",
]
