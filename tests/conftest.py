"""Shared fixtures: tiny backbones by name, a fixed batch for each, and one forward that returns a tensor.

To add a backbone to the contract suite, add a ``TinyBackbone`` to ``TINY_BACKBONES`` (a small edit here)
and list its name in the cases of tests/methods/test_contract.py.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models gain nothing from intra-op threads, and on a busy 2-core runner the thread pool's spinning makes
# each small matmul ~100x slower (measured: tiny BERT forward+backward 0.97 s with 2 threads, 0.03 s with 1).
torch.set_num_threads(1)


Batch = dict[str, torch.Tensor]


def _text_batch(b: int = 2, t: int = 8, vocab: int = 1000) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    ids = torch.randint(5, vocab, (b, t), generator=g)      # (b, t); ids >= 5 keep clear of special tokens
    mask = torch.ones(b, t, dtype=torch.long)
    mask[1, -2:] = 0                                          # one padded row, so masks matter
    return {"input_ids": ids, "attention_mask": mask}


def _t5_batch() -> dict[str, torch.Tensor]:
    batch = _text_batch()
    batch["decoder_input_ids"] = batch["input_ids"][:, :4].clone()   # (b, 4)
    return batch


def _point_batch(b: int = 2, n: int = 128) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(4321)
    return {"points": torch.rand(b, n, 3, generator=g) * 2 - 1}   # (b, n, 3) in the unit cube


def _logits(out: Any) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out


@dataclass(frozen=True)
class TinyBackbone:
    """How to build a tiny backbone, feed it and read a tensor out of it.

    Attributes:
        name: the registered backbone name; its builder must accept ``seed`` and give the same weights
            for the same seed (the save -> fresh model -> load contract relies on it).
        kwargs: passed to ``pk.load_backbone`` (besides ``seed``).
        batch: a fixed input batch (keyword arguments of the model's forward).
        output: output -> one float tensor to compare and to backpropagate.
        hf_classifier: an HF sequence-classification model (prompt / prefix tuning apply).
    """

    name: str
    kwargs: dict[str, Any]
    batch: Callable[[], dict[str, torch.Tensor]]
    output: Callable[[Any], torch.Tensor] = _logits
    hf_classifier: bool = False


TINY_BACKBONES: dict[str, TinyBackbone] = {
    "tiny_bert": TinyBackbone("tiny_bert", {"task": "classification", "num_labels": 3}, _text_batch,
                              hf_classifier=True),
    "tiny_llama": TinyBackbone("tiny_llama", {"task": "classification", "num_labels": 3}, _text_batch,
                               hf_classifier=True),
    "tiny_t5": TinyBackbone("tiny_t5", {}, _t5_batch),
    # families a peft user brings: RoBERTa, Llama-layout decoders, GPT-2's fused qkv Conv1D
    "tiny_roberta": TinyBackbone("tiny_roberta", {"task": "classification", "num_labels": 3}, _text_batch,
                                 hf_classifier=True),
    "tiny_qwen2": TinyBackbone("tiny_qwen2", {"task": "classification", "num_labels": 3}, _text_batch,
                               hf_classifier=True),
    "tiny_mistral": TinyBackbone("tiny_mistral", {"task": "classification", "num_labels": 3}, _text_batch,
                                 hf_classifier=True),
    "tiny_gpt2": TinyBackbone("tiny_gpt2", {"task": "classification", "num_labels": 3}, _text_batch,
                              hf_classifier=True),
    "tiny_point": TinyBackbone("tiny_point", {"num_labels": 3}, _point_batch),
}


class Tiny:
    """What the ``tiny`` fixture hands out: build / batch / forward for any name in ``TINY_BACKBONES``."""

    backbones = TINY_BACKBONES

    def build(self, name: str, seed: int = 0) -> nn.Module:
        """A fresh tiny backbone; the same ``seed`` gives the same weights."""
        import peftkit as pk

        return pk.load_backbone(name, seed=seed, **TINY_BACKBONES[name].kwargs)

    def batch(self, name: str) -> dict[str, torch.Tensor]:
        return TINY_BACKBONES[name].batch()

    def forward(self, model: nn.Module, name: str, batch: Batch | None = None) -> torch.Tensor:
        """One forward on the fixed batch (or ``batch``), returning the output tensor (with autograd)."""
        return TINY_BACKBONES[name].output(model(**(batch if batch is not None else self.batch(name))))

    def output(self, model: nn.Module, name: str, batch: Batch | None = None) -> torch.Tensor:
        """The same forward under ``torch.no_grad()``: use it to compare outputs exactly, because some
        backbones (T5) pick other kernels when no parameter requires grad, which moves the last bits."""
        with torch.no_grad():
            return self.forward(model, name, batch)


@pytest.fixture
def tiny() -> Tiny:
    """Build tiny backbones by name: ``tiny.build("tiny_bert")``, ``tiny.forward(model, "tiny_bert")``."""
    return Tiny()


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """Every test starts from the same global RNG state (method inits draw from it)."""
    torch.manual_seed(0)
