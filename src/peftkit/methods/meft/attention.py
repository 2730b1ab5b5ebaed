"""Attention with dropout in bounded memory, for the layers MEFT recomputes.

PyTorch's fused CPU/CUDA scaled-dot-product kernels do not all implement dropout; with ``dropout_p > 0`` a
call falls back to the math path, which materialises, for the backward of one layer, the scores, the
probabilities, the dropout mask and the dropped probabilities (four [b, h, t, t] tensors: 96 MiB at BERT-base,
t = 512, b = 2) plus their gradients. In MEFT's backward one layer's graph is alive at a time, so that is the
step's peak. ``DropoutAttention`` computes the same function,

    out = Drop_p(softmax(scale * Q K^T + mask)) V,

head group by head group: forward keeps only Q, K, V (and the RNG state), backward recomputes one head group
at a time with the same dropout masks (the RNG state is replayed inside ``fork_rng``) and differentiates it.
Only one group's [b, h_g, t, t] tensors exist at once.

``bounded_attention()`` is a ``TorchFunctionMode`` that routes ``F.scaled_dot_product_attention`` calls with
``dropout_p > 0`` to it (calls without dropout keep the fused kernels). MEFT enters it around every F and G
call (forward, recomputation, inversion, and the plain-autograd path alike), so all of them draw the same
masks. Shape legend: b batch, h heads, t query tokens, s key tokens, e head width.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

GROUP_BYTES = 4 * 2**20  # the [b, h_g, t, s] fp32 scores of one head group stay under this (>= one head)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, p: float,
            causal: bool, scale: float) -> torch.Tensor:
    """The math path on one head group: [b, h_g, t, e] x [b, h_g, s, e] -> [b, h_g, t, e]."""
    s = (q @ k.transpose(-2, -1)) * scale  # [b, h_g, t, s]
    if causal:
        t, n = s.shape[-2:]
        s = s.masked_fill(torch.ones(t, n, dtype=torch.bool, device=s.device).triu(n - t + 1), -math.inf)
    if mask is not None:
        s = s.masked_fill(~mask, -math.inf) if mask.dtype == torch.bool else s + mask
    a = torch.softmax(s, dim=-1)
    return F.dropout(a, p, training=True) @ v


def _groups(q: torch.Tensor, k: torch.Tensor) -> list[slice]:
    b, h, t = q.shape[:3]
    per_head = b * t * k.shape[-2] * 4
    size = max(1, min(h, GROUP_BYTES // max(per_head, 1)))
    return [slice(i, min(i + size, h)) for i in range(0, h, size)]


def _mask_part(mask: torch.Tensor | None, g: slice) -> torch.Tensor | None:
    if mask is None or mask.dim() < 4 or mask.shape[1] == 1:
        return mask
    return mask[:, g]


class DropoutAttention(torch.autograd.Function):
    """``(q, k, v, mask, p, causal, scale) -> out``, [b, h, t, e]; saves q, k, v, mask and the RNG state."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                p: float, causal: bool, scale: float) -> torch.Tensor:
        ctx.p, ctx.causal, ctx.scale = p, causal, scale
        dev = q.device.type
        ctx.autocast = (dev, torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev))
        ctx.cpu_rng = torch.get_rng_state()
        ctx.cuda_rng = torch.cuda.get_rng_state(q.device) if q.device.type == "cuda" else None
        with torch.no_grad():
            out = torch.cat([_attend(q[:, g], k[:, g], v[:, g], _mask_part(mask, g), p, causal, scale)
                             for g in _groups(q, k)], dim=1)
        ctx.save_for_backward(q, k, v, mask)
        return out

    @staticmethod
    def backward(ctx: Any, dout: torch.Tensor) -> tuple[Any, ...]:
        q, k, v, mask = ctx.saved_tensors
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        devices = [q.device] if ctx.cuda_rng is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(ctx.cpu_rng)
            if ctx.cuda_rng is not None:
                torch.cuda.set_rng_state(ctx.cuda_rng, q.device)
            dev, enabled, dtype = ctx.autocast
            for g in _groups(q, k):  # the same order as forward: the same dropout masks
                with torch.enable_grad(), torch.autocast(dev, dtype=dtype, enabled=enabled):
                    qg, kg, vg = (x[:, g].detach().requires_grad_(True) for x in (q, k, v))
                    out = _attend(qg, kg, vg, _mask_part(mask, g), ctx.p, ctx.causal, ctx.scale)
                dq[:, g], dk[:, g], dv[:, g] = torch.autograd.grad(out, (qg, kg, vg), dout[:, g])
                del out, qg, kg, vg
        return dq, dk, dv, None, None, None, None


def _sdpa_args(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
    out = dict(zip(names, args))
    out.update(kwargs)
    return out


class bounded_attention(TorchFunctionMode):  # noqa: N801  (used as a context manager, like no_grad)
    """Routes ``F.scaled_dot_product_attention`` with dropout to :class:`DropoutAttention`."""

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            a = _sdpa_args(args, kwargs)
            mask = a.get("attn_mask")
            q, k, v = a["query"], a["key"], a["value"]
            if a.get("dropout_p", 0.0) > 0 and q.dim() == 4 and not (isinstance(mask, torch.Tensor)
                                                                    and mask.requires_grad):
                if a.get("enable_gqa", False) and k.shape[-3] != q.shape[-3]:
                    rep = q.shape[-3] // k.shape[-3]
                    k, v = k.repeat_interleave(rep, dim=-3), v.repeat_interleave(rep, dim=-3)
                scale = a.get("scale") or 1.0 / math.sqrt(q.shape[-1])
                return DropoutAttention.apply(q, k, v, mask, float(a["dropout_p"]), bool(a.get("is_causal")),
                                              float(scale))
        return func(*args, **kwargs)
