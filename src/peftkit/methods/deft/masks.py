"""Per-forward attention masks for DEFT's probes, read by forward pre-hooks on the model.

"From PEFT to DEFT" (Runwal, Pedapati, Chen, arXiv 2402.01911) averages its density term over every position;
with ``exclude_padding`` / ``exclude_virtual_tokens`` the probes need the mask of the current forward.
Forward pre-hooks on the backbone root and on the sub-model that runs each stack store the masks of the
current forward (encoder: ``attention_mask``; T5 decoder: ``decoder_attention_mask``, else
``labels != -100``); the root hook also counts forwards, so a probe that did not run in the last forward is
noticed. The virtual tokens prepended by a method come from ``PeftkitState.virtual_tokens()`` (each method
declares them in its ``Applied``). The hooks are registered by ``apply_deft`` and removed by undo; the hook
objects hold the context, so ``copy.deepcopy(model)`` gets its own.

Shape legend: b batch, t positions.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from peftkit.core.errors import UnsupportedError
from peftkit.core.spec import BackboneSpec
from peftkit.core.state import get_state
from peftkit.core.surgery import UndoRecord

IGNORE_INDEX = -100  # label value transformers' losses skip; marks decoder padding in T5 labels


def virtual_tokens(root: nn.Module) -> int:
    """Positions the applied methods prepend to every sequence (0 when nothing is applied)."""
    state = get_state(root)
    return state.virtual_tokens() if state is not None else 0


def _signature(module: nn.Module) -> inspect.Signature | None:
    try:
        return inspect.signature(module.forward)
    except (TypeError, ValueError):
        return None


def _arguments(sig: inspect.Signature | None, args: tuple[Any, ...],
               kwargs: dict[str, Any]) -> dict[str, Any]:
    """The call's arguments by name (positional ones bound through the forward's signature)."""
    if not args or sig is None:
        return kwargs
    try:
        return {**sig.bind_partial(*args, **kwargs).arguments, **kwargs}
    except TypeError:
        return kwargs


class _RootHook:
    """Pre-hook on the backbone root: starts a forward, reads every stack's mask (T5 decoder from labels)."""

    def __init__(self, ctx: MaskContext, sig: inspect.Signature | None) -> None:
        self.ctx, self.sig = ctx, sig

    def __call__(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ctx = self.ctx
        ctx.generation += 1
        ctx.in_root = True
        got = _arguments(self.sig, args, kwargs)
        enc = got.get(ctx.mask_key)
        if ctx.encoder_decoder:
            dec = got.get("decoder_attention_mask")
            labels = got.get("labels")
            if dec is None and isinstance(labels, torch.Tensor) and got.get("decoder_input_ids") is None:
                dec = labels != IGNORE_INDEX  # T5 shifts labels into decoder inputs; -100 marks padding
            ctx.masks = {ctx.stacks[0]: enc, **{s: dec for s in ctx.stacks[1:]}}
        else:
            ctx.masks = {s: enc for s in ctx.stacks}
        ctx.virtual = virtual_tokens(module)


class _RootDone:
    """Forward hook on the root (also on exceptions): the root's forward is over."""

    def __init__(self, ctx: MaskContext) -> None:
        self.ctx = ctx

    def __call__(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self.ctx.in_root = False


class _OwnerHook:
    """Pre-hook on the module that runs one stack (``bert``, ``model``, T5 ``encoder`` / ``decoder``).

    peft's prefix tuning calls that module directly (not the root), and a stack may get its own mask
    (T5's decoder stack gets ``decoder_attention_mask``); a 2-D mask seen here wins over the root's.
    """

    def __init__(self, ctx: MaskContext, stacks: tuple[str, ...], sig: inspect.Signature | None) -> None:
        self.ctx, self.stacks, self.sig = ctx, stacks, sig

    def __call__(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        mask = _arguments(self.sig, args, kwargs).get(self.ctx.mask_key)
        for s in self.stacks:
            if isinstance(mask, torch.Tensor) and mask.dim() == 2:
                self.ctx.masks[s] = mask
            elif not self.ctx.in_root:
                self.ctx.masks[s] = None  # called on its own without a mask: every position counts


class MaskContext:
    """Masks of the current forward, shared by the probes of one model (filled by forward pre-hooks).

    Attributes:
        generation: forwards of the root seen so far (probes record the generation they ran in).
        masks: stack name -> mask [b, t_mask] of the current forward, or None (no mask given).
        virtual: prompt-tuning tokens prepended in the current forward.
    """

    def __init__(self, stacks: tuple[str, ...], encoder_decoder: bool,
                 mask_key: str = "attention_mask") -> None:
        self.stacks = stacks
        self.encoder_decoder = encoder_decoder
        self.mask_key = mask_key
        self.generation = 0
        self.in_root = False
        self.masks: dict[str, torch.Tensor | None] = {}
        self.virtual = 0

    @classmethod
    def install(cls, base: nn.Module, spec: BackboneSpec, record: UndoRecord,
                mask_key: str = "attention_mask") -> MaskContext:
        """A context fed by hooks on ``base`` and on each stack's owner module; undo removes them."""
        ctx = cls(tuple(s.name for s in spec.stacks), len(spec.stacks) > 1, mask_key)
        handles = [base.register_forward_pre_hook(_RootHook(ctx, _signature(base)), with_kwargs=True),
                   base.register_forward_hook(_RootDone(ctx), always_call=True)]
        owners: dict[str, list[str]] = {}
        for s in spec.stacks:
            first = s.blocks.split(".")[0]
            if first != s.blocks:  # blocks live under a sub-model: hook it
                owners.setdefault(first, []).append(s.name)
        for path, names in owners.items():
            owner = base.get_submodule(path)
            handles.append(owner.register_forward_pre_hook(_OwnerHook(ctx, tuple(names), _signature(owner)),
                                                           with_kwargs=True))
        for h in handles:
            record.on_undo(h.remove)
        return ctx

    def valid_for(self, stack: str, b: int, t: int, *, padding: bool, virtual: bool,
                  device: Any = None) -> torch.Tensor | None:
        """Bool [b, t] of the positions that count in ``stack`` now, or None when every one counts.

        Args:
            padding: leave out positions whose attention mask is 0.
            virtual: leave out the prompt-tuning tokens (prepended, so the first ``self.virtual`` positions;
                encoder / only stack).
        """
        valid: torch.Tensor | None = None
        mask = self.masks.get(stack)
        if padding and isinstance(mask, torch.Tensor):
            if mask.dim() != 2 or mask.shape[0] != b:
                raise UnsupportedError(
                    f"DEFT: cannot align a mask of shape {tuple(mask.shape)} with the {stack} activation's "
                    f"(b, t) = {(b, t)}; pass a 2-D attention mask [batch, tokens]"
                )
            if mask.shape[1] < t:
                raise UnsupportedError(
                    f"DEFT: the {stack} attention mask has {mask.shape[1]} positions but the MLP sees {t}; "
                    "a method adds positions DEFT does not know about (set exclude_padding=False)"
                )
            # a longer mask also covers cached / prefix keys that never reach the MLP: keep the last t
            valid = mask[:, mask.shape[1] - t:].to(device=device, dtype=torch.bool)
        n_virtual = self.virtual if (virtual and stack == self.stacks[0]) else 0
        if n_virtual:
            valid = torch.ones(b, t, dtype=torch.bool, device=device) if valid is None else valid.clone()
            valid[:, :n_virtual] = False
        return valid
