"""Typed config dataclasses to and from plain dicts (JSON / YAML), and the one scalar checker they share.

YAML 1.1 reads ``1e-7`` (no dot) as the string ``"1e-7"``; :func:`coerce_scalar` (strict, for run and bench
configs) and :func:`config_from_dict` (for method configs, whose ``__post_init__`` checks the rest) both
turn a numeric string into a float where the field is a float, so no reader needs its own fix.
"""

from __future__ import annotations

import dataclasses
import math
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


def coerce_scalar(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against a simple type hint and return it in that type.

    ``bool``, ``int`` (integral floats become ints), ``float`` (numbers and numeric strings -- YAML reads
    ``1e-4`` as a string -- must be finite), ``str`` (numbers become text: ``out_dir=2024``), a tuple or list
    of names (one name becomes a one-item sequence), each optionally ``| None``; other hints pass the value
    through unchanged.

    Raises:
        ConfigError: ``"{where} must be {type} (...), got {value!r}"``.
    """
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be bool (true or false), got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where} must be int (a whole number), got {value!r}")
    if hint is float:
        return _float(value, where)
    if typing.get_origin(hint) in (tuple, list) and set(typing.get_args(hint)) <= {str, Ellipsis}:
        items = [value] if isinstance(value, str) else value
        if isinstance(items, (list, tuple)) and all(isinstance(v, str) for v in items):
            return tuple(items) if typing.get_origin(hint) is tuple else list(items)
        raise ConfigError(f"{where} must be a list of names, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where} must be str (text), got {value!r}")
    return value


def _float(value: Any, where: str) -> float:
    number = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            pass
    if number is not None and math.isfinite(number):
        return number
    if number is not None:
        raise ConfigError(f"{where} must be float (a finite number), got {value!r}")
    raise ConfigError(f"{where} must be float (a number), got {value!r}")


def _is_float(hint: Any) -> bool:
    """Whether ``hint`` is ``float`` or ``float | None``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return set(typing.get_args(hint)) == {float, type(None)}
    return hint is float


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
        if _is_float(hint):
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

    Each typed field is checked with :func:`coerce_scalar` first (so ``rank: "8"`` from a command line is an
    error naming ``methods.0.rank (lora)``), then the config class checks its own values.

    Raises:
        ConfigError: an entry that is not a mapping with a ``name``, an unknown method (the message lists the
            registered ones), an unknown field (it lists the valid ones) or a bad value.
    """
    out = []
    for i, entry in enumerate(methods):
        if not isinstance(entry, dict) or "name" not in entry:
            raise ConfigError(f"{where}[{i}] has no 'name'; e.g. {{name: lora, rank: 8}}")
        name = str(entry["name"])
        cls = get_method(name).config_cls
        hints = typing.get_type_hints(cls)
        fields = {k: coerce_scalar(v, hints[k], f"{where}.{i}.{k} ({name})") if k in hints else v
                  for k, v in entry.items() if k != "name"}
        out.append(config_from_dict(cls, fields, where=f"{where}[{i}]"))
    return out


__all__ = ["config_to_dict", "config_from_dict", "coerce_scalar", "method_config", "method_configs"]
