"""Method configs are flat, typed dataclasses; this turns them to and from plain dicts (JSON / YAML)."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from peftkit.core.errors import ConfigError


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    out = {}
    for f in dataclasses.fields(config):
        v = getattr(config, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def config_from_dict(cls: type, values: dict[str, Any], where: str = "") -> Any:
    """Build ``cls(**values)``; an unknown key is a ConfigError that lists the valid keys."""
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
        hint = str(hints.get(k, ""))
        kwargs[k] = tuple(v) if isinstance(v, list) and "tuple" in hint else v
    try:
        return cls(**kwargs)
    except ConfigError:
        raise  # already names the config and field
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{cls.__name__}: {e}") from None
