"""Typed config dataclasses to and from plain dicts (JSON / YAML), and the one scalar checker they share.

YAML 1.1 reads ``1e-7`` (no dot) as the string ``"1e-7"``; :func:`coerce_scalar` (strict, for run and bench
configs) and :func:`config_from_dict` (for method configs, whose ``__post_init__`` checks the rest) both
turn a numeric string into a float where the field is a float, so no reader needs its own fix.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from peftkit.core.errors import ConfigError
from peftkit.core.registry import get_method


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    out = {}
    for f in dataclasses.fields(config):
        v = getattr(config, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def _strip_optional(hint: Any) -> tuple[Any, bool]:
    """(the first non-None member of a union, whether ``None`` is allowed); other hints unchanged."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        return next(a for a in args if a is not type(None)), type(None) in args
    return hint, False


def coerce_scalar(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against a scalar hint: ``bool``, ``int``, ``float`` or ``str`` (``| None`` allowed).

    Numbers become floats for ``float`` (numeric strings too: YAML reads ``1e-4`` as a string), integral
    floats become ints for ``int``, numbers become strings for ``str`` (``out_dir=2024``); other hints pass
    the value through unchanged.

    Raises:
        ConfigError: ``"{where} must be {type}, got {value!r}"``.
    """
    hint, optional = _strip_optional(hint)
    if value is None and optional:
        return None
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    else:
        return value
    raise ConfigError(f"{where} must be {getattr(hint, '__name__', hint)}, got {value!r}")


def config_from_dict(cls: type, values: dict[str, Any], where: str = "") -> Any:
    """Build ``cls(**values)``; an unknown key is a ConfigError that lists the valid keys.

    Lists become tuples where the field is a tuple; float fields go through :func:`coerce_scalar` (so
    ``eps: 1e-7`` from YAML is a float); every other check is the config class's own ``__post_init__``.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        ctx = f" in {where}" if where else ""
        raise ConfigError(
            f"unknown key(s) {unknown}{ctx} for {cls.__name__}; valid keys: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for k, v in values.items():
        hint = hints.get(k)
        if _strip_optional(hint)[0] is float:
            v = coerce_scalar(v, hint, f"{cls.__name__}.{k}")
        kwargs[k] = tuple(v) if isinstance(v, list) and "tuple" in str(hint) else v
    try:
        return cls(**kwargs)
    except ConfigError:
        raise  # already names the config and field
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{cls.__name__}: {e}") from None


def method_config(name: str, values: dict[str, Any], where: str = "") -> Any:
    """The config dataclass of the registered method ``name`` built from its fields (``{rank: 8}``)."""
    return config_from_dict(get_method(name).config_cls, values, where=where)


def method_configs(methods: list[dict[str, Any]], where: str = "methods") -> list[Any]:
    """Method dicts in stack order (``[{name: lora, rank: 8}, {name: deft}]``) -> config dataclasses.

    Raises:
        ConfigError: an entry that is not a mapping with a ``name``, an unknown method (the message lists the
            registered ones), an unknown field (it lists the valid ones) or a bad value.
    """
    out = []
    for i, entry in enumerate(methods):
        if not isinstance(entry, dict) or "name" not in entry:
            raise ConfigError(f"{where}[{i}] has no 'name'; e.g. {{name: lora, rank: 8}}")
        fields = {k: v for k, v in entry.items() if k != "name"}
        out.append(method_config(entry["name"], fields, where=f"{where}[{i}]"))
    return out


__all__ = ["config_to_dict", "config_from_dict", "coerce_scalar", "method_config", "method_configs"]
