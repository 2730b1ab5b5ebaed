"""MEFT's F and G: adapters and the pretrained sub-blocks they wrap, per backbone family.

"Make Pre-trained Model Reversible" (Liao, Tan, Monz; NeurIPS 2023; arXiv 2306.00477), Fig. 4 c/d:
F and G are built from the PLM's own layer (with its residual connections and norms) and bottleneck adapters
``A(x) = W_up Drop(act(W_down x))``, both matrices N(0, 0.02²), biases 0, so that A(x) ≈ 0 at init.

Sub-blocks, called through the BackboneSpec roles (``attn``, ``attn_norm``, ``mlp_in``, ``mlp_out``, ``mlp``,
``mlp_norm``) on the block's own modules (the block stays where it is in the model):

    post-LN (BERT, RoBERTa, MPNet):  attention(x) = LN1(x + Drop(Attn(x)) [+ A(x)])
                                     ffn(h)       = LN2(h + Drop(W_out act(W_in h)) + A(h))   (parallel)
    pre-LN (Llama):                  attention(x) = x + Attn(N1(x)) [+ A(N1(x))]
                                     ffn(h)       = h + MLP(N2(h)) + A(N2(h))
    pre-LN point transformer:        same as Llama on h = x + pos, with the block's DropPath on each branch
    layer(x) = ffn(attention(x))

In a post-LN block the adapter is added to the norm's input, as in the reference ``RevBertOutput``
(``LN(Drop(W_out act(W_in h)) + A(h) + h)``). For MEFT3's attention adapter we use the same parallel form;
the reference puts a sequential adapter after the attention output projection (see docs/methods/meft.md).

Shape legend: b batch, t tokens, d model width, r adapter width.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import nn

from peftkit.core.errors import ConfigError, UnsupportedError
from peftkit.core.spec import BackboneSpec

POST_LN_FAMILIES = ("bert", "roberta", "xlm-roberta", "mpnet")
PRE_LN_FAMILIES = ("llama",)
POINT_FAMILIES = ("point_mae",)
SUPPORTED = POST_LN_FAMILIES + PRE_LN_FAMILIES + POINT_FAMILIES
_TUPLE_OUTPUT = ("mpnet",)                # families whose layer returns (hidden_states, ...)
_CACHE_KEYS = ("past_key_values", "past_key_value")

_ACTS = {
    "gelu": lambda: nn.GELU(), "gelu_new": lambda: nn.GELU(approximate="tanh"),
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "gelu_pytorch_tanh": lambda: nn.GELU(approximate="tanh"),
    "relu": lambda: nn.ReLU(), "silu": lambda: nn.SiLU(), "swish": lambda: nn.SiLU(),
}


class MeftAdapter(nn.Module):
    """Bottleneck adapter ``[b, t, d] -> [b, t, d]``: up(Drop(act(down(x)))); weights N(0, std²), bias 0."""

    def __init__(self, dim: int, rank: int, act: str, dropout: float, init_std: float) -> None:
        super().__init__()
        if act not in _ACTS:
            raise ConfigError(f"MEFT adapter_act '{act}' is unknown; choose one of: "
                              f"{', '.join(sorted(_ACTS))}")
        self.down, self.up = nn.Linear(dim, rank), nn.Linear(rank, dim)
        self.act, self.drop = _ACTS[act](), nn.Dropout(dropout)
        for lin in (self.down, self.up):
            nn.init.normal_(lin.weight, std=init_std)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.drop(self.act(self.down(x))))

    def adapter_params(self) -> list[str]:
        return ["down.weight", "down.bias", "up.weight", "up.bias"]


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


class BlockOps:
    """The attention and FFN sub-blocks of one pretrained block, called through its roles.

    Not an nn.Module on purpose: the block stays registered where it was, so parameter names do not change.
    """

    def __init__(self, block: nn.Module, roles: dict[str, str], family: str) -> None:
        self.block, self.family = block, family
        self.post_ln = family in POST_LN_FAMILIES
        need = ("attn", "attn_norm", "mlp_in", "mlp_out", "mlp_norm") if self.post_ln else \
            ("attn", "attn_norm", "mlp", "mlp_norm")
        missing = [r for r in need if r not in roles]
        if missing:
            raise UnsupportedError(f"MEFT needs the roles {missing} of a '{family}' block; its spec lacks "
                                   "them")
        self.paths = {r: roles[r] for r in need}
        if self.post_ln:  # BertIntermediate(h) = act(W_in h); BertOutput(u, res) = LN(Drop(W_out u) + res)
            self.paths["ffn_in"] = roles["mlp_in"].rpartition(".")[0]
            self.paths["ffn_out"] = roles["mlp_out"].rpartition(".")[0]
            if self.paths["ffn_out"] != roles["mlp_norm"].rpartition(".")[0]:
                raise UnsupportedError(f"MEFT: '{family}' block's mlp_out and mlp_norm have different "
                                       "parents")
        self._sig = inspect.signature(block.forward)

    def _m(self, role: str) -> nn.Module:
        # Resolved per call: a method stacked after MEFT (LoRA, DEFT) may have replaced a submodule.
        return self.block.get_submodule(self.paths[role])

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """The block's call arguments after hidden_states, by name (what HF passes to every layer)."""
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
        return (h,) if self.family in _TUPLE_OUTPUT else h

    def _drop_path(self, x: torch.Tensor) -> torch.Tensor:
        dp = getattr(self.block, "drop_path", None)  # point transformer: stochastic depth per branch
        return dp(x) if dp is not None else x

    def attention(self, x: torch.Tensor, ctx: dict[str, Any],
                  adapter: nn.Module | None = None) -> torch.Tensor:
        """The attention sub-block with its residual and norm (and a parallel adapter if given)."""
        if self.post_ln:
            hook = _added_to_input(self._m("attn_norm"), adapter(x)) if adapter is not None else nullcontext()
            with hook:
                return _first(self._m("attn")(x, **ctx))
        if self.family in POINT_FAMILIES:
            h = x + ctx["pos"]
            u = self._m("attn_norm")(h)
            out = h + self._drop_path(self._m("attn")(u))
        else:
            u = self._m("attn_norm")(x)
            out = x + _first(self._m("attn")(u, **ctx))
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

    def __init__(self, kind: str, adapter: MeftAdapter, ops: BlockOps | None) -> None:
        super().__init__()
        if kind not in self.KINDS or (kind != "adapter" and ops is None):
            raise ValueError(f"bad SubNet kind {kind!r}")
        self.kind, self.adapter = kind, adapter
        object.__setattr__(self, "ops", ops)  # plain attribute: not a second registration of the block

    def forward(self, x: torch.Tensor, ctx: dict[str, Any]) -> torch.Tensor:
        """``[b, t, d] -> [b, t, d]``, computed in the model's dtype and returned in the stream's dtype."""
        dtype = self.adapter.down.weight.dtype
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


def check_family(spec: BackboneSpec) -> None:
    """Raise UnsupportedError unless MEFT knows how to split this family's blocks into F and G."""
    if spec.family not in SUPPORTED:
        raise UnsupportedError(
            f"MEFT supports the families {', '.join(SUPPORTED)} (BERT-style post-LN encoders, Llama-style "
            f"pre-LN decoders, the point transformer); '{spec.family}' is not one of them"
        )
    if len(spec.stacks) != 1:
        raise UnsupportedError(f"MEFT converts single-stack models; '{spec.family}' has "
                               f"{len(spec.stacks)} stacks")


def check_stateless(block: nn.Module, where: str) -> None:
    """Refuse modules with running statistics: recomputation in backward would update them twice."""
    for name, m in block.named_modules():
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)) and \
                getattr(m, "track_running_stats", False):
            raise UnsupportedError(
                f"MEFT cannot make '{where}.{name}' ({type(m).__name__}) reversible: its running statistics "
                "would be updated again when backward recomputes the layer; use a LayerNorm/RMSNorm model"
            )


def method_hooks(block: nn.Module) -> list[str]:
    """Modules of the peftkit methods that put forward (pre-)hooks on ``block`` (e.g. Point-PEFT). MEFT calls
    the block's sub-modules, never ``block.forward``, so such hooks would silently not run. (Hooks of
    measurement tools or HF's output capturing only observe; they are not counted.)"""
    hooks = [*block._forward_pre_hooks.values(), *block._forward_hooks.values()]
    names = [getattr(h, "__module__", "") or "" for h in hooks]
    return [n for n in names if n.startswith("peftkit.methods.") and not n.startswith("peftkit.methods.meft")]


def backbone_defaults(model: nn.Module) -> tuple[str, float]:
    """(adapter activation, adapter dropout) the reference takes from the backbone config."""
    cfg = getattr(model, "config", None)
    act = getattr(cfg, "hidden_act", "gelu") if cfg is not None else "gelu"
    drop = getattr(cfg, "hidden_dropout_prob", 0.0) if cfg is not None else 0.0
    return (act if isinstance(act, str) else "gelu"), float(drop or 0.0)


__all__ = ["MeftAdapter", "BlockOps", "SubNet", "check_family", "check_stateless", "backbone_defaults",
           "method_hooks", "SUPPORTED"]
