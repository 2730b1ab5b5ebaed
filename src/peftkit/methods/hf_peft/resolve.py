"""What a peft-backed method adapts: targets given as backbone roles (``attn_q``; the fused projection on a
backbone that fuses q, k and v), as peft-style module names (``q_proj``, matched the way peft matches
``target_modules``) or as peft's ``"all-linear"`` (peft's own expansion), always without the task head
(which trains whole) and without other methods' layers. An unknown target fails with the backbone's roles
and linear module names.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from peftkit.core.errors import UnsupportedError
from peftkit.core.spec import BackboneSpec
from peftkit.core.state import get_state
from peftkit.core.surgery import get_module
from peftkit.methods.hf_peft.targets import layer_types, task_type

ALL_LINEAR = "all-linear"   # peft's shorthand: every linear layer but the output / classification head


def _under(path: str, prefixes: Sequence[str]) -> bool:
    return any(path == p or path.startswith(p + ".") for p in prefixes)


def linear_module_names(root: nn.Module, spec: BackboneSpec) -> list[str]:
    """The distinct last name parts of the Linear / Conv1D layers outside the head (for error messages)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    linear = tuple(t for t in layer_types("lora") if t.__name__ in ("Linear", "Conv1D"))
    names = [n for n, m in root.named_modules() if n and isinstance(m, (*linear, BaseTunerLayer))
             and not _under(n, spec.head)]
    return list(dict.fromkeys(n.rsplit(".", 1)[-1] for n in names))


def _method_owned(root: nn.Module) -> set[str]:
    """Paths of modules whose parameters an applied method trains (an adapter's own projections)."""
    state = get_state(root)
    if state is None:
        return set()
    owned = {id(p) for a in state.applied for p in a.params()}
    return {n for n, m in root.named_modules() if any(id(p) in owned for p in m.parameters(recurse=False))}


def _all_linear(root: nn.Module, spec: BackboneSpec) -> list[str]:
    """peft's own ``"all-linear"`` expansion, without the task head (trained whole) and other methods'
    layers."""
    from peft import LoraConfig
    from peft.tuners.tuners_utils import _maybe_include_all_linear_layers

    cfg = LoraConfig(target_modules=ALL_LINEAR, task_type=task_type(root))
    found = set(_maybe_include_all_linear_layers(cfg, root).target_modules) - _method_owned(root)
    return [n for n, _ in root.named_modules() if n in found and not _under(n, spec.head)]


def _by_name(root: nn.Module, spec: BackboneSpec, name: str) -> list[str]:
    """Paths peft's ``target_modules=[name]`` matches (``name`` or a path ending in ``.name``), head aside."""
    owned = _method_owned(root)
    return [n for n, _ in root.named_modules()
            if (n == name or n.endswith("." + name)) and not _under(n, spec.head) and n not in owned]


def target_paths(root: nn.Module, spec: BackboneSpec, targets: Sequence[str], method: str) -> list[str]:
    """Module paths of ``targets``: backbone roles (``attn_q``; on a fused-qkv backbone the fused layer),
    peft-style module names (``q_proj``, matched as peft matches them) or peft's ``"all-linear"``.

    Raises:
        UnsupportedError: a target that is neither a role nor the name of a module (the message lists the
            backbone's roles and its linear modules).
    """
    paths: list[str] = []
    for target in dict.fromkeys(targets):
        if target.lower() == ALL_LINEAR:
            found = _all_linear(root, spec)
        elif spec.has_role(spec.target_role(target)):
            found = spec.role_paths(root, spec.target_role(target))
        else:
            found = _by_name(root, spec, target)
        if not found:
            roles = sorted({r for s in spec.stacks for r in s.roles})
            raise UnsupportedError(
                f"{method}: target '{target}' is neither a role of backbone family '{spec.family}' "
                f"({', '.join(roles)}) nor a module name; its linear modules are: "
                f"{', '.join(linear_module_names(root, spec))} (or use '{ALL_LINEAR}')"
            )
        paths.extend(p for p in found if p not in paths)
    return paths


def resolve_targets(root: nn.Module, spec: BackboneSpec, roles: Sequence[str], allowed: tuple[type, ...],
                    method: str) -> list[str]:
    """Exact module paths of ``roles`` (roles, module names or ``"all-linear"``, see :func:`target_paths`),
    looking inside peftkit wrappers (``base_layer``).

    Raises:
        UnsupportedError: an unknown target (the message lists the backbone's roles and linear modules), a
            target whose module peft cannot adapt, or a module that another peft method already adapted.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    paths: list[str] = []
    for path in target_paths(root, spec, roles, method):
        m = get_module(root, path)
        while (not isinstance(m, allowed) and not isinstance(m, BaseTunerLayer)
               and isinstance(getattr(m, "base_layer", None), nn.Module)):
            path, m = f"{path}.base_layer", m.base_layer   # through our own wrappers (adapters, ...)
        if isinstance(m, BaseTunerLayer):
            raise UnsupportedError(f"{method}: {path} is already adapted by a peft method")
        if not isinstance(m, allowed):
            names = ", ".join(sorted({t.__name__ for t in allowed}))
            raise UnsupportedError(
                f"{method}: {path} is a {type(m).__name__}; peft's {method} adapts {names}"
            )
        paths.append(path)
    return paths
