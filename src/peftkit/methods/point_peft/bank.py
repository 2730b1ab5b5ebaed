"""P2-Bank of Point-PEFT (Tang et al., AAAI 2024, arXiv 2310.03059): one feature per training cloud.

The reference code loads a precomputed ``[384, N]`` tensor and ships no script that makes it; the author's
answer (issue #3) is that it holds the training set's features from the pre-trained model. We build it:

    M[n] = f(x_n) / ||f(x_n)||,   f(x) = max_i LN(Enc(x))_i       (query encoder: the frozen pre-trained
                                                                   transformer, max over patch tokens)

``peftkit point-bank CONFIG`` (:mod:`peftkit.recipes.point_bank`) runs the frozen encoder of the config's
backbone over the training split and writes ``DIR/bank.safetensors`` (``features [N, d]``, ``labels [N]``)
+ ``DIR/bank.json`` (backbone, encoder hash, split, count, dim) atomically to the ``bank_path`` of the
config's ``point_peft`` method. Loading a bank made by another encoder (hash or width differs) is refused
with a CheckpointError.

Shapes: b batch, n points, t tokens, d dim, N bank entries.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from peftkit.core.checkpoint import write_tensor_dir
from peftkit.core.errors import CheckpointError, DataError
from peftkit.core.spec import get_spec
from peftkit.core.state import get_state, set_state
from peftkit.core.surgery import set_module

BANK_FORMAT = "peftkit-point-bank/1"
FEATURES_NAME = "bank.safetensors"
META_NAME = "bank.json"


class QueryEncoder(nn.Module):
    """A frozen copy of a point transformer without its head; ``points [b, n, 3] -> f [b, d]``.

    The copy is taken when it is built (before any method edits the model), so it stays the pre-trained
    encoder while the model trains. It is always in eval mode and never receives gradients.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        state = get_state(model)
        set_state(model, None)  # do not deep-copy the peftkit record (it points back at the model)
        try:
            enc = copy.deepcopy(model)
        finally:
            set_state(model, state)
        for path in get_spec(model).head:
            set_module(enc, path, nn.Identity())
        enc.requires_grad_(False)
        self.encoder = enc.eval()

    def train(self, mode: bool = True) -> QueryEncoder:
        return super().train(False)  # frozen: BatchNorm statistics and dropout stay in inference mode

    @torch.no_grad()
    def forward(self, points: torch.Tensor) -> torch.Tensor:
        tokens = self.encoder.forward_features(points)                 # [b, t, d], cls first
        return tokens[:, 1:].amax(dim=1)                                # [b, d]

    @property
    def dim(self) -> int:
        return int(self.encoder.norm.normalized_shape[0])

    def fingerprint(self) -> str:
        """SHA-256 of the encoder's grouping (patches, patch size) and its weights and buffers (name,
        dtype, shape, bytes): what a bank is tied to (other grouping, same weights: other features)."""
        h = hashlib.sha256()
        grouping = (getattr(self.encoder, "num_groups", None), getattr(self.encoder, "group_size", None))
        h.update(f"grouping|{grouping}|".encode())
        for name, t in sorted(self.encoder.state_dict().items()):
            t = t.detach().cpu().contiguous()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest()


# ---- files -------------------------------------------------------------------------------------------------


def save_bank(
    path: str | Path,
    features: torch.Tensor,
    labels: torch.Tensor,
    meta: dict[str, Any],
    norms: torch.Tensor | None = None,
) -> Path:
    """Write ``features [N, d]`` (rows L2-normalised by the caller), ``labels [N]``, ``meta`` and, when
    given, the features' norms before normalising ``norms [N]`` (``cache_query`` needs them) atomically."""
    meta = {"format": BANK_FORMAT, **meta, "count": int(features.shape[0]), "dim": int(features.shape[1])}
    tensors = {"features": features.detach().float().cpu().contiguous(), "labels": labels.long().cpu()}
    if norms is not None:
        tensors["norms"] = norms.detach().float().cpu().contiguous()
    return write_tensor_dir(Path(path), {FEATURES_NAME: tensors}, {META_NAME: meta}, BANK_FORMAT)


def load_bank_norms(path: str | Path) -> torch.Tensor | None:
    """The norms ``[N]`` of a bank's features before normalising (None for a bank written without them)."""
    from safetensors.torch import load_file

    norms = load_file(str(Path(path) / FEATURES_NAME)).get("norms")
    return None if norms is None else norms.float()


def load_bank(
    path: str | Path, encoder_hash: str | None = None, dim: int | None = None
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Read a bank directory and check that it belongs to this encoder.

    Args:
        path: the directory written by :func:`save_bank` (``peftkit point-bank``).
        encoder_hash: :meth:`QueryEncoder.fingerprint` of the model that will read it (None: not checked).
        dim: the feature width that model produces (None: not checked).

    Returns:
        (features ``[N, d]`` float32, metadata dict).

    Raises:
        CheckpointError: missing or corrupt files, or a bank made by another encoder or width.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    root = Path(path)
    meta_path, feat_path = root / META_NAME, root / FEATURES_NAME
    if not meta_path.is_file() or not feat_path.is_file():
        raise CheckpointError(
            f"no P2-Bank at {root} (need {META_NAME} and {FEATURES_NAME}); build it with "
            "`peftkit point-bank CONFIG`"
        )
    try:
        meta = json.loads(meta_path.read_text())
        features = load_file(str(feat_path))["features"].float()
    except (json.JSONDecodeError, SafetensorError, OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"P2-Bank at {root} is corrupt ({e}); rebuild it (point-bank)") from None
    if meta.get("format") != BANK_FORMAT:
        raise CheckpointError(f"{meta_path} is not a Point-PEFT bank (format {meta.get('format')!r})")
    if features.dim() != 2 or features.shape[0] != meta.get("count") or features.shape[1] != meta.get("dim"):
        raise CheckpointError(f"P2-Bank at {root}: features {list(features.shape)} disagree with {META_NAME}")
    if dim is not None and features.shape[1] != dim:
        raise CheckpointError(
            f"P2-Bank at {root} holds {features.shape[1]}-d features but this backbone makes {dim}-d ones; "
            "rebuild the bank with this backbone (`peftkit point-bank CONFIG`)"
        )
    if encoder_hash is not None and meta.get("encoder_hash") != encoder_hash:
        raise CheckpointError(
            f"P2-Bank at {root} was made by another encoder (backbone '{meta.get('backbone')}', checkpoint "
            f"{meta.get('checkpoint')!r}, hash {str(meta.get('encoder_hash'))[:12]}); this model's "
            f"pre-trained encoder hashes to {encoder_hash[:12]}. Rebuild it with `peftkit point-bank CONFIG`"
        )
    return features, meta


# ---- building ----------------------------------------------------------------------------------------------


@torch.no_grad()
def encode_dataset(
    encoder: QueryEncoder, dataset: Any, collate: Any, batch_size: int = 32, progress: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """L2-normalised query features ``[N, d]``, labels ``[N]`` and the features' norms ``[N]`` of every
    example of ``dataset``, in dataset order (row i is example i)."""
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    if len(dataset) == 0:
        raise DataError("the training split is empty: nothing to put in the P2-Bank")
    device = next(encoder.encoder.parameters()).device
    feats, labels, norms = [], [], []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    for batch in tqdm(loader, desc="P2-Bank", disable=not progress):
        points = batch["points"].to(device)
        f = encoder(points).float()  # [b, d]
        feats.append(F.normalize(f, dim=-1).cpu())
        norms.append(f.norm(dim=-1).cpu())
        labels.append(batch["labels"].cpu())
    return torch.cat(feats), torch.cat(labels), torch.cat(norms)
