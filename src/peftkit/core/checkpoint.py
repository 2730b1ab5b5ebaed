"""Adapter-only checkpoints: ``adapter_model.safetensors`` + ``adapter_config.json``.

Loading is strict: the backbone id and method stack must match, and every key and shape must be
exactly the ones this model's stack defines. Files are written to a temporary name and renamed.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from peftkit.core.configs import config_to_dict, method_config
from peftkit.core.errors import CheckpointError
from peftkit.core.io import atomic_dir, commit_dir
from peftkit.core.labels import label_names, set_label_names
from peftkit.core.state import get_state

WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"
FORMAT = "peftkit-adapter/1"


def _version() -> str:
    """The installed peftkit version (package metadata), recorded in every checkpoint."""
    try:
        return importlib.metadata.version("peftkit")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Name -> tensor for every trainable method parameter, the head (if trained) and method buffers."""
    state = get_state(model)
    if state is None:
        raise CheckpointError("no peftkit method is applied to this model; call pk.apply(model, [...]) first")
    wanted: set[int] = set()
    for a in state.applied:
        wanted.update(id(p) for p in a.params())
        wanted.update(id(b) for b in a.buffers())
    if state.train_head:
        wanted.update(id(p) for p in state.head_parameters())
        for path in state.spec.head:  # a trained head's BatchNorm statistics (point heads) belong with it
            wanted.update(id(b) for b in state.base.get_submodule(path).buffers())
    out: dict[str, torch.Tensor] = {}
    for name, t in list(model.named_parameters(remove_duplicate=True)) + list(model.named_buffers()):
        if id(t) in wanted and name not in out:
            out[name] = t
    return out


def checkpoint_config(model: nn.Module) -> dict[str, Any]:
    state = get_state(model)
    assert state is not None
    return {
        "format": FORMAT,
        "peftkit_version": _version(),
        "backbone": state.backbone_id,
        "family": state.spec.family,
        "train_head": state.train_head,
        "methods": [{"name": a.name, "config": config_to_dict(a.config)} for a in state.applied],
        "id2label": {str(i): n for i, n in enumerate(label_names(state.base) or [])} or None,
    }


def save_adapter(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Write the adapter-only checkpoint of ``model`` to the directory ``path`` (atomically)."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in adapter_state_dict(model).items()}
    cfg = checkpoint_config(model)
    cfg["tensors"] = {k: list(v.shape) for k, v in tensors.items()}
    return write_tensor_dir(Path(path), {WEIGHTS_NAME: tensors}, {CONFIG_NAME: cfg}, FORMAT)


def write_tensor_dir(
    final: Path, tensor_files: dict[str, dict[str, torch.Tensor]], json_files: dict[str, Any], fmt: str
) -> Path:
    """Write safetensors and JSON files into the directory ``final`` atomically (temp dir, then rename).

    Nothing half-written is left behind if any write fails.
    """
    from safetensors.torch import save_file

    if final.is_file() or final.is_symlink():
        raise CheckpointError(f"{final} is an existing file; save the checkpoint to a directory path")
    if final.is_dir() and any(final.iterdir()) and not any((final / n).is_file() for n in json_files):
        raise CheckpointError(
            f"{final} is a directory that is not a peftkit checkpoint ({fmt}); save to a new path "
            "(only a checkpoint directory is ever replaced)"
        )
    tmp = atomic_dir(final)
    try:
        for name, tensors in tensor_files.items():
            save_file(tensors, str(tmp / name), metadata={"format": fmt})
        for name, obj in json_files.items():
            (tmp / name).write_text(json.dumps(obj, indent=2))
        commit_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def read_adapter_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path) / CONFIG_NAME
    if not p.is_file():
        raise CheckpointError(f"{p} not found: point at a directory written by pk.save_adapter")
    try:
        cfg = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(
            f"{p} is not valid JSON ({e.msg} at line {e.lineno}); the checkpoint is corrupt"
        ) from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{p} must hold a JSON object, not {type(cfg).__name__} (a corrupt checkpoint)")
    if cfg.get("format") != FORMAT:
        raise CheckpointError(f"{p} is not a peftkit adapter checkpoint (format {cfg.get('format')!r})")
    _check_layout(p, cfg)
    return cfg


def _check_layout(p: Path, cfg: dict[str, Any]) -> None:
    """The keys load_adapter reads: ``backbone`` (text), ``methods`` ([{name: text, config: {...}}, ...])."""
    for key in ("backbone", "methods"):
        if key not in cfg:
            raise CheckpointError(f"{p} has no '{key}'; the checkpoint is incomplete (re-save it)")
    if not isinstance(cfg["backbone"], str):
        raise CheckpointError(f"{p}: 'backbone' must be a backbone name, got {cfg['backbone']!r}")
    if not isinstance(cfg["methods"], list) or not cfg["methods"]:
        raise CheckpointError(f"{p}: 'methods' must be a list of {{name, config}}, got {cfg['methods']!r}")
    for i, m in enumerate(cfg["methods"]):
        if not (isinstance(m, dict) and isinstance(m.get("name"), str) and isinstance(m.get("config"), dict)):
            raise CheckpointError(f"{p}: methods[{i}] must be a mapping {{name: ..., config: {{}}}}: {m!r}")


def method_configs_from_checkpoint(cfg: dict[str, Any]) -> list[Any]:
    """The method config dataclasses recorded in an adapter config, in stack order."""
    return [method_config(m["name"], m["config"], where=CONFIG_NAME) for m in cfg["methods"]]


def load_adapter(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load an adapter checkpoint into ``model``; applies the saved method stack if none is applied yet.

    Returns:
        The model to use (peft prompt-learning methods return a wrapper).

    Raises:
        CheckpointError: corrupt files, another backbone, another method stack, missing or unexpected keys,
            or a shape mismatch.
    """
    from peftkit.core.apply import apply, backbone_id

    cfg = read_adapter_config(path)
    bid = backbone_id(model) if get_state(model) is None else get_state(model).backbone_id
    if cfg["backbone"] != bid:
        raise CheckpointError(
            f"checkpoint {path} was made for backbone '{cfg['backbone']}', this model is '{bid}'"
        )
    saved_stack = [m["name"] for m in cfg["methods"]]
    state = get_state(model)
    if state is None:
        model = apply(model, method_configs_from_checkpoint(cfg), train_head=cfg.get("train_head", True))
    elif state.method_names() != saved_stack:
        raise CheckpointError(
            f"checkpoint {path} holds methods {saved_stack}, the model has {state.method_names()} applied"
        )
    tensors = _read_tensors(Path(path) / WEIGHTS_NAME)
    expected = adapter_state_dict(model)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path} does not match the model: missing {_head(missing)}, "
            f"unexpected {_head(unexpected)}"
        )
    for k, t in expected.items():
        if tuple(tensors[k].shape) != tuple(t.shape):
            raise CheckpointError(
                f"checkpoint {path}: '{k}' has shape {tuple(tensors[k].shape)}, "
                f"the model expects {tuple(t.shape)}"
            )
    with torch.no_grad():
        for k, t in expected.items():
            t.copy_(tensors[k].to(dtype=t.dtype, device=t.device))
    id2label = cfg.get("id2label")
    if isinstance(id2label, dict) and id2label:   # the class names travel with the adapter
        set_label_names(get_state(model).base, [id2label[k] for k in sorted(id2label, key=int)])
    return model


def _head(keys: list[str]) -> str:
    """The first few keys of a list, for one-line error messages."""
    return f"{keys[:5]}{'...' if len(keys) > 5 else ''}"


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(f"{path} not found: the checkpoint is incomplete")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is corrupt ({e}); re-save the adapter") from None
