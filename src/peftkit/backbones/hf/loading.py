"""Building transformers models as peftkit backbones: the task's Auto class, ``from_pretrained`` with
checked arguments, and :func:`finish`, which attaches the BackboneSpec and the backbone id.

transformers is imported inside the functions only, so registering the backbones stays cheap.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from torch import nn

from peftkit.backbones.hf.specs import spec_for_hf_model
from peftkit.core.errors import ConfigError, DataError
from peftkit.core.spec import attach_spec

TASKS = ("classification", "causal_lm", "encoder")


def auto_class(task: str) -> Any:
    """The transformers Auto class that builds a model for ``task``.

    Raises:
        ConfigError: an unknown task (the message lists the known ones).
    """
    import transformers

    if task not in TASKS:
        raise ConfigError(f"unknown task '{task}'; choose one of: {', '.join(TASKS)}")
    return {
        "classification": transformers.AutoModelForSequenceClassification,
        "causal_lm": transformers.AutoModelForCausalLM,
        "encoder": transformers.AutoModel,
    }[task]


def package_dir(package: str, install_hint: str) -> Path:
    """Folder of an installed Python package, found without importing it (some pull heavy dependencies)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"package '{package}' is not installed; run: {install_hint}")
    return Path(list(spec.submodule_search_locations)[0])


def cache_dir() -> Path:
    """peftkit's cache folder: ``$PEFTKIT_CACHE``, else ``~/.cache/peftkit``."""
    return Path(os.environ.get("PEFTKIT_CACHE", Path.home() / ".cache" / "peftkit"))


def finish(model: nn.Module, backbone_id: str) -> nn.Module:
    """Attach the model's BackboneSpec and the id its checkpoints are tied to; returns ``model``."""
    return attach_spec(model, spec_for_hf_model(model), backbone_id)


def from_pretrained(path: Path | str, task: str, num_labels: int | None, **kw: Any) -> nn.Module:
    """``Auto*.from_pretrained(path)`` for ``task``; a classifier needs ``num_labels >= 2``."""
    extra: dict[str, Any] = dict(kw)
    if task == "classification":
        if not num_labels or num_labels < 2:
            raise ConfigError("a classification backbone needs num_labels >= 2")
        extra["num_labels"] = num_labels
    import transformers

    transformers.logging.set_verbosity_error()  # the "newly initialised head" notice is expected
    transformers.utils.logging.disable_progress_bar()  # a bar per load on stderr; errors stay one line
    if not kw:
        return auto_class(task).from_pretrained(str(path), **extra)
    config = transformers.AutoConfig.from_pretrained(str(path))
    unknown = sorted(set(kw) - set(config.to_dict()) - {"dtype", "torch_dtype", "attn_implementation"})
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown} for the pretrained model at {path}: not {type(config).__name__} "
            "fields (valid: task, num_labels and that config's fields, e.g. hidden_dropout_prob)"
        )
    try:
        return auto_class(task).from_pretrained(str(path), **extra)
    except (ValueError, RuntimeError) as e:  # e.g. a size that contradicts the pretrained weights
        line = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        if "ignore_mismatched_sizes" in line:
            line = "a weight shape would differ from the pretrained one; remove the size option"
        raise ConfigError(f"backbone options {kw} do not fit the pretrained model at {path}: {line}") \
            from None
