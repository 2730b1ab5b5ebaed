"""The wrappers that place bottleneck adapters around a backbone's own modules.

Houlsby et al. 2019 (arXiv 1902.00751), eq. for one adapter:   h <- h + W_up f(W_down h)
    W_down : ``Bottleneck.down`` (d_in -> m),  f : ``Bottleneck.act``,  W_up : ``Bottleneck.up`` (m -> d_out)
    (the bottleneck itself is the shared :class:`peftkit.layers.bottleneck.Bottleneck`, near-identity init)
He et al. 2022 (arXiv 2110.04366), parallel adapter:           h <- FFN(x) + s * W_up f(W_down x)
    x : the FFN's input,  s : ``scale``

Every wrapper keeps the wrapped module as ``base_layer`` and declares its own parameters through
``adapter_params()`` (core.protocols.AdapterModule); the base layer's parameters are never listed.

Shapes: b batch, t tokens, d model width, m bottleneck width; every tensor here is (..., d) or (..., m).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from peftkit.layers.bottleneck import Bottleneck


def _names(prefix: str, module: nn.Module) -> list[str]:
    return [f"{prefix}.{n}" for n, _ in module.named_parameters()]


class _Wrapper(nn.Module):
    """Attributes the wrapper lacks (``weight``, ``in_features`` ...) are read from ``base_layer``, since
    backbone code inspects its layers (T5 reads ``wo.weight.dtype``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_layer":
                raise
            return getattr(super().__getattr__("base_layer"), name)


class SerialAdapter(_Wrapper):
    """Houlsby / Pfeiffer placement: ``y = base(x); return y + adapter(y)``.

    Wrapping an output projection (``attn_out`` / ``mlp_out``) puts the adapter before the residual sum
    and the post-LN LayerNorm of BERT, and before the residual sum of a pre-LN block, as in the paper.
    """

    def __init__(self, base_layer: nn.Module, adapter: Bottleneck) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.adapter = adapter

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        y = self.base_layer(x, *args, **kwargs)   # (..., d)
        return y + self.adapter(y)

    def adapter_params(self) -> list[str]:
        return _names("adapter", self.adapter)


class ParallelAdapter(_Wrapper):
    """Parallel placement around a whole FFN module: ``base(x) + s * adapter(x)`` (He et al. 2022)."""

    def __init__(self, base_layer: nn.Module, adapter: Bottleneck, scale: float = 1.0) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.adapter = adapter
        self.scale = scale

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.base_layer(x, *args, **kwargs) + self.scale * self.adapter(x)

    def adapter_params(self) -> list[str]:
        return _names("adapter", self.adapter)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


class InputSlot:
    """A plain holder shared by a tap and its output wrapper (not a module: nothing registered twice)."""

    def __init__(self) -> None:
        self.value: torch.Tensor | None = None


class ParallelInputTap(_Wrapper):
    """Wraps the first FFN projection (``mlp_in``) of a split FFN and records its input x for the branch."""

    def __init__(self, base_layer: nn.Module, slot: InputSlot) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.slot = slot

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        self.slot.value = x   # (..., d), read once by the matching ParallelOutput
        return self.base_layer(x, *args, **kwargs)

    def adapter_params(self) -> list[str]:
        return []


class ParallelOutput(_Wrapper):
    """Wraps the last FFN projection (``mlp_out``) of a split FFN (BERT's intermediate + output.dense).

    ``base(h) + s * adapter(x)`` where x is the FFN input recorded by the block's ParallelInputTap; the sum
    then flows into the block's own residual + LayerNorm, exactly where the FFN output goes.
    """

    def __init__(self, base_layer: nn.Module, adapter: Bottleneck, slot: InputSlot,
                 scale: float = 1.0) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.adapter = adapter
        self.slot = slot
        self.scale = scale

    def forward(self, h: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        x, self.slot.value = self.slot.value, None   # release the reference as soon as it is used
        if x is None:
            raise RuntimeError(
                "parallel adapter: the FFN input was not recorded; mlp_in must run before mlp_out"
            )
        return self.base_layer(h, *args, **kwargs) + self.scale * self.adapter(x)

    def adapter_params(self) -> list[str]:
        return _names("adapter", self.adapter)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"

