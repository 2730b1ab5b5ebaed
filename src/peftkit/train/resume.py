"""Which settings a resumed run may change, and the config it then runs with.

``peftkit train CONFIG --resume RUN_DIR`` compares CONFIG (with its overrides) to ``RUN_DIR/config.yaml``.
Keys in :data:`RESUMABLE` (how long to train, how often to log / validate / checkpoint, loader and eval
plumbing) take the new value and ``config.yaml`` is rewritten to say so; any other difference (learning rate,
method, data, seed, ...) would make the resumed run something neither config describes, so it is refused
with the list of differing keys. ``out_dir`` is ignored: the run continues in ``RUN_DIR``.

Changing ``epochs`` / ``max_steps`` changes the schedule's total: from the resumed step on, the learning rate
follows the schedule of the new length.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from peftkit.core.configs import config_to_dict
from peftkit.core.errors import ConfigError
from peftkit.train.config import RunConfig

RESUMABLE = (
    "epochs",
    "max_steps",
    "log_every",
    "checkpoint_every",
    "keep_checkpoints",
    "eval_batch_size",
    "num_workers",
    "tensorboard",
    "threads",
    "eval_split",
)


def flat_settings(cfg: RunConfig) -> dict[str, Any]:
    """Every setting of ``cfg`` as ``dotted.key -> value`` (method configs with their defaults filled in)."""
    out: dict[str, Any] = {"seed": cfg.seed, "backbone.name": cfg.backbone.name}
    out["backbone.task"] = cfg.backbone.task
    out.update({f"backbone.{k}": v for k, v in cfg.backbone.kwargs.items()})
    out["data.name"] = cfg.data.name
    out.update({f"data.{k}": v for k, v in cfg.data.kwargs.items()})
    for i, (raw, mc) in enumerate(zip(cfg.methods, cfg.method_configs())):
        out[f"methods.{i}.name"] = raw["name"]
        out.update({f"methods.{i}.{k}": v for k, v in config_to_dict(mc).items()})
    out.update({f"train.{k}": v for k, v in dataclasses.asdict(cfg.train).items()})
    return out


def resumed_config(saved: RunConfig, given: RunConfig, run_dir: str) -> tuple[RunConfig, list[str]]:
    """The config a resumed run uses and the resumable keys that changed.

    Args:
        saved: the run's ``config.yaml``.
        given: the config given with ``--resume`` (CONFIG and overrides).
        run_dir: the run directory (the resumed run's ``out_dir``).

    Raises:
        ConfigError: a setting outside :data:`RESUMABLE` differs; the message lists each one, old -> new.
    """
    old, new = flat_settings(saved), flat_settings(given)
    missing = object()
    differ = sorted(k for k in old.keys() | new.keys() if old.get(k, missing) != new.get(k, missing))
    fixed = [k for k in differ if not (k.startswith("train.") and k[len("train."):] in RESUMABLE)]
    if fixed:
        shown = "; ".join(f"{k}: {old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}" for k in fixed[:6])
        more = f" (and {len(fixed) - 6} more)" if len(fixed) > 6 else ""
        raise ConfigError(
            f"--resume {run_dir}: the given config differs from the run's config.yaml in {shown}{more}; "
            f"only train.{{{', '.join(RESUMABLE)}}} may change on resume (start a new run to change the rest)"
        )
    changes = {k[len("train."):]: new[k] for k in differ}
    train = dataclasses.replace(saved.train, **changes)
    return dataclasses.replace(saved, out_dir=str(run_dir), train=train), differ
