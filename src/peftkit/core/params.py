"""Freezing and counting, derived from what each method declares (never from parameter-name substrings)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

from peftkit.core.protocols import AdapterModule
from peftkit.core.state import PeftkitState, get_state


def adapter_parameters(modules: Iterable[nn.Module]) -> list[nn.Parameter]:
    """The parameters declared by ``adapter_params()`` of every AdapterModule in (or under) ``modules``."""
    out: list[nn.Parameter] = []
    seen: set[int] = set()
    for top in modules:
        for m in top.modules():
            if isinstance(m, AdapterModule):
                local = dict(m.named_parameters(recurse=True))
                for name in m.adapter_params():
                    p = local[name]
                    if id(p) not in seen:
                        seen.add(id(p))
                        out.append(p)
    return out


def numel(p: nn.Parameter) -> int:
    """Logical element count; a 4-bit packed parameter (bitsandbytes) holds two values per byte."""
    n = p.numel()
    if getattr(p, "quant_state", None) is not None:
        n *= 2
    return n


def owners(model: nn.Module) -> dict[int, str]:
    """Parameter id -> owner: a method name, ``head`` or ``base``."""
    state = get_state(model)
    out: dict[int, str] = {}
    if state is not None:
        for a in state.applied:
            for p in a.params():
                out.setdefault(id(p), a.name)
        if state.train_head:
            for p in state.head_parameters():
                out.setdefault(id(p), "head")
    return out


def freeze_all_but_adapters(model: nn.Module) -> None:
    """``requires_grad`` is True exactly for the applied methods' parameters and (if trained) the head."""
    owned = owners(model)
    for p in model.parameters():
        p.requires_grad_(id(p) in owned)


@dataclass(frozen=True)
class ParamRow:
    owner: str
    params: int
    trainable: int


@dataclass(frozen=True)
class ParamReport:
    """Parameter counts per owner; ``str()`` prints peft's familiar line and a table."""

    rows: tuple[ParamRow, ...]

    @property
    def total(self) -> int:
        return sum(r.params for r in self.rows)

    @property
    def trainable(self) -> int:
        return sum(r.trainable for r in self.rows)

    @property
    def trainable_pct(self) -> float:
        return 100.0 * self.trainable / max(self.total, 1)

    def owner(self, name: str) -> ParamRow:
        for r in self.rows:
            if r.owner == name:
                return r
        return ParamRow(name, 0, 0)

    def as_dict(self) -> dict[str, int | float]:
        d: dict[str, int | float] = {
            "trainable_params": self.trainable,
            "total_params": self.total,
            "trainable_pct": self.trainable_pct,
        }
        for r in self.rows:
            d[f"params/{r.owner}"] = r.params
            d[f"trainable/{r.owner}"] = r.trainable
        return d

    def __str__(self) -> str:
        lines = [
            f"trainable params: {self.trainable:,d} || all params: {self.total:,d} "
            f"|| trainable%: {self.trainable_pct:.4f}",
            f"{'owner':<16}{'params':>14}{'trainable':>14}",
        ]
        lines += [f"{r.owner:<16}{r.params:>14,d}{r.trainable:>14,d}" for r in self.rows]
        return "\n".join(lines)


def param_report(model: nn.Module) -> ParamReport:
    """Count parameters per owner (frozen base, each method, head), from ``requires_grad`` after apply."""
    owned = owners(model)
    state: PeftkitState | None = get_state(model)
    order = ["base"] + ([a.name for a in state.applied] if state else []) + ["head"]
    counts = {k: [0, 0] for k in order}
    for p in model.parameters():
        o = owned.get(id(p), "base")
        counts.setdefault(o, [0, 0])
        counts[o][0] += numel(p)
        counts[o][1] += numel(p) if p.requires_grad else 0
    rows = tuple(ParamRow(k, v[0], v[1]) for k, v in counts.items() if v[0] or k != "head")
    return ParamReport(rows)
