"""``peftkit point-bank CONFIG [key=value ...]``: build the P2-Bank a run config's ``point_peft`` reads.

The bank holds one L2-normalised query feature per training example of the config's data (for KiCad: train
minus the carved val split, un-augmented), made by the frozen pre-trained encoder of the config's backbone
at the config's grouping (see :mod:`peftkit.methods.point_peft.bank`). Its ``bank.json`` records the
backbone, checkpoint, encoder hash, data settings and count, so a bank from another encoder is refused when
loaded and one from other data is visible.
"""

from __future__ import annotations

import torch

from peftkit.core.errors import ConfigError
from peftkit.core.registry import get_backbone, get_dataset
from peftkit.methods.point_peft.bank import QueryEncoder, encode_dataset, save_bank
from peftkit.train.config import load_config


def bank_path_of(methods: list[dict], where: str) -> str:
    """The ``bank_path`` of the first ``point_peft`` method; ConfigError (one line) when there is none."""
    entries = [m for m in methods if m.get("name") == "point_peft"]
    if not entries or not entries[0].get("bank_path"):
        raise ConfigError(
            f"{where} has no point_peft method with a bank_path; add one (methods.N.bank_path=DIR)"
        )
    return str(entries[0]["bank_path"])


def main(config_path: str, overrides: list[str] | None = None, progress: bool = True) -> int:
    """Entry point of ``peftkit point-bank``; returns the exit code."""
    cfg = load_config(config_path, overrides or [])
    out = bank_path_of(cfg.methods, config_path)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    data = get_dataset(cfg.data.name)(backbone=cfg.backbone.name, seed=cfg.seed, **cfg.data.kwargs)
    build = get_backbone(cfg.backbone.name)
    encoder = QueryEncoder(build(task=cfg.backbone.task, num_labels=data.num_labels, **cfg.backbone.kwargs))
    collate = data.eval_collate or data.collate
    feats, labels, norms = encode_dataset(encoder, data.train, collate, cfg.train.eval_batch_size, progress)
    meta = {
        "backbone": cfg.backbone.name,
        "checkpoint": cfg.backbone.kwargs.get("checkpoint"),
        "backbone_kwargs": {k: v for k, v in cfg.backbone.kwargs.items() if k != "checkpoint"},
        "encoder_hash": encoder.fingerprint(),
        "dataset": cfg.data.name,
        "data_kwargs": dict(cfg.data.kwargs),
        "split": "train",
        "normalized": True,
    }
    path = save_bank(out, feats, labels, meta, norms)
    print(f"P2-Bank: {feats.shape[0]} x {feats.shape[1]} features of '{cfg.data.name}' train -> {path}")
    return 0
