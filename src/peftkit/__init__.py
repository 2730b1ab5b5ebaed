"""peftkit: parameter-, memory- and activation-efficient fine-tuning.

Point-PEFT (arXiv 2310.03059), DEFT (density; arXiv 2402.01911) and MEFT (reversible; arXiv 2306.00477),
composable with each other and with the usual PEFT methods, on text and point-cloud transformers.

    import peftkit as pk
    model = pk.load_backbone("minilm", task="classification", num_labels=5)
    model = pk.apply(model, [pk.LoRA(rank=8), pk.DEFT(weight=1.0)])
    print(pk.param_report(model))
"""

from __future__ import annotations

import importlib
import importlib.metadata
from typing import Any

from peftkit.core import discovery as _discovery
from peftkit.core.apply import apply, aux_loss, remove
from peftkit.core.checkpoint import load_adapter, save_adapter
from peftkit.core.errors import CheckpointError, ConfigError, DataError, PeftkitError, UnsupportedError
from peftkit.core.merge import merge
from peftkit.core.params import freeze_all_but_adapters, param_report
from peftkit.core.registry import get_backbone, get_tokenizer, list_backbones, list_datasets, list_methods
from peftkit.core.spec import BackboneSpec, StackSpec, attach_spec, get_spec

try:
    __version__ = importlib.metadata.version("peftkit")
except importlib.metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

PLUGIN_GROUP = "peftkit.plugins"


def _discover() -> None:
    """Register every built-in backbone, dataset and method, then the plugins of installed packages.

    Importing a package runs its ``register_*`` calls (they import nothing heavy at module level). A plugin is
    an entry point in the ``peftkit.plugins`` group whose module registers its own backbones, datasets or
    methods when imported, e.g. in a plugin's ``pyproject.toml``:
    ``[project.entry-points."peftkit.plugins"] mine = "my_pkg.peftkit_plugin"``.
    """
    importlib.import_module("peftkit.backbones")
    importlib.import_module("peftkit.data")
    importlib.import_module("peftkit.methods")
    for ep in importlib.metadata.entry_points(group=PLUGIN_GROUP):
        ep.load()


_discovery.set_discovery(_discover)

# Method configs, resolved lazily so ``import peftkit`` stays light (no transformers / peft import).
_CONFIGS = {
    "FullFineTune": "peftkit.methods.baseline.config",
    "HeadOnly": "peftkit.methods.baseline.config",
    "Adapter": "peftkit.methods.adapter.config",
    "LoRA": "peftkit.methods.hf_peft.config",
    "DoRA": "peftkit.methods.hf_peft.config",
    "QLoRA": "peftkit.methods.hf_peft.config",
    "IA3": "peftkit.methods.hf_peft.config",
    "PromptTuning": "peftkit.methods.hf_peft.config",
    "PrefixTuning": "peftkit.methods.hf_peft.config",
    "export_peft": "peftkit.methods.hf_peft.export",
    "DEFT": "peftkit.methods.deft.config",
    "Sparsify": "peftkit.methods.deft.sparse_config",
    "sparsify": "peftkit.methods.deft.sparsify",
    "sparse_mlp": "peftkit.methods.deft.sparse_mlp",
    "PointPEFT": "peftkit.methods.point_peft.config",
    "MEFT": "peftkit.methods.meft.config",
}


def __getattr__(name: str) -> Any:
    if name in _CONFIGS:
        return getattr(importlib.import_module(_CONFIGS[name]), name)
    raise AttributeError(f"module 'peftkit' has no attribute '{name}'")


def load_backbone(name: str, **kwargs: Any) -> Any:
    """Build a registered backbone, e.g. ``load_backbone("minilm", task="classification", num_labels=5)``.

    Raises:
        ConfigError: ``num_labels`` is not a whole number >= 1 (1 = one regression output), or a keyword the
            builder does not take (the message lists the ones it does).
    """
    builder = get_backbone(name)
    _check_backbone_kwargs(builder, name, kwargs)
    return builder(**kwargs)


def _check_backbone_kwargs(builder: Any, name: str, kwargs: dict[str, Any]) -> None:
    import inspect

    n = kwargs.get("num_labels")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool)):
        raise ConfigError(f"num_labels must be int (the number of classes), got {n!r}")
    if n is not None and n < 1:
        raise ConfigError(f"num_labels must be >= 1 (1 = a single regression output), got {n}")
    try:
        params = inspect.signature(builder).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return  # the builder forwards extra keywords (e.g. to a model config) and checks them itself
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} for backbone '{name}'; valid keys: {', '.join(params)}")


def load_tokenizer(name: str) -> Any:
    """The tokenizer of a registered text backbone, e.g. ``load_tokenizer("minilm")``."""
    return get_tokenizer(name)


__all__ = [
    "apply", "remove", "aux_loss", "param_report", "freeze_all_but_adapters", "save_adapter", "load_adapter",
    "merge",
    "load_backbone", "load_tokenizer", "list_methods", "list_backbones", "list_datasets", "BackboneSpec",
    "StackSpec", "attach_spec", "get_spec", "PeftkitError", "ConfigError", "DataError", "CheckpointError",
    "UnsupportedError",
    *_CONFIGS,
]
