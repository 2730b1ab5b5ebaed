"""saved_activation_bytes against hand counts; peak_step_memory in a fresh process."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import peftkit as pk
from peftkit.bench._subproc import _child, measure_fresh, measure_step
from peftkit.bench.memory import (
    StepSpec,
    saved_activation_bytes,
    saved_activations,
    synthetic_batch,
)
from peftkit.core.configs import method_configs

F32 = 4


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.act, self.fc2 = nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def square_sum(out: torch.Tensor, batch: dict) -> torch.Tensor:
    return (out**2).sum()  # pow saves its input ``out``


def test_mlp_equals_hand_count():
    x = torch.randn(3, 4)  # (b, d_in)
    r = saved_activations(MLP(), {"x": x}, square_sum)
    # fc1 saves x (3x4); ReLU saves its output (3x8), which fc2 saves again (one storage); pow saves out (3x2)
    assert r.bytes == (3 * 4 + 3 * 8 + 3 * 2) * F32
    assert r.storages == 3 and r.tensors == 4          # the ReLU output is saved twice, counted once
    assert r.excluded_param_saves >= 1                  # fc2's weight (needed for grad-input) is not counted
    assert r.by_module == {"fc1": 3 * 4 * F32, "act": 3 * 8 * F32, "(outside)": 3 * 2 * F32}
    assert saved_activation_bytes(MLP(), {"x": x}, square_sum) == r.bytes


def test_frozen_model_saves_nothing_and_backward_runs():
    model = MLP().requires_grad_(False)
    assert saved_activation_bytes(model, {"x": torch.randn(3, 4)}, square_sum) == 0
    model = MLP()
    saved_activation_bytes(model, {"x": torch.randn(3, 4)}, square_sum, backward=True)
    assert model.fc1.weight.grad is not None and model.fc1.weight.grad.abs().sum() > 0


class SaveTwice(torch.autograd.Function):
    """Saves x twice and a view of the weight through ctx.save_for_backward, as a custom backward would."""

    @staticmethod
    def forward(ctx, x, w):  # noqa: ANN001
        ctx.save_for_backward(x, x, w.t())
        return x @ w.t()

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001
        x, _, wt = ctx.saved_tensors
        return g @ wt.t(), g.t() @ x


class Custom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(5, 4))
        self.register_buffer("scale", torch.ones(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = SaveTwice.apply(x, self.w)                 # (b, 5)
        torch.tanh(h * 2)                              # a dropped branch: its saved output dies at once
        return h * self.scale                          # mul saves h (counted) and the buffer (excluded)


def test_custom_function_dedup_and_param_views_excluded():
    x = torch.randn(6, 4, requires_grad=True)
    r = saved_activations(Custom(), {"x": x}, lambda out, b: out.sum())
    assert r.bytes == (6 * 4 + 6 * 5) * F32            # x once, and h; w.t() and the buffer are not counted
    assert r.storages == 2 and r.tensors == 3
    assert r.excluded_param_saves == 2


def test_tiny_bert_head_only_counts_whole_storage_of_a_slice():
    b, t, d = 4, 16, 32
    model = pk.apply(pk.load_backbone("tiny_bert", num_labels=3), [pk.HeadOnly()])
    batch = synthetic_batch(StepSpec("tiny_bert", [], num_labels=3, batch_size=b, seq_len=t), 1000)
    head = saved_activations(model, batch)
    # the pooler reads hidden[:, 0], a view: the whole (b, t, d) hidden state stays alive for backward
    assert head.by_module["bert.pooler.dense"] == b * t * d * F32
    assert not any(k.startswith("bert.encoder") for k in head.by_module)
    pk.remove(model)
    full = pk.apply(model, [pk.FullFineTune()])
    assert saved_activation_bytes(full, batch) > 10 * head.bytes


def test_method_configs_errors():
    assert type(method_configs([{"name": "full"}])[0]).__name__ == "FullFineTune"
    with pytest.raises(pk.ConfigError, match="no 'name'"):
        method_configs([{"rank": 8}])
    with pytest.raises(pk.ConfigError, match="unknown key"):
        method_configs([{"name": "head_only", "rnak": 8}])


def test_fresh_processes_match_in_process_counts():
    specs = [StepSpec("tiny_bert", [{"name": m}], num_labels=3, batch_size=4, seq_len=32, steps=2,
                      step_times=True) for m in ("full", "head_only")]
    results = measure_fresh(specs, workers=2)                # one server, one forked child per spec
    for spec, r in zip(specs, results):
        assert r["hwm_reset"] is True
        assert r["peak_bytes"] >= r["retained_bytes"] and r["baseline_bytes"] > 0  # high-water >= end
        assert len(r["step_times_s"]) == 2 and all(s > 0 for s in r["step_times_s"])
        model = pk.apply(pk.load_backbone("tiny_bert", num_labels=3), method_configs(spec.methods))
        model.train()
        assert r["trainable_params"] == pk.param_report(model).trainable
        # dropout masks are random but their sizes are not: the child counted exactly what we count here
        assert r["saved_activation_bytes"] == saved_activation_bytes(model, synthetic_batch(spec, 1000))
    assert results[1]["saved_activation_bytes"] < results[0]["saved_activation_bytes"]


def test_child_reports_a_bad_spec_as_a_config_error(tmp_path):
    bad = StepSpec("tiny_bert", [{"name": "full", "bogus": 1}], steps=1)
    assert _child(bad, tmp_path / "0.json") == 2
    assert "unknown key" in json.loads((tmp_path / "0.json").read_text())["config_error"]
    with pytest.raises(pk.ConfigError, match="unknown key"):
        measure_step(bad)


def test_one_argument_loss_fn_is_accepted():
    x = torch.randn(3, 4)
    two = saved_activation_bytes(MLP(), {"x": x}, square_sum)
    assert saved_activation_bytes(MLP(), {"x": x}, lambda out: (out**2).sum()) == two


def test_saved_bytes_on_t5_keep_the_decoder_inputs() -> None:
    """seq2seq: the synthetic batch carries decoder inputs, so encoder and decoder both save activations."""
    from peftkit.bench.memory import StepSpec, default_loss_for, saved_activation_bytes, synthetic_batch

    model = pk.apply(pk.load_backbone("tiny_t5", task="seq2seq"), [pk.LoRA()])
    spec = StepSpec(backbone="tiny_t5", task="seq2seq", methods=[{"name": "lora"}], batch_size=2, seq_len=8)
    batch = synthetic_batch(spec, model.get_input_embeddings().num_embeddings)
    assert batch["decoder_input_ids"].shape == batch["labels"].shape == (2, 8)
    assert torch.equal(batch["decoder_input_ids"][:, 1:], batch["labels"][:, :-1])
    full = saved_activation_bytes(model, batch, default_loss_for(model))
    short = dict(batch, decoder_input_ids=batch["decoder_input_ids"][:, :2], labels=batch["labels"][:, :2])
    assert full > saved_activation_bytes(model, short, default_loss_for(model)) > 0  # the decoder counts
