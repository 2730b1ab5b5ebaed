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

from peftkit.core.errors import ConfigError, UnsupportedError
from peftkit.methods.meft.autograd import rev_apply
from peftkit.methods.meft.blocks import _CACHE_KEYS, BlockOps
from peftkit.methods.meft.coupling import Coupling


class ReversibleStack(nn.Module):
    """The pretrained blocks (children "0".."n-1") plus their couplings; iterating it yields one runner.

    Attributes:
        couplings: one :class:`Coupling` per block (they own the adapters).
        num_rev: how many of the lower couplings use the reversible backward.
        use_reversible_backward: False runs every coupling through plain autograd (the oracle / fallback).
        stream_dtype, anchor_every, tolerance, calibration_margin, calibration_batches, adaptive_margin,
            recalibrate_at, sticky_anchors, calibration_nudges, check_every, on_error: see
            :class:`~peftkit.methods.meft.config.MEFT`.
        anchors: the reversible layers whose inputs are kept exactly (None until ``"auto"`` calibrated).
        margin_scale: the factor by which ``adaptive_margin`` has grown the calibration margin (1 at first).
        calibrations: how many batches the current ``"auto"`` anchors were calibrated on (0 = not yet).
        kept_anchors: with ``sticky_anchors``, the anchors the next fresh calibration keeps (empty otherwise).
        calibration_errors: per reversible layer, the relative reconstruction error measured by the
            calibration without an anchor there (empty before it ran).
        last_reconstruction_error: per reversible layer, the sampled relative error of the reconstructed
            input in the last checked backward (0 at anchors; empty before one ran).
    """

    def __init__(self, blocks: Sequence[nn.Module], couplings: Sequence[Coupling], ops: Sequence[BlockOps],
                 num_rev: int, use_reversible_backward: bool = True, stream_dtype: str = "auto",
                 anchor_every: int | str = "auto", tolerance: float = 1e-3, calibration_margin: float = 4.0,
                 check_every: int = 1, on_error: str = "warn", calibration_batches: int = 1,
                 adaptive_margin: bool = False, recalibrate_at: float = 1.0,
                 sticky_anchors: bool = False, calibration_nudges: int | str = 0) -> None:
        super().__init__()
        for i, b in enumerate(blocks):
            self.add_module(str(i), b)
        self.couplings = nn.ModuleList(couplings)
        self.ops = tuple(ops)  # plain tuple: the blocks are registered above
        self.num_rev = int(num_rev)
        self.use_reversible_backward = bool(use_reversible_backward)
        self.stream_dtype, self.anchor_every = stream_dtype, anchor_every
        self.tolerance, self.calibration_margin = float(tolerance), float(calibration_margin)
        self.check_every, self.on_error = int(check_every), on_error
        self.calibration_batches, self.adaptive_margin = int(calibration_batches), bool(adaptive_margin)
        self.recalibrate_at, self.sticky_anchors = float(recalibrate_at), bool(sticky_anchors)
        self.kept_anchors: frozenset[int] = frozenset()
        self.calibration_nudges = calibration_nudges
        self._nudges = 0  # resolved by run() for each calibration (it sees the model dtype and autocast)
        self.margin_scale = 1.0
        self.calibrations = 0
        self.anchors: frozenset[int] | None = None
        if anchor_every != "auto":
            k = int(anchor_every)
            self.anchors = frozenset(range(0, self.num_rev, k)) if k > 0 else frozenset()
        self.calibration_errors: list[float] = []
        self.last_reconstruction_error: list[float] = []
        self._backwards = 0
        self._warned = False

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
        """The dtype of the two streams for hidden states of ``dtype`` (see ``MEFT.stream_dtype``).

        Raises:
            ConfigError: ``stream_dtype="model"`` on a 16-bit model (16-bit streams are refused).
        """
        if self.stream_dtype == "auto":
            return torch.float64 if dtype == torch.float64 else torch.float32
        if self.stream_dtype == "model":
            if dtype.is_floating_point and torch.finfo(dtype).bits < 32:
                name = str(dtype).removeprefix("torch.")
                raise ConfigError(f"MEFT stream_dtype='model' on a {name} model would make 16-bit "
                                  "streams, which are refused: the inverse divides by lam or beta every "
                                  "layer, so their rounding grows ~10x per layer; use 'auto' (fp32)")
            return dtype
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
        if rev:
            if self.anchors is None or (self.anchor_every == "auto"
                                        and self.calibrations < self.calibration_batches):
                self._nudges = self.nudges_per_layer(hidden)
                self.calibrate(x.detach(), ctx)
            self._backwards += 1
            checked = self.check_every > 0 and (self._backwards - 1) % self.check_every == 0
            sample = sample_index(x.numel(), x.device) if checked else None
            if checked and len(self.anchors or ()) >= self.num_rev:  # nothing is reconstructed: no report
                self.last_reconstruction_error = [0.0] * self.num_rev
            x1, x2 = rev_apply(self.couplings[: self.num_rev], x, ctx, self.anchors or frozenset(), sample,
                               self._report if checked else None)
            rest = self.couplings[self.num_rev:]
        else:
            x1, x2 = x, x
            rest = self.couplings
        for c in rest:
            x1, x2 = c(x1, x2, ctx)
        return self.ops[0].wrap_output(((x1 + x2) / 2).to(hidden.dtype))

    @staticmethod
    def computes_in_16_bits(hidden: torch.Tensor) -> bool:
        """Whether F and G compute in 16 bits: a bf16/fp16 model, or a 16-bit autocast on ``hidden``'s
        device."""
        dev = hidden.device.type
        return torch.finfo(hidden.dtype).bits < 32 or (
            torch.is_autocast_enabled(dev) and torch.finfo(torch.get_autocast_dtype(dev)).bits < 32)

    def nudges_per_layer(self, hidden: torch.Tensor) -> int:
        """``calibration_nudges`` resolved: ``"auto"`` is ``LOW_PRECISION_NUDGES`` when F and G compute in
        16 bits, else 0."""
        if self.calibration_nudges != "auto":
            return int(self.calibration_nudges)
        return LOW_PRECISION_NUDGES if self.computes_in_16_bits(hidden) else 0

    def calibrate(self, hidden: torch.Tensor, ctx: dict[str, Any]) -> frozenset[int]:
        """Choose the anchors of ``anchor_every="auto"`` on this batch (see ``checks.calibrate_anchors``).

        The threshold is ``tolerance / (calibration_margin * margin_scale)``, measured in full and on the
        check's sample; with nudges (``calibration_nudges``), a layer whose nudged inversion exceeds
        ``tolerance`` is an anchor too. The first call after a (re)start chooses afresh (keeping
        ``kept_anchors``); the next ``calibration_batches - 1`` calls keep the anchors chosen so far and add
        what their batch needs.
        """
        from peftkit.methods.meft.checks import calibrate_anchors

        keep = self.anchors if self.anchors is not None and self.calibrations > 0 else self.kept_anchors
        sample = sample_index(hidden.numel(), hidden.device) if self.check_every > 0 else None
        anchors, errs = calibrate_anchors(self.couplings[: self.num_rev], hidden, ctx,
                                          self.tolerance / (self.calibration_margin * self.margin_scale),
                                          keep, sample, self._nudges, self.tolerance)
        self.anchors, self.calibration_errors = frozenset(anchors), errs
        self.calibrations += 1
        return self.anchors

    def _report(self, errors: list[tuple[int, float]]) -> None:
        """Receives the sampled reconstruction errors of one backward; warns once or raises over tolerance."""
        from peftkit.methods.meft.checks import ReconstructionError

        per_layer = [0.0] * self.num_rev
        for i, e in errors:
            per_layer[i] = e if e == e else float("inf")
        self.last_reconstruction_error = per_layer
        worst = max(range(self.num_rev), key=per_layer.__getitem__)
        err = per_layer[worst]
        if self.anchor_every == "auto" and err > self.recalibrate_at * self.tolerance:
            # the weights moved or this batch differs from the calibration ones: choose anchors again
            if self.adaptive_margin and err > self.tolerance:  # aim lower by the measured excess
                self.margin_scale *= min(err / self.tolerance, 1e6)
            if self.sticky_anchors:  # keep what was chosen, and anchor the topmost layer over the bound
                top = max(i for i, e in enumerate(per_layer) if e > self.recalibrate_at * self.tolerance)
                self.kept_anchors = (self.anchors or frozenset()) | {top}
            self.anchors, self.calibrations = None, 0
        if err <= self.tolerance:
            return
        msg = (f"MEFT reconstruction: the input of reversible layer {worst} was reconstructed with relative "
               f"error {per_layer[worst]:.3g} > tolerance {self.tolerance:g}, so the gradients of the layers "
               f"below are inaccurate")
        fix = "; use anchor_every='auto' (or a smaller k), stream_dtype='float64', or fewer num_rev_layers"
        if self.on_error == "raise":
            raise ReconstructionError(msg + fix)
        if self.anchor_every == "auto":
            fix = "; the anchors are chosen again at the next step (calibrated on that batch)"
        msg += fix
        if not self._warned:
            self._warned = True
            warnings.warn(msg, RuntimeWarning, stacklevel=2)

    def _check_blocks(self) -> None:
        """MEFT calls the blocks' sub-modules, never ``block.forward``: a block replaced after MEFT was
        applied would be bypassed silently. (Methods that wrap blocks say so in ``Applied.wraps_blocks``;
        MEFT refuses to follow them, and says it wraps blocks itself.)"""
        for i, ops in enumerate(self.ops):
            if self._modules[str(i)] is not ops.block:
                raise UnsupportedError(f"block {i} of the MEFT stack was replaced after MEFT was applied; "
                                       "MEFT calls the original block's sub-modules; that method cannot run")

    def extra_repr(self) -> str:
        return (f"blocks={len(self)}, num_rev={self.num_rev}, "
                f"reversible_backward={self.use_reversible_backward}, anchors={sorted(self.anchors or [])}")


SAMPLE_SIZE = 4096  # elements per stream compared by the reconstruction check
# calibration_nudges="auto" under 16-bit compute (measured on SmolLM2-135M + BBC under bf16 autocast, 2 x 20
# training steps: see docs/methods/meft.md, "Numerical stability")
LOW_PRECISION_NUDGES = 4


def sample_index(numel: int, device: torch.device) -> torch.Tensor:
    """A fixed random set of flat indices into one stream, from a private generator (the global RNG, and so
    dropout, is not touched)."""
    if numel <= SAMPLE_SIZE:
        return torch.arange(numel, device=device)
    g = torch.Generator().manual_seed(numel)
    return torch.randint(numel, (SAMPLE_SIZE,), generator=g).to(device)
