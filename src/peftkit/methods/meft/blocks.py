"""MEFT's F and G: adapters and the pretrained sub-blocks they wrap, found through the BackboneSpec.

"Make Pre-trained Model Reversible" (Liao, Tan, Monz; NeurIPS 2023; arXiv 2306.00477), Fig. 4 c/d:
F and G are built from the PLM's own layer (with its residual connections and norms) and bottleneck adapters
``A(x) = W_up Drop(act(W_down x))``, both matrices N(0, 0.02²), biases 0, so that A(x) ≈ 0 at init
(:class:`peftkit.layers.bottleneck.Bottleneck` with ``init="normal"``).

Sub-blocks, called through the spec's roles (``attn``, ``attn_norm``, ``mlp_in``, ``mlp_out``, ``mlp``,
``mlp_norm``, optional ``drop_path``) on the block's own modules (the block stays where it is in the model),
chosen by ``BackboneSpec.layout``:

    post_ln (BERT, RoBERTa, MPNet):  attention(x) = LN1(x + Drop(Attn(x)) [+ A(x)])
                                     ffn(h)       = LN2(h + Drop(W_out act(W_in h)) + A(h))   (parallel)
    pre_ln (Llama, point transformer):
                                     attention(x) = h + DP(Attn(N1(h))) [+ A(N1(h))],  h = x + sum of adds
                                     ffn(h)       = h + DP(MLP(N2(h))) + A(N2(h))
    layer(x) = ffn(attention(x))

where "adds" are the block arguments named in ``StackSpec.input_adds`` (the point transformer's ``pos``) and
DP is the block's ``drop_path`` role (identity where it has none). A pre-LN attention module receives the
block arguments its ``forward`` accepts. In a post-LN block the adapter is added to the norm's input, as in
the reference ``RevBertOutput`` (``LN(Drop(W_out act(W_in h)) + A(h) + h)``). For MEFT3's attention adapter we
use the same parallel form; the reference puts a sequential adapter after the attention output projection
(see docs/methods/meft.md).

Shape legend: b batch, t tokens, d model width, r adapter width.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import nn

from peftkit.core.errors import UnsupportedError
from peftkit.core.spec import BackboneSpec, StackSpec
from peftkit.layers.bottleneck import Bottleneck
from peftkit.methods.meft.attention import bounded_attention

LAYOUTS = ("post_ln", "pre_ln")
_CACHE_KEYS = ("past_key_values", "past_key_value")
_NEEDS = {"post_ln": ("attn", "attn_norm", "mlp_in", "mlp_out", "mlp_norm"),
          "pre_ln": ("attn", "attn_norm", "mlp", "mlp_norm")}


def meft_adapter(dim: int, rank: int, act: str, dropout: float, init_std: float,
                 ref: torch.Tensor) -> Bottleneck:
    """MEFT's adapter ``[b, t, d] -> [b, t, d]``: up(Drop(act(down(x)))), W ~ N(0, init_std²), biases 0, on
    the device and in the dtype of ``ref``."""
    return Bottleneck(dim, rank, activation=act, init="normal", init_std=init_std, dropout=dropout,
                      dtype=ref.dtype, device=ref.device)


@contextmanager
def _added_to_input(module: nn.Module, extra: torch.Tensor) -> Iterator[None]:
    """While active, ``module``'s first input is ``x + extra`` (puts a parallel adapter inside a post-LN)."""
    handle = module.register_forward_pre_hook(lambda _m, args: (args[0] + extra, *args[1:]))
    try:
        yield
    finally:
        handle.remove()


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def _accepted(fn: Any) -> tuple[set[str], bool]:
    """Keyword names ``fn`` accepts after its first argument, and whether it takes ``**kwargs``."""
    params = list(inspect.signature(fn).parameters.values())[1:]
    return {p.name for p in params}, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


class BlockOps:
    """The attention and FFN sub-blocks of one pretrained block, called through its roles.

    Not an nn.Module on purpose: the block stays registered where it was, so parameter names do not change.
    """

    def __init__(self, block: nn.Module, stack: StackSpec, layout: str) -> None:
        self.block, self.layout = block, layout
        self.post_ln = layout == "post_ln"
        roles = stack.roles
        missing = [r for r in _NEEDS[layout] if r not in roles]
        if missing:
            raise UnsupportedError(f"MEFT needs the roles {missing} of a {layout} block; the spec lacks them")
        self.paths = {r: roles[r] for r in _NEEDS[layout]}
        if "drop_path" in roles:
            self.paths["drop_path"] = roles["drop_path"]
        self.input_adds, self.returns_tuple = tuple(stack.input_adds), stack.returns_tuple
        if self.post_ln:  # BertIntermediate(h) = act(W_in h); BertOutput(u, res) = LN(Drop(W_out u) + res)
            self.paths["ffn_in"] = roles["mlp_in"].rpartition(".")[0]
            self.paths["ffn_out"] = roles["mlp_out"].rpartition(".")[0]
            if self.paths["ffn_out"] != roles["mlp_norm"].rpartition(".")[0]:
                raise UnsupportedError("MEFT: a post-LN block's mlp_out and mlp_norm have different parents")
        self._sig = inspect.signature(block.forward)
        self._attn_kw = _accepted(self._m("attn").forward)

    def _m(self, role: str) -> nn.Module:
        # Resolved per call: a method stacked after MEFT (LoRA, DEFT) may have replaced a submodule.
        return self.block.get_submodule(self.paths[role])

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """The block's call arguments after hidden_states, by name (what the backbone passes each block)."""
        bound = self._sig.bind(None, *args, **kwargs).arguments
        bound.pop(next(iter(self._sig.parameters)))
        for name, p in self._sig.parameters.items():
            if p.kind is inspect.Parameter.VAR_KEYWORD and name in bound:
                bound.update(bound.pop(name))
        if bound.get("encoder_hidden_states") is not None:
            raise UnsupportedError("MEFT does not support cross-attention layers (encoder_hidden_states "
                                   "given)")
        return bound

    def wrap_output(self, h: torch.Tensor) -> Any:
        return (h,) if self.returns_tuple else h

    def _drop_path(self, x: torch.Tensor) -> torch.Tensor:
        return self._m("drop_path")(x) if "drop_path" in self.paths else x

    def _attn_args(self, ctx: dict[str, Any]) -> dict[str, Any]:
        names, var_kw = self._attn_kw
        return {k: v for k, v in ctx.items() if var_kw or k in names}

    def attention(self, x: torch.Tensor, ctx: dict[str, Any],
                  adapter: nn.Module | None = None) -> torch.Tensor:
        """The attention sub-block with its residual and norm (and a parallel adapter if given)."""
        if self.post_ln:
            hook = _added_to_input(self._m("attn_norm"), adapter(x)) if adapter is not None else nullcontext()
            with hook:
                return _first(self._m("attn")(x, **ctx))
        h = x
        for name in self.input_adds:
            h = h + ctx[name]
        u = self._m("attn_norm")(h)
        out = h + self._drop_path(_first(self._m("attn")(u, **self._attn_args(ctx))))
        return out if adapter is None else out + adapter(u)

    def ffn(self, h: torch.Tensor, adapter: nn.Module | None = None) -> torch.Tensor:
        """The FFN sub-block with its residual and norm (and a parallel adapter if given)."""
        if self.post_ln:
            res = h if adapter is None else h + adapter(h)
            return self._m("ffn_out")(self._m("ffn_in")(h), res)
        v = self._m("mlp_norm")(h)
        out = h + self._drop_path(self._m("mlp")(v))
        return out if adapter is None else out + adapter(v)


class SubNet(nn.Module):
    """F or G of one coupling: ``layer`` / ``attn`` / ``ffn`` of a pretrained block with an adapter, or an
    ``adapter`` alone. Only the adapter is registered here; the block is reached through ``ops``."""

    KINDS = ("layer", "attn", "ffn", "adapter")

    def __init__(self, kind: str, adapter: Bottleneck, ops: BlockOps | None,
                 bounded_attention: bool = True) -> None:
        super().__init__()
        if kind not in self.KINDS or (kind != "adapter" and ops is None):
            raise ValueError(f"bad SubNet kind {kind!r}")
        self.kind, self.adapter, self.bounded_attention = kind, adapter, bool(bounded_attention)
        object.__setattr__(self, "ops", ops)  # plain attribute: not a second registration of the block

    def forward(self, x: torch.Tensor, ctx: dict[str, Any]) -> torch.Tensor:
        """``[b, t, d] -> [b, t, d]``, computed in the model's dtype and returned in the stream's dtype."""
        dtype = self.adapter.down.weight.dtype
        # attention dropout without the math path's [b, h, t, t] graph (see meft/attention.py)
        bounded = self.bounded_attention and self.kind != "adapter" and self.ops.block.training  # dropout on
        with bounded_attention() if bounded else nullcontext():
            return self._compute(x.to(dtype), ctx).to(x.dtype)

    def _compute(self, x: torch.Tensor, ctx: dict[str, Any]) -> torch.Tensor:
        ops = self.ops
        if self.kind == "adapter":
            return self.adapter(x)
        if self.kind == "layer":
            return ops.ffn(ops.attention(x, ctx), self.adapter)
        if self.kind == "attn":
            return ops.attention(x, ctx, self.adapter)
        return ops.ffn(x, self.adapter)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"


def check_spec(spec: BackboneSpec) -> StackSpec:
    """The one stack MEFT converts; UnsupportedError unless the spec says how to split its blocks."""
    if spec.layout not in LAYOUTS:
        raise UnsupportedError(f"MEFT splits {' / '.join(LAYOUTS)} blocks; '{spec.family}' has layout "
                               f"'{spec.layout}'")
    if len(spec.stacks) != 1:
        raise UnsupportedError(f"MEFT converts single-stack models; '{spec.family}' has "
                               f"{len(spec.stacks)} stacks")
    stack = spec.stacks[0]
    missing = [r for r in _NEEDS[spec.layout] if r not in stack.roles]
    if missing:
        raise UnsupportedError(f"MEFT needs the roles {missing} of a {spec.layout} block; the spec of "
                               f"'{spec.family}' lacks them")
    return stack


def check_stateless(block: nn.Module, where: str) -> None:
    """Refuse modules with running statistics: recomputation in backward would update them twice."""
    for name, m in block.named_modules():
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)) and \
                getattr(m, "track_running_stats", False):
            raise UnsupportedError(
                f"MEFT cannot make '{where}.{name}' ({type(m).__name__}) reversible: its running statistics "
                "would be updated again when backward recomputes the layer; use a LayerNorm/RMSNorm model"
            )


def backbone_defaults(model: nn.Module) -> tuple[str, float]:
    """(adapter activation, adapter dropout) the reference takes from the backbone config."""
    cfg = getattr(model, "config", None)
    act = getattr(cfg, "hidden_act", "gelu") if cfg is not None else "gelu"
    drop = getattr(cfg, "hidden_dropout_prob", 0.0) if cfg is not None else 0.0
    return (act if isinstance(act, str) else "gelu"), float(drop or 0.0)


__all__ = ["BlockOps", "SubNet", "check_spec", "check_stateless", "backbone_defaults", "meft_adapter",
           "LAYOUTS"]
