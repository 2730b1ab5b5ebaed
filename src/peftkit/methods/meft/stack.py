"""ReversibleStack: takes the place of a backbone's block list and runs it as MEFT's two-stream stack.

"Make Pre-trained Model Reversible" (Liao, Tan, Monz; NeurIPS 2023; arXiv 2306.00477):
both streams start from the embedding output, ``x1 = x2 = h0``; the lower ``num_rev`` couplings run through
:class:`RevBackprop` (reversible backward), the rest through plain autograd with the same maths; the output is
the mean of the two streams, ``(x1 + x2) / 2`` (reference ``RevBertEncoder``), which the backbone's own code
then feeds to its final norm / pooler / head.

How it plugs in without subclassing the backbone: the stack sits at the block list's path (``encoder.layer``,
``model.layers``, ``blocks``) and keeps the pretrained blocks registered under the same names ("0", "1", ...),
so parameter names, checkpoints and other methods' role paths are unchanged. The backbone's own loop
(``for layer in self.layer: h = layer(h, mask, ...)``) iterates it and finds **one** callable, which receives
exactly the per-forward arguments the backbone hands each block (attention mask, rotary cos/sin, position ids,
MPNet's position bias, the point transformer's ``pos`` and geometry) and runs the whole two-stream stack.
Indexing (``stack[i]``) and ``len(stack)`` still give the blocks.

Shape legend: b batch, t tokens, d model width.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from peftkit.core.errors import UnsupportedError
from peftkit.methods.meft.autograd import rev_apply
from peftkit.methods.meft.blocks import _CACHE_KEYS, BlockOps, method_hooks
from peftkit.methods.meft.coupling import Coupling


class ReversibleStack(nn.Module):
    """The pretrained blocks (children "0".."n-1") plus their couplings; iterating it yields one runner.

    Attributes:
        couplings: one :class:`Coupling` per block (they own the adapters).
        num_rev: how many of the lower couplings use the reversible backward.
        use_reversible_backward: False runs every coupling through plain autograd (the oracle / fallback).
        stream_dtype, anchor_every: see :class:`~peftkit.methods.meft.config.MEFT`.
        check_every, check_tolerance: training-time reconstruction-drift check (0 = off).
        last_reconstruction_error: per-layer relative errors of the last check (empty before one ran).
    """

    def __init__(self, blocks: Sequence[nn.Module], couplings: Sequence[Coupling], ops: Sequence[BlockOps],
                 num_rev: int, use_reversible_backward: bool = True, stream_dtype: str = "auto",
                 anchor_every: int = 0, check_every: int = 0, check_tolerance: float = 1e-2) -> None:
        super().__init__()
        for i, b in enumerate(blocks):
            self.add_module(str(i), b)
        self.couplings = nn.ModuleList(couplings)
        self.ops = tuple(ops)  # plain tuple: the blocks are registered above
        self.num_rev = int(num_rev)
        self.use_reversible_backward = bool(use_reversible_backward)
        self.stream_dtype, self.anchor_every = stream_dtype, int(anchor_every)
        self.check_every, self.check_tolerance = int(check_every), float(check_tolerance)
        self.last_reconstruction_error: list[float] = []
        self._train_forwards = 0

    # ---- the container face the backbone's loop sees -----------------------------------------------------

    def __len__(self) -> int:
        return len(self.ops)

    def __getitem__(self, idx: int | slice) -> Any:
        if isinstance(idx, slice):
            if range(len(self))[idx] != range(len(self)):
                raise UnsupportedError("MEFT runs all blocks as one reversible stack; a slice of them "
                                       "cannot run")
            return [self.run]
        return self._modules[str(range(len(self))[idx])]

    def __iter__(self) -> Iterator[Any]:
        return iter([self.run])

    # ---- the stack ------------------------------------------------------------------------------------

    def stream_dtype_for(self, dtype: torch.dtype) -> torch.dtype:
        """The dtype of the two streams for hidden states of ``dtype`` (see ``MEFT.stream_dtype``)."""
        if self.stream_dtype == "model":
            return dtype
        if self.stream_dtype == "auto":
            return torch.float64 if dtype in (torch.float32, torch.float64) else torch.float32
        return getattr(torch, self.stream_dtype)

    def reversible_now(self) -> bool:
        return self.use_reversible_backward and self.num_rev > 0 and torch.is_grad_enabled()

    def context(self, args: tuple[Any, ...], kwargs: dict[str, Any], recompute: bool) -> dict[str, Any]:
        """Per-forward block arguments by name; a KV cache is dropped when layers will be recomputed."""
        ctx = self.ops[0].bind(args, kwargs)
        if recompute:
            for k in _CACHE_KEYS:
                if k in ctx:
                    ctx[k] = None
            if "use_cache" in ctx:
                ctx["use_cache"] = False
        return ctx

    def run(self, hidden: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        """Called by the backbone's block loop with what it passes to one block; returns the stack output."""
        self._check_blocks()
        rev = self.reversible_now()
        ctx = self.context(args, kwargs, recompute=rev)
        x = hidden.to(self.stream_dtype_for(hidden.dtype))  # [b, t, d], both streams start here
        if self.training and torch.is_grad_enabled() and self.check_every:
            self._train_forwards += 1
            if self._train_forwards % self.check_every == 0:
                self._drift_check(x, args, kwargs)
        if rev:
            x1, x2 = rev_apply(self.couplings[: self.num_rev], x, ctx, self.anchor_every)
            rest = self.couplings[self.num_rev:]
        else:
            x1, x2 = x, x
            rest = self.couplings
        for c in rest:
            x1, x2 = c(x1, x2, ctx)
        return self.ops[0].wrap_output(((x1 + x2) / 2).to(hidden.dtype))

    def _check_blocks(self) -> None:
        """MEFT calls the blocks' sub-modules, never ``block.forward``: a replaced block, or a block another
        peftkit method hooks, would be bypassed silently."""
        for i, ops in enumerate(self.ops):
            if self._modules[str(i)] is not ops.block:
                raise UnsupportedError(f"block {i} of the MEFT stack was replaced after MEFT was applied; "
                                       "MEFT calls the original block's sub-modules; that method cannot run")
            if method_hooks(ops.block):
                raise UnsupportedError(f"block {i} has forward hooks of {method_hooks(ops.block)} (a "
                                       "method acting on whole blocks); MEFT bypasses block.forward, so they "
                                       "would not run")

    def _drift_check(self, hidden: torch.Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        from peftkit.methods.meft.checks import reconstruction_errors

        ctx = self.context(args, kwargs, recompute=True)
        errs = reconstruction_errors(self.couplings[: max(self.num_rev, 1)], hidden.detach(), ctx)
        self.last_reconstruction_error = errs
        worst = max(errs) if errs else 0.0
        if not worst <= self.check_tolerance:
            warnings.warn(
                f"MEFT reconstruction drift: relative error {worst:.3g} of a reconstructed layer input "
                f"exceeds check_tolerance={self.check_tolerance:g} (per layer: "
                f"{[f'{e:.2g}' for e in errs]}); gradients of the reversible layers are inaccurate. Use "
                "anchor_every, fewer num_rev_layers, stream_dtype='auto', or lam/beta closer to 1",
                RuntimeWarning, stacklevel=3,
            )

    def extra_repr(self) -> str:
        return (f"blocks={len(self)}, num_rev={self.num_rev}, "
                f"reversible_backward={self.use_reversible_backward}")
