"""Unstructured magnitude pruning of the frozen base, so DEFT can be measured on pruned models.

DEFT (Runwal, Pedapati, Chen, arXiv 2402.01911) reports that the density loss "works complementary with
quantized and pruned models"; the pruning recipe is not in the public code. Here: per weight matrix of every
``nn.Linear`` inside the transformer blocks, zero the ``round(fraction * numel)`` entries of smallest |w|
(ties broken by ``torch.topk``), before fine-tuning. Parameters owned by a method (LoRA / adapter weights)
and the head are never pruned. The frozen base keeps its zeros during PEFT training; undo restores the
original values.

Shape legend: o output features, i input features, n = o * i.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from peftkit.core.errors import UnsupportedError
from peftkit.core.spec import BackboneSpec
from peftkit.core.surgery import UndoRecord


def block_linears(base: nn.Module, spec: BackboneSpec,
                  exclude: Iterable[int] = ()) -> list[tuple[str, nn.Linear]]:
    """(path, module) of every ``nn.Linear`` inside the blocks whose weight id is not in ``exclude``."""
    skip = set(exclude)
    seen: set[int] = set()
    out: list[tuple[str, nn.Linear]] = []
    for block_path in spec.block_paths(base):
        for name, mod in base.get_submodule(block_path).named_modules():
            if isinstance(mod, nn.Linear) and id(mod.weight) not in skip and id(mod.weight) not in seen:
                seen.add(id(mod.weight))
                out.append((f"{block_path}.{name}" if name else block_path, mod))
    return out


@torch.no_grad()
def magnitude_prune(base: nn.Module, spec: BackboneSpec, fraction: float, record: UndoRecord | None = None,
                    exclude: Iterable[int] = ()) -> dict[str, int]:
    """Zero the smallest-|w| ``fraction`` of each block Linear weight of ``base`` in place.

    Args:
        base: the backbone (paths of ``spec`` are relative to it).
        fraction: in [0, 1).
        record: if given, undo restores the pruned values.
        exclude: ids of parameters to leave alone (method-owned, head).

    Returns:
        ``{"pruned": number of weights set to 0, "total": weights in the pruned matrices}``.

    Raises:
        UnsupportedError: a block Linear is quantized (prune before quantizing instead).
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    pruned = total = 0
    for path, lin in block_linears(base, spec, exclude):
        w = lin.weight
        if not w.is_floating_point() or getattr(w, "quant_state", None) is not None:
            raise UnsupportedError(
                f"DEFT prune: '{path}' holds a quantized weight ({w.dtype}); magnitude pruning needs the "
                "floating-point base (prune, then quantize)"
            )
        k = int(round(fraction * w.numel()))
        total += w.numel()
        if k == 0:
            continue
        flat = w.view(-1)  # [n]
        idx = torch.topk(flat.abs(), k, largest=False, sorted=False).indices  # [k]
        if record is not None:
            saved = flat[idx].clone()
            record.on_undo(lambda flat=flat, idx=idx, saved=saved: _restore(flat, idx, saved))
        flat[idx] = 0.0
        pruned += k
    return {"pruned": pruned, "total": total}


@torch.no_grad()
def _restore(flat: torch.Tensor, idx: torch.Tensor, saved: torch.Tensor) -> None:
    flat.index_copy_(0, idx, saved)
