"""Registries of methods, backbones and datasets: one decorator each, checked names.

Duplicate names raise; an unknown name is an error that lists the known ones. Lookups first run the
discovery hook (:mod:`peftkit.core.discovery`) that the package top installs, so the built-ins and plugins are
registered without this module importing any layer above ``core``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from peftkit.core.discovery import discover
from peftkit.core.errors import ConfigError


@dataclass(frozen=True)
class MethodEntry:
    name: str
    config_cls: type
    apply: Callable[..., Any]  # apply(model, spec, config) -> Applied
    summary: str = ""


_METHODS: dict[str, MethodEntry] = {}
_BACKBONES: dict[str, tuple[Callable[..., Any], str]] = {}
_DATASETS: dict[str, tuple[Callable[..., Any], str]] = {}
_TOKENIZERS: dict[str, Callable[[], Any]] = {}


def register_method(name: str, config_cls: type, apply: Callable[..., Any], summary: str = "") -> None:
    """Register a method: ``apply(model, spec, config)`` edits the model in place, returns an ``Applied``."""
    if name in _METHODS:
        raise ValueError(f"method '{name}' is already registered")
    _METHODS[name] = MethodEntry(name, config_cls, apply, summary)


def _builder_decorator(
    table: dict[str, tuple[Callable[..., Any], str]], kind: str, name: str, summary: str
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in table:
            raise ValueError(f"{kind} '{name}' is already registered")
        table[name] = (fn, summary or (fn.__doc__ or "").strip().split("\n")[0])
        return fn

    return deco


def register_backbone(name: str, summary: str = "") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: ``@register_backbone("minilm")`` on a builder ``(task, num_labels, **kw) -> nn.Module``."""
    return _builder_decorator(_BACKBONES, "backbone", name, summary)


def register_dataset(name: str, summary: str = "") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: ``@register_dataset("bbc_news")`` on a builder returning dataset splits."""
    return _builder_decorator(_DATASETS, "dataset", name, summary)


def register_tokenizer(backbone: str, load: Callable[[], Any]) -> None:
    """Register how to load the tokenizer of a text backbone (the backbone module calls this at import).

    Datasets that tokenise for a backbone find its tokenizer here, so ``data`` never imports ``backbones``.
    Registering a backbone again replaces its loader (a user pointing a backbone at another vocabulary).
    """
    _TOKENIZERS[backbone] = load


def _unknown(kind: str, name: str, known: dict[str, Any]) -> ConfigError:
    return ConfigError(f"unknown {kind} '{name}'; choose one of: {', '.join(sorted(known))}")


def get_method(name: str) -> MethodEntry:
    discover()
    if name not in _METHODS:
        raise _unknown("method", name, _METHODS)
    return _METHODS[name]


def method_for_config(config: Any) -> MethodEntry:
    discover()
    for entry in _METHODS.values():
        if type(config) is entry.config_cls:
            return entry
    raise ConfigError(f"{type(config).__name__} is not the config of a registered method")


def get_backbone(name: str) -> Callable[..., Any]:
    discover()
    if name not in _BACKBONES:
        raise _unknown("backbone", name, _BACKBONES)
    return _BACKBONES[name][0]


def get_dataset(name: str) -> Callable[..., Any]:
    discover()
    if name not in _DATASETS:
        raise _unknown("dataset", name, _DATASETS)
    return _DATASETS[name][0]


def get_tokenizer(backbone: str) -> Any:
    """The tokenizer of a registered text backbone, loaded by the function its backbone registered.

    Raises:
        ConfigError: ``backbone`` has no tokenizer (the message lists the backbones that have one).
    """
    discover()
    if backbone not in _TOKENIZERS:
        raise ConfigError(
            f"no tokenizer for backbone '{backbone}'; text backbones with one: "
            f"{', '.join(sorted(_TOKENIZERS))} (register yours with peftkit.core.registry.register_tokenizer)"
        )
    return _TOKENIZERS[backbone]()


def list_methods() -> dict[str, str]:
    discover()
    return {k: v.summary for k, v in sorted(_METHODS.items())}


def list_backbones() -> dict[str, str]:
    discover()
    return {k: v[1] for k, v in sorted(_BACKBONES.items())}


def list_datasets() -> dict[str, str]:
    discover()
    return {k: v[1] for k, v in sorted(_DATASETS.items())}


def unregister(kind: str, name: str) -> None:
    """Remove a registered ``"method"``, ``"backbone"``, ``"dataset"`` or ``"tokenizer"`` (tests, plugins)."""
    tables: dict[str, dict[str, Any]] = {"method": _METHODS, "backbone": _BACKBONES, "dataset": _DATASETS,
                                         "tokenizer": _TOKENIZERS}
    if kind not in tables:
        raise ConfigError(f"unknown registry '{kind}'; choose one of: {', '.join(tables)}")
    tables[kind].pop(name, None)
