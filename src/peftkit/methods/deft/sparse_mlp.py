"""A sparse MLP for inference: the work of the units zeroed by ``pk.sparsify`` is skipped.

Non-gated MLP (BERT, MPNet, point transformer): ``y = W_out h + b`` with ``h`` mostly zero. Only the
non-zero entries are used, per token, through ``embedding_bag`` over the rows of ``W_out^T`` (laid out
[d, o], so each unit's weights are one contiguous row; no gathered copy):

    y[t] = sum over j with h[t, j] != 0 of h[t, j] * W_out^T[j, :] + b

Gated MLP (Llama, T5 v1.1): the gate activation is thresholded first (``ActivationThreshold.last_keep``);
the up-projection computes only the rows of the units active in any token of the call (their union),
``u[:, S] = x W_up[S]^T + b_up[S]`` (zeros elsewhere), and the down-projection is the one above. A call
whose density (fraction of non-zero h, or of the union for the up-projection) exceeds ``max_density`` runs
dense: past that break-even the gather costs more than it saves. By default the limit is the measured
break-even for the call's token count (``density_limit``).

Outputs equal the dense thresholded model's up to fp32 summation order. ``sparse_mlp(model)`` installs
it on a sparsified model (undone with the rest by ``pk.remove``); ``sparse_mlp(model, False)`` takes it out.

Shape legend: n tokens (batch x positions), d MLP units, o output features, i input features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from peftkit.core.errors import UnsupportedError
from peftkit.core.spec import BackboneSpec
from peftkit.core.state import get_state
from peftkit.core.surgery import set_module
from peftkit.methods.deft.threshold import ActivationThreshold, FoldedBias

# break-even densities measured by ``peftkit bench sparse_speed`` (CPU, 1 thread): a one-token call (decoding)
# pays below ~50% (SmolLM2 gated MLP), a 48-token call below ~6% (MiniLM, where only W_out can be skipped)
ONE_TOKEN_MAX_DENSITY = 0.5
MULTI_TOKEN_MAX_DENSITY = 0.05


def density_limit(max_density: float | None, n_tokens: int) -> float:
    """The density above which a call runs dense: ``max_density``, or the measured default for n tokens."""
    if max_density is not None:
        return max_density
    return ONE_TOKEN_MAX_DENSITY if n_tokens == 1 else MULTI_TOKEN_MAX_DENSITY


class SparseDown(nn.Module):
    """Down-projection that skips zero inputs: ``embedding_bag`` over the rows of ``W^T`` [d, o]."""

    def __init__(self, linear: nn.Linear, max_density: float | None = None) -> None:
        super().__init__()
        self.dense = linear  # kept (registered) so pk.remove / sparse_mlp(model, False) restore it
        self.register_buffer("weight_t", linear.weight.detach().t().contiguous(), persistent=False)  # [d, o]
        self.max_density = max_density

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        d = h.shape[-1]
        flat = h.reshape(-1, d)  # [n, d]
        hit = flat != 0
        nnz = int(hit.sum())
        if nnz > density_limit(self.max_density, flat.shape[0]) * flat.numel():
            return self.dense(h)
        rows, cols = hit.nonzero(as_tuple=True)  # [nnz], row-major: tokens in order
        starts = torch.zeros(flat.shape[0], dtype=torch.long, device=h.device)
        if flat.shape[0] > 1:
            starts[1:] = torch.bincount(rows, minlength=flat.shape[0]).cumsum(0)[:-1]
        y = F.embedding_bag(cols, self.weight_t, starts, mode="sum", per_sample_weights=flat[rows, cols])
        if self.dense.bias is not None:
            y = y + self.dense.bias
        return y.reshape(*h.shape[:-1], y.shape[-1])


class SparseUp(nn.Module):
    """Up-projection of a gated MLP computing only the rows of units the gate keeps (union over tokens)."""

    def __init__(self, linear: nn.Linear, gate: ActivationThreshold,
                 max_density: float | None = None) -> None:
        super().__init__()
        self.dense = linear
        self.gate = [gate]  # a plain list: the gate is registered where it lives
        self.max_density = max_density

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep = self.gate[0].last_keep
        d = self.dense.out_features
        if keep is None or keep.shape[-1] != d:
            return self.dense(x)
        active = keep.reshape(-1, d).any(0)  # [d]: the union over tokens
        idx = active.nonzero(as_tuple=True)[0]  # [k]
        if idx.numel() > density_limit(self.max_density, keep.reshape(-1, d).shape[0]) * d:
            return self.dense(x)
        w = self.dense.weight.index_select(0, idx)  # [k, i], contiguous rows
        b = self.dense.bias.index_select(0, idx) if self.dense.bias is not None else None
        out = x.new_zeros(*x.shape[:-1], d)
        out[..., idx] = F.linear(x, w, b)
        return out


def _plain_linear(module: nn.Module, path: str) -> nn.Linear:
    inner = module.inner if isinstance(module, FoldedBias) else module
    if type(inner) is not nn.Linear:
        raise UnsupportedError(f"sparse MLP: '{path}' is a {type(inner).__name__}, not a plain nn.Linear; "
                               "merge the adapter on it first (or leave the sparse MLP off)")
    return inner


def sparse_mlp(model: nn.Module, enable: bool = True, max_density: float | None = None) -> nn.Module:
    """Install (or with ``enable=False`` remove) the sparse MLP on a model sparsified by ``pk.sparsify``.

    Raises:
        UnsupportedError: the model is not sparsified, or a projection carries an unmerged adapter.
    """
    state = get_state(model)
    if state is None or "sparsify" not in state.method_names():
        raise UnsupportedError("sparse_mlp needs a sparsified model: call pk.sparsify(model, ...) first")
    _install(state.spec, state.base, enable, max_density)
    entry = next(a for a in state.applied if a.name == "sparsify")
    if enable and not getattr(entry, "sparse_mlp_chained", False):  # pk.remove takes the sparse MLP out first
        entry.undo = _chain(entry.undo, lambda: _install(state.spec, state.base, False, max_density))
        entry.sparse_mlp_chained = True  # type: ignore[attr-defined]
    return model


def _install(spec: BackboneSpec, base: nn.Module, enable: bool, max_density: float | None) -> None:
    for s in spec.stacks:
        if "mlp_act" not in s.roles:
            continue
        acts = spec.role_paths(base, "mlp_act", stack=s.name)
        outs = spec.role_paths(base, "mlp_out", stack=s.name)
        ins = spec.role_paths(base, "mlp_in", stack=s.name) if "mlp_gate" in s.roles else [None] * len(acts)
        for act_path, out_path, in_path in zip(acts, outs, ins):
            gate = next((g for g in base.get_submodule(act_path).modules()
                         if isinstance(g, ActivationThreshold)), None)
            if gate is None:
                raise UnsupportedError(f"sparse MLP: no threshold at '{act_path}'")
            gate.record_keep = enable and in_path is not None
            _swap(base, out_path, enable, lambda lin: SparseDown(lin, max_density), max_density)
            if in_path is not None:
                _swap(base, in_path, enable, lambda lin, g=gate: SparseUp(lin, g, max_density), max_density)


def _swap(base: nn.Module, path: str, enable: bool, make: object, max_density: float | None) -> None:
    mod = base.get_submodule(path)
    holder, name = (mod, "inner") if isinstance(mod, FoldedBias) else (None, path)
    cur = mod.inner if isinstance(mod, FoldedBias) else mod
    if enable and isinstance(cur, (SparseDown, SparseUp)):
        cur.max_density = max_density  # installed already: a new limit
        return
    if enable:
        new = make(_plain_linear(cur, path))  # type: ignore[operator]
    elif not enable and isinstance(cur, (SparseDown, SparseUp)):
        new = cur.dense
    else:
        return
    if holder is not None:
        holder.inner = new
    else:
        set_module(base, name, new)


def _chain(first: object, then: object) -> object:
    def undo() -> None:
        then()  # type: ignore[operator]
        first()  # type: ignore[operator]
    return undo
