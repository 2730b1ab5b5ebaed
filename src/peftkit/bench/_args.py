"""``key=value`` options of a ``peftkit bench NAME`` command, read into that bench's flat config dataclass."""

from __future__ import annotations

import typing
from typing import Any, TypeVar

from peftkit.core.configs import coerce_scalar
from peftkit.core.errors import ConfigError

T = TypeVar("T")


def parse_overrides(cls: type[T], overrides: list[str], bench: str) -> T:
    """Build ``cls()`` and set each ``key=value`` (YAML scalars, checked against the field's type hint).

    Raises:
        ConfigError: an item without ``=``, an unknown key (the message lists the valid ones), or a
            value of the wrong type.
    """
    from peftkit.train.overrides import parse_value

    cfg, hints = cls(), typing.get_type_hints(cls)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or key not in hints:
            raise ConfigError(f"bench {bench}: unknown option '{item}'; options: {', '.join(sorted(hints))}")
        value: Any = parse_value(text)
        if hints[key] is bool and value in (0, 1):  # reuse=1 / reuse=0
            value = bool(value)
        setattr(cfg, key, coerce_scalar(value, hints[key], key))
    return cfg
