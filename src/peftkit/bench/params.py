"""Trainable parameters per (backbone, method stack), from ``pk.param_report``, with the head apart.

DESIGN.md section 5: count what ``requires_grad`` says after ``apply``; papers differ on whether the task head
counts, so every row carries both ``trainable_pct`` (head included) and ``method_pct`` (head excluded).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from peftkit.bench.memory import method_configs


def param_row(model: nn.Module) -> dict[str, Any]:
    """Counts of a model after ``pk.apply``.

    Returns:
        ``total_params``, ``trainable_params``, ``trainable_pct`` (head included), ``head_params``
        (trainable head), ``method_params`` (trainable, head excluded), ``method_pct`` and
        ``trainable/<owner>`` per owner.
    """
    from peftkit.core.params import param_report

    rep = param_report(model)
    head = rep.owner("head").trainable
    method = rep.trainable - head
    row: dict[str, Any] = {
        "total_params": rep.total,
        "trainable_params": rep.trainable,
        "trainable_pct": rep.trainable_pct,
        "head_params": head,
        "method_params": method,
        "method_pct": 100.0 * method / max(rep.total, 1),
    }
    row.update({f"trainable/{r.owner}": r.trainable for r in rep.rows})
    return row


def param_table(
    backbone: str,
    stacks: Mapping[str, list[dict[str, Any]]],
    *,
    task: str = "classification",
    **backbone_kwargs: Any,
) -> list[dict[str, Any]]:
    """One ``param_row`` per labelled method stack, each on the same backbone (applied, counted, removed).

    Args:
        backbone: a registered backbone name.
        stacks: label -> method config dicts, e.g. ``{"LoRA r=8": [{"name": "lora", "rank": 8}]}``.
        task / backbone_kwargs: passed to the backbone builder (e.g. ``num_labels=5``).
    """
    import peftkit as pk

    model = pk.load_backbone(backbone, task=task, **backbone_kwargs)
    rows = []
    for label, methods in stacks.items():
        root = pk.apply(model, method_configs(methods))
        rows.append({"label": label, "backbone": backbone, **param_row(root)})
        model = pk.remove(root)
    return rows
