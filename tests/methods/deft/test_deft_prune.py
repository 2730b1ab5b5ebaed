"""Magnitude pruning of the frozen base (DEFT on pruned models)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import peftkit as pk
from peftkit.core.errors import UnsupportedError
from peftkit.core.surgery import UndoRecord
from peftkit.methods.deft.prune import block_linears, magnitude_prune


def _tiny_bert() -> nn.Module:
    return pk.load_backbone("tiny_bert", task="classification", num_labels=3)


def test_each_block_matrix_loses_exactly_its_smallest_fraction():
    model = _tiny_bert()
    spec = pk.get_spec(model)
    before = {p: lin.weight.detach().clone() for p, lin in block_linears(model, spec)}
    assert len(before) == 2 * 6  # q, k, v, attn out, intermediate, output per layer
    stats = magnitude_prune(model, spec, 0.3)
    for path, w0 in before.items():
        w = model.get_submodule(path).weight
        k = round(0.3 * w.numel())
        pruned = (w == 0) & (w0 != 0)
        assert int(pruned.sum()) == k, path
        assert w0[pruned].abs().max() <= w0[~pruned].abs().min()  # the smallest |w| went
        assert torch.equal(w[~pruned], w0[~pruned])
    assert stats["pruned"] == sum(round(0.3 * w.numel()) for w in before.values())


def test_method_head_and_embedding_weights_are_not_pruned_and_undo_restores():
    from peftkit.core.params import owners

    base = _tiny_bert()
    snapshot = {id(p): p.detach().clone() for p in base.parameters()}
    model = pk.apply(base, [pk.LoRA(targets=("attn_q", "mlp_out")), pk.DEFT(prune=0.5)])
    owned = owners(model)
    lora = [p for p in model.parameters() if owned.get(id(p)) == "lora"]
    assert lora and all(id(p) not in snapshot for p in lora)
    assert any(int((p == 0).sum()) == 0 for p in lora)  # LoRA A is random, untouched by pruning
    pruned = {id(lin.weight) for _, lin in block_linears(base, pk.get_spec(base), exclude=owned)}
    assert len(pruned) == 12
    for p in base.parameters():
        if id(p) in pruned:
            assert int((p == 0).sum()) == round(0.5 * p.numel())
        elif id(p) in snapshot:  # embeddings, LayerNorms, biases, head
            assert torch.equal(p, snapshot[id(p)])
    restored = pk.remove(model)
    for p in restored.parameters():
        assert torch.equal(p, snapshot[id(p)])


def test_undo_record_restores_exactly():
    model = _tiny_bert()
    spec = pk.get_spec(model)
    ref = [p.detach().clone() for p in model.parameters()]
    record = UndoRecord()
    magnitude_prune(model, spec, 0.9, record)
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), ref))
    record.undo()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), ref))


def test_quantized_base_is_refused_and_bad_fraction():
    model = pk.apply(pk.load_backbone("tiny_llama", task="classification", num_labels=3), [pk.QLoRA()])
    with pytest.raises(UnsupportedError, match="quantized"):
        pk.apply(model, [pk.DEFT(prune=0.5)])
    with pytest.raises(ValueError):
        magnitude_prune(_tiny_bert(), pk.get_spec(_tiny_bert()), 1.5)
