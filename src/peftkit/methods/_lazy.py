"""Lazy apply functions: a method's heavy imports (peft, transformers) happen when it is applied."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy(module: str, fn: str) -> Callable[..., Any]:
    """A callable that imports ``module`` on first call and forwards to ``module.fn``."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), fn)(*args, **kwargs)

    call.__name__ = fn
    call.__qualname__ = f"{module}.{fn}"
    return call
