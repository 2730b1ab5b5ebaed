"""``key=value`` options of a ``peftkit bench NAME`` command, read into that bench's flat config dataclass.

One parser for every bench: values are YAML scalars (``train.overrides.parse_value``: ``1e-4`` is a float)
checked against the field's type hint by ``core.configs.coerce_scalar``; a ``str`` field keeps the text as
written (YAML would read ``off`` as False and ``fp32,bf16`` is just text); ``null`` sets an optional field
to None; a ``dict`` field named ``<head>_kwargs`` collects ``<head>.KEY=value`` options
(``backbone.vocab_size=30522``).
"""

from __future__ import annotations

import typing
from typing import Any, TypeVar

from peftkit.core.configs import coerce_scalar
from peftkit.core.errors import ConfigError

T = TypeVar("T")
KWARGS_SUFFIX = "_kwargs"


def _base(hint: Any) -> tuple[Any, bool]:
    """(the hint without ``None``, whether ``None`` is allowed)."""
    args = typing.get_args(hint)
    if type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return hint, False


def _value(key: str, text: str, hint: Any) -> Any:
    from peftkit.train.overrides import parse_value

    base, optional = _base(hint)
    value: Any = parse_value(text)
    if value is None and optional:
        return None
    if base is str:
        return text
    if base is bool and value in (0, 1):  # reuse=1 / reuse=0
        value = bool(value)
    return coerce_scalar(value, hint, key)


def options_help(cls: type, bench: str) -> str:
    """``peftkit bench NAME --help``: the bench's summary and each ``key=default`` with its type."""
    import dataclasses

    doc = (cls.__doc__ or "").strip().splitlines()
    summary = doc[:1] if doc and not doc[0].startswith(f"{cls.__name__}(") else []  # not the auto signature
    lines = [f"usage: peftkit bench {bench} [key=value ...]", *summary, "", "options (default):"]
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        kind = getattr(hints[f.name], "__name__", str(hints[f.name]))
        key = f"{f.name[: -len(KWARGS_SUFFIX)]}.KEY" if f.name.endswith(KWARGS_SUFFIX) else f.name
        lines.append(f"  {key}={default!r}  ({kind})")
    return "\n".join(lines)


def parse_overrides(cls: type[T], overrides: list[str], bench: str) -> T:
    """Build ``cls()`` and set each ``key=value`` option on it.

    Args:
        cls: the bench's config dataclass (every field has a default).
        overrides: the command line's ``key=value`` items.
        bench: the bench's name, for messages.

    Raises:
        ConfigError: an item without ``=``, an unknown key (the message lists the valid ones), or a value of
            the wrong type.
    """
    from peftkit.train.overrides import parse_value

    if "--help" in overrides:  # peftkit bench NAME --help: every key with its default, then exit 0
        print(options_help(cls, bench))
        raise SystemExit(0)
    cfg, hints = cls(), typing.get_type_hints(cls)
    dict_fields = {k for k, h in hints.items() if k.endswith(KWARGS_SUFFIX) and typing.get_origin(h) is dict}
    nested = {k[: -len(KWARGS_SUFFIX)] for k in dict_fields}
    for item in overrides:
        key, sep, text = item.partition("=")
        head, dot, sub = key.partition(".")
        if sep and dot and head in nested and sub:
            getattr(cfg, f"{head}{KWARGS_SUFFIX}")[sub] = parse_value(text)
        elif sep and key in hints and key not in dict_fields:
            setattr(cfg, key, _value(key, text, hints[key]))
        else:
            valid = sorted(set(hints) - dict_fields) + [f"{h}.KEY" for h in sorted(nested)]
            raise ConfigError(f"bench {bench}: unknown option '{item}'; valid keys: {', '.join(valid)}")
    return cfg
