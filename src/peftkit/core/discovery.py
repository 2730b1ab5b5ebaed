"""The discovery hook: how the registries get filled without ``core`` importing the layers above it.

``peftkit/__init__`` (the package top) installs a discovery function with :func:`set_discovery`; the
registries and spec inference call :func:`discover` before they look anything up. Because ``peftkit.core``
is a subpackage of ``peftkit``, the top always runs (and installs the hook) before any core module is used,
even after ``import peftkit.core.registry`` alone. The hook runs once; a call made while it is running (a
module being discovered looks something up at import time) returns at once instead of recursing.
"""

from __future__ import annotations

from collections.abc import Callable

_hook: Callable[[], None] | None = None
_state = "idle"  # "idle" -> "running" -> "done"


def set_discovery(hook: Callable[[], None]) -> None:
    """Install the function that imports every built-in backbone, dataset and method (and plugins)."""
    global _hook, _state
    _hook = hook
    _state = "idle"


def discover() -> None:
    """Run the installed discovery function once (no-op without one, while it runs, and after it ran)."""
    global _state
    if _hook is None or _state != "idle":
        return
    _state = "running"
    try:
        _hook()
    except BaseException:
        _state = "idle"  # a failed import is retried (and re-raised) at the next lookup
        raise
    _state = "done"


__all__ = ["set_discovery", "discover"]
