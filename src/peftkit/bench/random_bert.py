"""``bench_bert``: random-weight BERT classifiers in real shapes, for the MEFT memory benchmark.

Importing this module registers the backbone (``bench memory`` imports it in the processes that measure; it is
not imported by ``peftkit`` itself, so ``peftkit list`` does not show it). Shapes: bert-base-uncased
(d 768, 12 heads, FFN 3072), all-MiniLM-L6-v2 (d 384, 12 heads, FFN 1536) and a small d 128 (tests), any
depth, 512 positions,the BERT WordPiece vocabulary (30,522).
"""

from __future__ import annotations

import torch
from torch import nn

from peftkit.core.errors import ConfigError
from peftkit.core.registry import list_backbones, register_backbone

BACKBONE = "bench_bert"
VOCAB = 30522
ARCHS: dict[str, dict[str, int]] = {
    "bert_base": dict(hidden_size=768, num_attention_heads=12, intermediate_size=3072),
    "minilm": dict(hidden_size=384, num_attention_heads=12, intermediate_size=1536),
    "d128": dict(hidden_size=128, num_attention_heads=4, intermediate_size=512),  # small, for tests
}


def build_bench_bert(task: str = "classification", num_labels: int = 5, arch: str = "bert_base",
                     layers: int = 12, gradient_checkpointing: bool = False, seed: int = 0,
                     dropout: float = 0.1) -> nn.Module:
    """A random BERT classifier in a real shape (``ARCHS``), with its BackboneSpec attached.

    Args:
        gradient_checkpointing: HF's non-reentrant activation checkpointing of every layer (a baseline).
        dropout: hidden and attention-probability dropout (BERT's 0.1).
    """
    import transformers

    from peftkit.backbones.hf import finish

    if arch not in ARCHS:
        raise ConfigError(f"unknown arch '{arch}'; choose one of {', '.join(ARCHS)}")
    if task != "classification":
        raise ConfigError(f"{BACKBONE} builds classifiers only, got task '{task}'")
    cfg = transformers.BertConfig(vocab_size=VOCAB, num_hidden_layers=layers, num_labels=num_labels,
                                  max_position_embeddings=512, hidden_dropout_prob=dropout,
                                  attention_probs_dropout_prob=dropout, **ARCHS[arch])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.BertForSequenceClassification(cfg)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return finish(model, f"{BACKBONE}:{arch}:{layers}")


if BACKBONE not in list_backbones():
    register_backbone(BACKBONE, "random BERT in BERT-base / MiniLM shape (memory benchmark only)")(
        build_bench_bert)
