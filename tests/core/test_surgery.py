"""Surgery by dotted path and its undo record."""

from __future__ import annotations

import pytest
from torch import nn

from peftkit.core.surgery import UndoRecord, get_module, set_module


def _model() -> nn.Module:
    return nn.Sequential(nn.ModuleList([nn.Sequential(nn.Linear(2, 3), nn.ReLU())]), nn.Linear(3, 1))


def test_get_and_set_in_lists_and_attributes() -> None:
    m = _model()
    assert get_module(m, "") is m
    old = set_module(m, "0.0.1", nn.GELU())
    assert isinstance(old, nn.ReLU) and isinstance(m[0][0][1], nn.GELU)
    holder = nn.Module()
    holder.fc = nn.Linear(1, 1)
    old_fc = set_module(holder, "fc", nn.Identity())
    assert isinstance(old_fc, nn.Linear) and isinstance(holder.fc, nn.Identity)


def test_undo_reverts_in_reverse_order() -> None:
    m = _model()
    lin, head = m[0][0][0], m[1]
    rec = UndoRecord()
    rec.wrap(m, "0.0.0", lambda old: nn.Sequential(old, nn.Tanh()))
    rec.replace(m, "0.0.0", nn.Identity())     # a second edit on the same path
    rec.replace(m, "1", nn.Identity())
    rec.add_module(m, "extra", nn.Linear(1, 1))
    log: list[str] = []
    rec.on_undo(lambda: log.append("first registered, last run"))
    rec.undo()
    assert m[0][0][0] is lin and m[1] is head and not hasattr(m, "extra")
    assert log == ["first registered, last run"]
    rec.undo()   # idempotent: nothing left
    assert m[0][0][0] is lin


def test_add_module_refuses_existing_name() -> None:
    m = _model()
    with pytest.raises(ValueError, match="already has an attribute '0'"):
        UndoRecord().add_module(m, "0", nn.Identity())
