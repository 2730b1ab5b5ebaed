"""Find, wrap and replace submodules by dotted path, keeping an undo record."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn


def get_module(root: nn.Module, path: str) -> nn.Module:
    """The submodule at ``path`` ("" is the root)."""
    return root.get_submodule(path) if path else root


def _parent(root: nn.Module, path: str) -> tuple[nn.Module, str]:
    parent_path, _, name = path.rpartition(".")
    return get_module(root, parent_path), name


def set_module(root: nn.Module, path: str, new: nn.Module) -> nn.Module:
    """Put ``new`` at ``path`` and return what was there."""
    parent, name = _parent(root, path)
    old = parent[int(name)] if isinstance(parent, (nn.ModuleList, nn.Sequential)) else getattr(parent, name)
    if isinstance(parent, (nn.ModuleList, nn.Sequential)):
        parent[int(name)] = new
    else:
        setattr(parent, name, new)
    return old


@dataclass
class UndoRecord:
    """What a method changed, so it can be reverted in reverse order."""

    steps: list[Callable[[], None]] = field(default_factory=list)

    def replace(self, root: nn.Module, path: str, new: nn.Module) -> nn.Module:
        """Replace the module at ``path`` by ``new``; remember how to put the old one back."""
        old = set_module(root, path, new)
        self.steps.append(lambda: set_module(root, path, old))
        return old

    def wrap(self, root: nn.Module, path: str, make: Callable[[nn.Module], nn.Module]) -> nn.Module:
        """Replace the module at ``path`` by ``make(old)`` (the wrapper keeps the old one inside)."""
        new = make(get_module(root, path))
        self.replace(root, path, new)
        return new

    def add_module(self, parent: nn.Module, name: str, module: nn.Module) -> None:
        """Attach a new child module; undo deletes it."""
        if hasattr(parent, name):
            raise ValueError(f"{type(parent).__name__} already has an attribute '{name}'")
        parent.add_module(name, module)
        self.steps.append(lambda: delattr(parent, name))

    def on_undo(self, fn: Callable[[], None]) -> None:
        self.steps.append(fn)

    def undo(self) -> None:
        while self.steps:
            self.steps.pop()()
