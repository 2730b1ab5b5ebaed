"""Dotted ``key=value`` overrides of a YAML config tree (``train.lr=1e-4``, ``methods.0.rank=16``).

``method.X`` is a shortcut for ``methods.0.X`` when the stack holds one method, and ``method.N.X`` is
``methods.N.X``. A list entry is set by its index (``data.label_names.1=sports``, ``methods.1=deft``), and
the index one past the end appends. Values are YAML scalars;
strings that read as numbers (``1e-4``, which YAML 1.1 leaves a string) become floats.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from peftkit.core.errors import ConfigError


def parse_value(text: str) -> Any:
    """A command-line value as a YAML scalar (``1e-4`` and friends become floats)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"cannot parse value {text!r}: {str(e).splitlines()[0]}") from None
    if isinstance(value, str):
        try:
            return float(value) if value.strip().lower() not in ("nan", "inf", "-inf", "infinity") else value
        except ValueError:
            return value
    return value


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides to a YAML tree (a copy is returned)."""
    tree = copy.deepcopy(tree)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not key=value (e.g. train.lr=1e-4)")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if parts[0] == "method" and len(parts) > 2 and parts[1].isdigit():
            parts = ["methods", *parts[1:]]  # method.0.rank is methods.0.rank
        if parts[0] == "method":
            methods = tree.get("methods") or []
            if len(methods) != 1:
                raise ConfigError(
                    f"'{key}' needs exactly one method, the config has {len(methods)}; use methods.N.*"
                )
            parts = ["methods", "0", *parts[1:]]
        node: Any = tree
        for i, p in enumerate(parts[:-1]):
            if isinstance(node, list):
                if not p.isdigit() or int(p) >= len(node):
                    raise ConfigError(f"'{key}': index '{p}' out of range (there are {len(node)} entries)")
                if isinstance(node[int(p)], str):  # [lora] shorthand
                    node[int(p)] = {"name": node[int(p)]}
                node = node[int(p)]
            else:
                if node.get(p) is None:
                    node[p] = {}
                elif isinstance(node[p], str) and p in ("backbone", "data"):  # backbone: minilm shorthand
                    node[p] = {"name": node[p]}
                node = node[p]
            if not isinstance(node, (dict, list)):
                raise ConfigError(f"'{key}': '{'.'.join(parts[: i + 1])}' is not a mapping")
        if isinstance(node, list):
            last = parts[-1]
            if not last.isdigit() or int(last) > len(node):
                raise ConfigError(
                    f"'{key}': index '{last}' out of range (there are {len(node)} entries; "
                    f"{len(node)} appends one)"
                )
            value = parse_value(text)
            if int(last) == len(node):
                node.append(value)
            else:
                node[int(last)] = value
            continue
        node[parts[-1]] = parse_value(text)
    return tree
