"""Class names of a classifier, kept on the model so checkpoints and predictions can name the classes.

Transformers models keep them in ``config.id2label`` (carried by ``from_pretrained`` / ``save_pretrained``);
any other model keeps them in an attribute. ``pk.save_adapter`` records them as ``id2label`` in
``adapter_config.json``; ``peftkit predict`` reads them back.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn

from peftkit.core.errors import ConfigError

LABELS_ATTR = "peftkit_label_names"
_DEFAULT_NAME = re.compile(r"LABEL_\d+")   # what transformers writes when it was never told the names


def set_label_names(model: nn.Module, names: Sequence[str]) -> nn.Module:
    """Record the class names of ``model`` (index i = class i); a transformers config gets them too.

    Raises:
        ConfigError: the names are not distinct strings.
    """
    names = [str(n) for n in names]
    if len(set(names)) != len(names):
        raise ConfigError(f"label names must be distinct, got {names}")
    object.__setattr__(model, LABELS_ATTR, tuple(names))
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "id2label") and names:
        config.id2label = dict(enumerate(names))
        config.label2id = {n: i for i, n in enumerate(names)}
    return model


def label_names(model: nn.Module) -> list[str] | None:
    """The class names recorded on ``model``, else a transformers config's real ``id2label``, else None."""
    names = getattr(model, LABELS_ATTR, None)
    if names:
        return list(names)
    id2label = getattr(getattr(model, "config", None), "id2label", None) or {}
    names = [str(id2label[i]) for i in sorted(id2label)]
    if not names or all(_DEFAULT_NAME.fullmatch(n) for n in names):
        return None
    return names
