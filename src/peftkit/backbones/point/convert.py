"""Loading pretrained point encoders: our safetensors format and the official Point-MAE ``pretrain.pth``.

Official layout (Pang-Yatian/Point-MAE ``tools/builder.py::save_checkpoint``): a dict whose ``base_model``
entry is the state dict of ``Point_MAE``, keys prefixed ``module.`` when saved from DDP:

    MAE_encoder.encoder.first_conv.{0,3}.{weight,bias}       -> patch_embed.first_conv.{0,3}.*
    MAE_encoder.encoder.first_conv.1.{weight,bias,running_*,num_batches_tracked} (BatchNorm)
    MAE_encoder.encoder.second_conv.{0,1,3}.*                 -> patch_embed.second_conv.{0,1,3}.*
    MAE_encoder.pos_embed.{0,2}.{weight,bias}                 -> pos_embed.{0,2}.*
    MAE_encoder.blocks.blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.* -> blocks.N.*
    MAE_encoder.norm.{weight,bias}                            -> norm.*
    MAE_decoder.*, mask_token, decoder_pos_embed.*, increase_dim.*   expected, dropped

The map is explicit; any other key, a missing one or a shape mismatch is a CheckpointError. Only the
classifier's ``cls_token``, ``cls_pos`` and ``cls_head.*`` may stay unloaded (they are new at fine-tuning).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from peftkit.core.errors import CheckpointError
from peftkit.core.io import atomic_write

FORMAT = "peftkit-point-encoder/1"
CLASSIFIER_ONLY = ("cls_token", "cls_pos", "cls_head.")
OFFICIAL_DROPPED = ("MAE_decoder.", "mask_token", "decoder_pos_embed.", "increase_dim.")
_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_WB = ("weight", "bias")
REPO_ROOT = Path(__file__).resolve().parents[4]


def encoder_keys(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state entries a pretrained encoder must provide (all but the classifier's)."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith(CLASSIFIER_ONLY)}


def official_key_map(model: nn.Module) -> dict[str, str]:
    """Official ``MAE_encoder.*`` key -> our key, for every encoder entry of ``model``."""
    ours = encoder_keys(model)
    out: dict[str, str] = {}
    for conv in ("first_conv", "second_conv"):
        for i, names in ((0, _WB), (1, _BN), (3, _WB)):
            for n in names:
                out[f"MAE_encoder.encoder.{conv}.{i}.{n}"] = f"patch_embed.{conv}.{i}.{n}"
    for i in (0, 2):
        for n in _WB:
            out[f"MAE_encoder.pos_embed.{i}.{n}"] = f"pos_embed.{i}.{n}"
    for b in range(len(model.blocks)):
        for sub in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            for n in _WB:
                if f"blocks.{b}.{sub}.{n}" in ours:  # attn.qkv has no bias (qkv_bias=False)
                    out[f"MAE_encoder.blocks.blocks.{b}.{sub}.{n}"] = f"blocks.{b}.{sub}.{n}"
    for n in _WB:
        out[f"MAE_encoder.norm.{n}"] = f"norm.{n}"
    unmapped = sorted(set(ours) - set(out.values()))
    if unmapped:  # a model variant this map does not know
        raise CheckpointError(
            f"no official key maps to {unmapped[:5]}; the official layout fits point_mae only"
        )
    return out


def convert_official(state: dict[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """Our state dict from an official ``pretrain.pth`` dict (or its ``base_model`` entry)."""
    sd = state.get("base_model", state) if isinstance(state, dict) else None
    if not isinstance(sd, dict) or not sd:
        raise CheckpointError("not a Point-MAE checkpoint: expected a dict with a 'base_model' state dict")
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    key_map = official_key_map(model)
    out, unexpected = {}, []
    for k, v in sd.items():
        if k in key_map:
            out[key_map[k]] = v
        elif not k.startswith(OFFICIAL_DROPPED):
            unexpected.append(k)
    missing = sorted(k for k in key_map if k not in sd)
    if unexpected or missing:
        raise CheckpointError(
            f"Point-MAE checkpoint does not fit: missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            f"{'...' if len(unexpected) > 5 else ''}"
        )
    return out


def _check_and_load(model: nn.Module, sd: dict[str, torch.Tensor], origin: str) -> None:
    ours = encoder_keys(model)
    missing, unexpected = sorted(set(ours) - set(sd)), sorted(set(sd) - set(ours))
    if missing or unexpected:
        raise CheckpointError(
            f"{origin} does not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    for k, v in sd.items():
        if tuple(v.shape) != tuple(ours[k].shape):
            raise CheckpointError(
                f"{origin}: '{k}' has shape {list(v.shape)} but the model needs "
                f"{list(ours[k].shape)} (a checkpoint of another backbone size?)"
            )
    sd = {k: v.to(ours[k].dtype) for k, v in sd.items()}
    res = model.load_state_dict(sd, strict=False)
    left = [k for k in res.missing_keys if not k.startswith(CLASSIFIER_ONLY)]
    if left or res.unexpected_keys:
        raise CheckpointError(f"{origin}: keys not loaded {left[:5]}, unexpected {res.unexpected_keys[:5]}")


def resolve(checkpoint: str | Path) -> Path:
    """The checkpoint path: as given, else relative to the repository root (for the shipped checkpoint)."""
    p = Path(checkpoint).expanduser()
    if p.is_file():
        return p
    if not p.is_absolute() and (REPO_ROOT / p).is_file():
        return REPO_ROOT / p
    raise CheckpointError(f"checkpoint {checkpoint} not found")


def load_pretrained(model: nn.Module, checkpoint: str | Path) -> dict[str, Any]:
    """Load encoder weights into ``model`` from our ``.safetensors`` or an official ``.pth``.

    Returns:
        The checkpoint's metadata.
    """
    path = resolve(checkpoint)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                sd = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises its own error types for corrupt files
            raise CheckpointError(f"cannot read {path}: {e}") from None
        if meta.get("format") != FORMAT:
            raise CheckpointError(
                f"{path} is not a peftkit point-encoder checkpoint (format {meta.get('format')})"
            )
        _check_and_load(model, sd, str(path))
        return json.loads(meta.get("meta", "{}"))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors differ between torch versions
        raise CheckpointError(f"cannot read {path} as a torch checkpoint: {e}") from None
    _check_and_load(model, convert_official(state, model), str(path))
    return {"source": "official Point-MAE", "path": str(path)}


def save_encoder(
    state: dict[str, torch.Tensor], path: Path, meta: dict[str, Any], fp16: bool = False
) -> None:
    """Write encoder weights as safetensors (fp16 floats if asked; BN counters stay integer), atomically."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    out = {
        k: (v.half() if fp16 and v.is_floating_point() else v).contiguous().clone() for k, v in state.items()
    }

    def write(tmp: Path) -> None:
        save_file(out, str(tmp), metadata={"format": FORMAT, "meta": json.dumps(meta)})
        tmp.chmod(0o644)  # safetensors writes 0600; the shipped file is meant to be read by anyone

    atomic_write(path, write)
