"""The modules DEFT puts into a model: a per-forward mask context, one probe per MLP activation, one loss.

"From PEFT to DEFT" (Runwal, Pedapati, Chen, arXiv 2402.01911). The probe wraps the block's ``mlp_act``
module (``a = f(x)``, BackboneSpec role) and, on every forward, keeps ``last_term = mean_b d[b, l]`` with
``d[b, l]`` from :func:`peftkit.methods.deft.density.per_sample_density`. ``DeftLoss`` (the AuxLossModule
``pk.aux_loss`` finds) returns ``sum over stacks g of weight_g * mean over (b, l in g) of d[b, l]``.

The attention mask reaches the probes through ``MaskContext``: forward pre-hooks on the backbone root and on
the sub-model that runs each stack store the masks of the current forward (encoder: ``attention_mask``; T5
decoder: ``decoder_attention_mask``, else ``labels != -100``); the root hook also counts forwards, so a probe
that did not run in the last forward is noticed. The hooks are registered by ``apply_deft`` and removed by
undo; the hook objects hold the context, so ``copy.deepcopy(model)`` gets its own.

Probe API for custom backward passes (MEFT's reversible backprop re-creates the term's gradient):
``probe.coef`` (weight of this layer's ``mean_b d[b]`` in the loss), ``probe.eps``, ``probe.last_term``,
and with ``probe.record_activation = True`` also ``probe.last_activation`` / ``probe.last_valid`` (the
tensors ``density_term_grad(a, eps, valid, coef)`` needs).

Shape legend: b batch, t positions, d MLP units.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from peftkit.core.errors import PeftkitError, UnsupportedError
from peftkit.core.spec import BackboneSpec
from peftkit.core.surgery import UndoRecord
from peftkit.methods.deft.density import per_sample_density

IGNORE_INDEX = -100  # label value transformers' losses skip; marks decoder padding in T5 labels


class DensityNaNError(PeftkitError, FloatingPointError):
    """DEFT's density term is NaN or infinite; the message names the layer."""


def prompt_virtual_tokens(base: nn.Module) -> int:
    """Virtual tokens a peft prompt-learning wrapper prepends to the inputs of ``base`` (0 if none).

    Prompt tuning / P-tuning tokens pass through every MLP; prefix-tuning tokens live in the key/value
    cache only and never reach an MLP, so they are not counted.
    """
    from peftkit.core.state import get_state

    state = get_state(base)
    n = 0
    for a in state.applied if state is not None else ():
        cfg = getattr(a.model, "active_peft_config", None) if a.model is not None else None
        if cfg is None or not getattr(cfg, "is_prompt_learning", False):
            continue
        kind = getattr(getattr(cfg, "peft_type", None), "value", str(getattr(cfg, "peft_type", "")))
        if kind not in ("PREFIX_TUNING", "CARTRIDGE"):
            n += int(cfg.num_virtual_tokens)
    return n


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
        ctx.virtual = prompt_virtual_tokens(module)


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


class DensityProbe(nn.Module):
    """Wraps one MLP activation module; returns its output unchanged and keeps this layer's density term.

    Attributes:
        inner: the wrapped activation module (GELU / SiLU / ...).
        name: its path in the backbone (used in error messages).
        stack: the stack it belongs to (``encoder`` / ``decoder``).
        coef: the loss weight of ``last_term`` (stack weight / number of layers in the stack).
        last_term: ``mean_b d[b]`` of the last forward (fp32 scalar, differentiable when grad is enabled).
        record_activation: also keep ``last_activation`` and ``last_valid`` (off by default: it would
            keep an activation alive between steps).
    """

    def __init__(self, inner: nn.Module, *, name: str, stack: str, eps: float, coef: float, ctx: MaskContext,
                 exclude_padding: bool = False, exclude_virtual_tokens: bool = False) -> None:
        super().__init__()
        self.inner = inner
        self.name, self.stack, self.eps, self.coef, self.ctx = name, stack, eps, coef, ctx
        self.exclude_padding, self.exclude_virtual_tokens = exclude_padding, exclude_virtual_tokens
        self.record_activation = False
        self.last_term: torch.Tensor | None = None
        self.last_activation: torch.Tensor | None = None
        self.last_valid: torch.Tensor | None = None
        self.fired_at = -1

    def valid(self, a: torch.Tensor) -> torch.Tensor | None:
        """The positions of ``a`` this probe counts in the current forward (None = all)."""
        if not (self.exclude_padding or self.exclude_virtual_tokens) or a.dim() != 3:
            return None
        return self.ctx.valid_for(self.stack, a.shape[0], a.shape[1], padding=self.exclude_padding,
                                  virtual=self.exclude_virtual_tokens, device=a.device)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        a = self.inner(x, *args, **kwargs)
        valid = self.valid(a)
        self.last_term = per_sample_density(a, self.eps, valid).mean()
        self.fired_at = self.ctx.generation
        if self.record_activation:
            self.last_activation, self.last_valid = a, valid
        return a

    def weighted_term(self) -> torch.Tensor:
        """``coef * last_term``: this layer's share of the loss."""
        if self.last_term is None:
            raise PeftkitError(f"DEFT probe at '{self.name}' has not run yet: call the model first")
        return self.coef * self.last_term

    def extra_repr(self) -> str:
        return f"name={self.name!r}, stack={self.stack!r}, eps={self.eps:g}, coef={self.coef:g}"


class DeftLoss(nn.Module):
    """The AuxLossModule of DEFT: the weighted density term of the last forward, checked for NaN / inf."""

    def __init__(self, probes: list[DensityProbe], ctx: MaskContext, check_finite: bool = True) -> None:
        super().__init__()
        self.probes = tuple(probes)  # a plain attribute: the probes live (and are registered) in the blocks
        self.ctx = ctx
        self.check_finite = check_finite

    def _current(self) -> list[DensityProbe]:
        stale = [p.name for p in self.probes if p.fired_at != self.ctx.generation]
        if self.ctx.generation == 0 and all(p.last_term is None for p in self.probes):
            raise PeftkitError("DEFT has no density term yet: run a forward pass before pk.aux_loss(model)")
        if stale:
            raise UnsupportedError(
                f"DEFT: the MLP activations at {stale[:3]}{'...' if len(stale) > 3 else ''} did not run in "
                "the last forward; a method applied with DEFT bypasses the backbone's mlp_act modules"
            )
        return list(self.probes)

    def layer_terms(self) -> dict[str, torch.Tensor]:
        """Layer path -> ``mean_b d[b, l]`` (unweighted) of the last forward."""
        return {p.name: p.last_term for p in self._current()}  # type: ignore[misc]

    def stack_terms(self) -> dict[str, torch.Tensor]:
        """Stack -> its unweighted ``L_density`` (mean over samples and layers) of the last forward."""
        out: dict[str, list[torch.Tensor]] = {}
        for p in self._current():
            out.setdefault(p.stack, []).append(p.last_term)  # type: ignore[arg-type]
        return {k: torch.stack(v).mean() for k, v in out.items()}

    def aux_loss(self) -> torch.Tensor:
        """``sum_g weight_g * mean_{b, l in g} d[b, l]`` of the last forward (a scalar)."""
        probes = self._current()
        terms = torch.stack([p.last_term for p in probes])  # type: ignore[misc]  # [L]
        if self.check_finite and not bool(torch.isfinite(terms.detach()).all()):
            self._raise_non_finite(probes, terms.detach())
        coefs = torch.tensor([p.coef for p in probes], dtype=terms.dtype, device=terms.device)  # [L]
        return (coefs * terms).sum()

    def _raise_non_finite(self, probes: list[DensityProbe], terms: torch.Tensor) -> None:
        bad = [i for i in range(len(probes)) if not bool(torch.isfinite(terms[i]))]
        p = probes[bad[0]]
        raise DensityNaNError(
            f"DEFT density term is {terms[bad[0]].item()} at layer '{p.name}' ({p.stack} stack; "
            f"{len(bad)} of {len(probes)} layers non-finite). a^2/(a^2+eps) (eps={p.eps:g}) is finite for "
            "every |a| < 1e19, so that layer's activation holds NaN/inf or overflows: look upstream of DEFT "
            "(learning rate, dtype)"
        )
