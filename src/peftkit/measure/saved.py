"""Bytes saved for backward by one forward + loss.

Every tensor an operation saves for backward (including ``ctx.save_for_backward`` of a custom
``autograd.Function`` such as MEFT's reversible backprop) passes through the pack hook of
``torch.autograd.graph.saved_tensors_hooks``. We count each distinct storage once
(``untyped_storage().data_ptr()``), at its full ``nbytes()``, and leave out the storages of parameters and
buffers (a frozen ``Linear`` saves its weight to compute grad-input, but that weight is resident anyway). Only
storages still alive when the loss is ready count: a branch whose graph was dropped during forward holds no
memory. Graphs a method rebuilds *during* backward (MEFT) are transient and not seen here; the step peak
(:mod:`peftkit.measure.peak`) catches them.

Shape legend: b batch, t tokens.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

OUTSIDE = "(outside)"  # by_module key of tensors saved outside every module's forward (the loss)
# (model_output, batch) -> scalar loss; a one-argument (model_output) -> loss is accepted too.
LossFn = Callable[..., torch.Tensor]


# ---- saved tensors -------------------------------------------------------------------------------------


def default_loss_for(model: nn.Module) -> LossFn:
    """Cross-entropy of ``output.logits`` (or the output tensor) against ``batch["labels"]``, plus the
    auxiliary loss of ``model``'s methods (DEFT's density term), as a training step computes it."""
    from peftkit.core.apply import aux_loss

    def loss_fn(output: Any, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        logits = getattr(output, "logits", output)
        labels = batch["labels"]
        if logits.dim() == 3 and "decoder_input_ids" in batch:  # seq2seq: decoder outputs align with labels
            logits, labels = logits.flatten(0, 1), labels.flatten()
        elif logits.dim() == 3:  # causal LM: predict token t+1 from tokens <= t; logits (b, t, vocab)
            logits, labels = logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten()
        return nn.functional.cross_entropy(logits.float(), labels, ignore_index=-100) + aux_loss(model)

    return loss_fn


def model_inputs(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The keyword inputs of ``model(**inputs)``: the batch without its ``labels``."""
    return {k: v for k, v in batch.items() if k != "labels"}


def _storage_key(t: torch.Tensor) -> tuple[int, int]:
    """(data_ptr, nbytes) of the storage behind ``t``; tensors without one count at their own size."""
    try:
        s = t.untyped_storage()
        return s.data_ptr(), s.nbytes()
    except (RuntimeError, NotImplementedError):  # sparse / exotic subclasses
        return -id(t), t.numel() * t.element_size()


@dataclass
class SavedActivations:
    """What one forward + loss saved for backward.

    Attributes:
        bytes: distinct non-parameter storages alive after the forward, in bytes.
        tensors: pack-hook calls that counted (the same storage may be saved many times).
        storages: distinct storages counted.
        excluded_param_saves: pack-hook calls on parameter / buffer storages (not counted).
        by_module: bytes per innermost module path that saved them (``(outside)``: the loss, say;
            ``''``: the root module itself).
        by_dtype: bytes per dtype name.
    """

    bytes: int
    tensors: int
    storages: int
    excluded_param_saves: int
    by_module: dict[str, int] = field(default_factory=dict)
    by_dtype: dict[str, int] = field(default_factory=dict)


def saved_activations(
    model: nn.Module,
    batch: Mapping[str, torch.Tensor],
    loss_fn: LossFn | None = None,
    *,
    backward: bool = False,
) -> SavedActivations:
    """Run one forward + loss and account for every tensor saved for backward (see the module docstring).

    Args:
        model: called as ``model(**inputs)`` with the batch minus ``labels``; its train/eval mode is kept.
        batch: model inputs plus whatever ``loss_fn`` needs (``labels``).
        loss_fn: ``(model_output, batch) -> scalar`` or ``(model_output) -> scalar``; defaults to
            ``default_loss_for(model)`` (cross-entropy + ``pk.aux_loss``).
        backward: run ``loss.backward()`` afterwards (fills ``.grad``); otherwise the graph is just freed.

    Returns:
        A ``SavedActivations`` with the total and breakdowns by module and dtype.
    """
    loss_fn = loss_fn or default_loss_for(model)
    owned = {_storage_key(t)[0] for t in [*model.parameters(), *model.buffers()]}
    names = {id(m): n for n, m in model.named_modules()}
    stack: list[str] = []
    saved: list[tuple[weakref.ref[torch.Tensor], str]] = []
    excluded = 0

    def pre(mod: nn.Module, *_: Any) -> None:
        stack.append(names.get(id(mod), "?"))

    def post(mod: nn.Module, *_: Any) -> None:
        if stack:
            stack.pop()

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal excluded
        if _storage_key(t)[0] in owned:
            excluded += 1
        else:
            saved.append((weakref.ref(t), stack[-1] if stack else OUTSIDE))
        return t

    handles = [m.register_forward_pre_hook(pre) for m in model.modules()]
    handles += [m.register_forward_hook(post) for m in model.modules()]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(**model_inputs(batch))
            loss = loss_fn(out, batch) if _arity(loss_fn) != 1 else loss_fn(out)
    finally:
        for h in handles:
            h.remove()
    seen: set[int] = set()
    result = SavedActivations(0, 0, 0, excluded)
    for ref, where in saved:
        t = ref()
        if t is None:  # its graph was dropped during forward: it holds no memory now
            continue
        result.tensors += 1
        ptr, nbytes = _storage_key(t)
        if ptr in seen:
            continue
        seen.add(ptr)
        result.storages += 1
        result.bytes += nbytes
        result.by_module[where] = result.by_module.get(where, 0) + nbytes
        dt = str(t.dtype).removeprefix("torch.")
        result.by_dtype[dt] = result.by_dtype.get(dt, 0) + nbytes
    if backward and loss.requires_grad:
        loss.backward()
    saved.clear()
    del out, loss
    return result


def _arity(fn: Callable[..., Any]) -> int:
    """Positional parameters ``fn`` takes (2 when it cannot be told, e.g. a builtin)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 2
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return 2
    return sum(p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
               and p.default is inspect.Parameter.empty for p in params)


def saved_activation_bytes(
    model: nn.Module,
    batch: Mapping[str, torch.Tensor],
    loss_fn: LossFn | None = None,
    *,
    backward: bool = False,
) -> int:
    """Bytes of the distinct non-parameter tensors one forward + loss saves for backward.

    See ``saved_activations`` for the arguments and the breakdowns.
    """
    return saved_activations(model, batch, loss_fn, backward=backward).bytes
