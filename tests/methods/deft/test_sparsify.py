"""``pk.sparsify`` and the sparse MLP: calibration hits the target on held-out data, the sparse MLP equals the
dense thresholded model, undo, save / load, straight-through training, bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import peftkit as pk
from peftkit.core.errors import CheckpointError, ConfigError, UnsupportedError
from peftkit.core.spec import BackboneSpec, StackSpec
from peftkit.methods.deft.calibrate import measure_density, thresholds_of
from peftkit.methods.deft.sparse_mlp import SparseDown, SparseUp
from peftkit.methods.deft.threshold import ActivationThreshold, FoldedBias


def _batches(n: int, seed: int, b: int = 4, t: int = 16, labels: bool = False) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        mask = torch.ones(b, t, dtype=torch.long)
        mask[0, t // 2:] = 0
        batch = {"input_ids": torch.randint(5, 1000, (b, t), generator=g), "attention_mask": mask}
        if labels:
            batch["labels"] = torch.randint(5, 1000, (b, 5), generator=g)
        out.append(batch)
    return out


def _lora(name: str = "tiny_bert") -> nn.Module:
    torch.manual_seed(0)
    model = pk.apply(pk.load_backbone(name, task="classification", num_labels=3), [pk.LoRA()])
    return model.eval()


@pytest.mark.parametrize("rule", ["magnitude", "sign"])
@pytest.mark.parametrize("q", [0.3, 0.5, 0.9])
def test_calibration_reproduces_the_target_on_held_out_tokens(rule, q):
    model = pk.sparsify(_lora(), q, calib=_batches(8, seed=0), rule=rule)
    got = measure_density(model, _batches(8, seed=1))
    assert abs(got["mean"] - 100.0 * (1.0 - q)) < 2.0
    assert len(thresholds_of(model)) == 2 and all(float(m.tau) != 0.0 for m in thresholds_of(model))


def _logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        out = model(**batch)
    return out.logits if hasattr(out, "logits") else out


@pytest.mark.parametrize("name", ["tiny_bert", "tiny_llama"])
@pytest.mark.parametrize("fold", [False, True])
def test_sparse_mlp_equals_the_dense_thresholded_model(name, fold):
    model = pk.sparsify(_lora(name), 0.7, calib=_batches(4, seed=0), fold_mean=fold)
    full, one = _batches(1, seed=2)[0], {k: v[1:2] for k, v in _batches(1, seed=3)[0].items()}
    ref_full, ref_one = _logits(model, full), _logits(model, one)
    pk.sparse_mlp(model, max_density=1.0)
    kinds = {type(m) for m in model.modules()}
    assert SparseDown in kinds and (SparseUp in kinds) == (name == "tiny_llama")
    torch.testing.assert_close(_logits(model, full), ref_full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_logits(model, one), ref_one, rtol=1e-5, atol=1e-5)
    pk.sparse_mlp(model, max_density=0.0)  # everything past break-even: the dense fallback, same outputs
    torch.testing.assert_close(_logits(model, full), ref_full, rtol=1e-5, atol=1e-5)


def test_t5_and_point_transformer():
    t5 = pk.apply(pk.load_backbone("tiny_t5"), [pk.LoRA()]).eval()
    batches = _batches(4, seed=0, labels=True)
    t5 = pk.sparsify(t5, 0.6, calib=batches, keep_labels=True)
    assert len(thresholds_of(t5)) == 4  # 2 encoder + 2 decoder gates
    got = measure_density(t5, _batches(4, seed=1, labels=True), keep_labels=True)
    assert abs(got["mean"] - 40.0) < 5.0
    torch.manual_seed(0)
    point = pk.apply(pk.load_backbone("tiny_point", num_labels=5), [pk.LoRA(targets=("attn_qkv",))]).eval()
    g = torch.Generator().manual_seed(0)
    cal = [{"points": torch.rand(4, 128, 3, generator=g)} for _ in range(4)]
    point = pk.sparsify(point, 0.5, calib=cal)
    ref = _logits(point, cal[0])
    pk.sparse_mlp(point, max_density=1.0)
    torch.testing.assert_close(_logits(point, cal[0]), ref, rtol=1e-5, atol=1e-5)


def test_remove_undoes_thresholds_folds_and_sparse_mlp():
    base = _lora()
    batch = _batches(1, seed=5)[0]
    dense = _logits(base, batch)
    model = pk.sparsify(base, 0.9, calib=_batches(4, seed=0), fold_mean=True)
    pk.sparse_mlp(model)
    assert not torch.allclose(_logits(model, batch), dense)
    restored = pk.remove(model)
    kinds = {type(m) for m in restored.modules()}
    assert not kinds & {ActivationThreshold, FoldedBias, SparseDown, SparseUp}
    torch.testing.assert_close(_logits(restored.eval(), batch), dense)


def test_fold_mean_shift_is_the_down_projection_of_the_zeroed_mean():
    model = pk.sparsify(_lora(), 0.8, calib=_batches(4, seed=0), fold_mean=True)
    folds = [m for m in model.modules() if isinstance(m, FoldedBias)]
    assert len(folds) == 2 and all(float(f.shift.abs().sum()) > 0 for f in folds)
    # by hand for layer 0: mean of h * (1 - keep) over valid tokens, through W_out (no bias)
    layer = thresholds_of(model)[0]
    seen = []
    hook = layer.inner.register_forward_hook(lambda m, i, o: seen.append((i[0], o)))
    layer.mode = "off"
    for batch in _batches(4, seed=0):
        _logits(model, batch)  # only layer 0's statistics are used: later layers see the same dense input
    hook.remove()
    layer.mode = "apply"
    masks = [batch["attention_mask"].bool() for batch in _batches(4, seed=0)]
    rows = [(a * ~layer.keep(x, a))[m] for (x, a), m in zip(seen, masks)]
    mu = torch.cat(rows).mean(0)
    torch.testing.assert_close(folds[0].shift, folds[0].inner.weight @ mu, rtol=1e-4, atol=1e-6)


def test_thresholds_saved_and_loaded_strictly(tmp_path):
    model = pk.sparsify(_lora(), 0.6, calib=_batches(4, seed=0), rule="sign")
    batch = _batches(1, seed=9)[0]
    ref = _logits(model, batch)
    pk.save_adapter(model, tmp_path / "a")
    torch.manual_seed(0)
    fresh = pk.load_adapter(pk.load_backbone("tiny_bert", task="classification", num_labels=3),
                            tmp_path / "a")
    taus = [float(m.tau) for m in thresholds_of(model)]
    assert [float(m.tau) for m in thresholds_of(fresh)] == taus
    torch.testing.assert_close(_logits(fresh.eval(), batch), ref)
    other = pk.apply(pk.load_backbone("tiny_bert", task="classification", num_labels=3), [pk.LoRA()])
    pk.sparsify(other.eval(), 0.6, calib=_batches(2, seed=0), fold_mean=True)  # extra keys: the shifts
    with pytest.raises(CheckpointError):
        pk.load_adapter(other, tmp_path / "a")


def test_straight_through_training():
    model = _lora().train()
    with pytest.raises(ConfigError, match="training mode"):
        pk.sparsify(model, 0.9, calib=_batches(2, seed=0))
    model = pk.sparsify(model, 0.9, calib=_batches(2, seed=0), allow_training=True)
    assert model.training
    layer = thresholds_of(model)[0]
    grads = []

    def keep_grad(module: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        out.register_hook(grads.append)

    layer.inner.register_forward_hook(keep_grad)
    out = model(**_batches(1, seed=1)[0]).logits
    out.sum().backward()
    zeroed = grads[0] != 0
    assert zeroed.float().mean() > 0.5  # the gradient reaches the zeroed units too (straight-through)
    lora = [p for n, p in model.named_parameters() if "lora" in n]
    assert lora and all(p.grad is not None for p in lora) and sum(float(p.grad.abs().sum()) for p in lora) > 0


def test_bad_input_is_one_clear_error():
    model = _lora()
    for q in (1.0, -0.1, 1.5):
        with pytest.raises(ConfigError, match="target_sparsity"):
            pk.sparsify(model, q, calib=_batches(1, seed=0))
    with pytest.raises(ConfigError, match="empty"):
        pk.sparsify(model, 0.5, calib=[])
    with pytest.raises(ConfigError, match="calib"):
        pk.sparsify(model, 0.5)
    with pytest.raises(ConfigError, match="rule"):
        pk.sparsify(model, 0.5, calib=_batches(1, seed=0), rule="topk")
    with pytest.raises(ConfigError, match="another backbone"):
        pk.sparsify(model, thresholds={"bert.encoder.layer.0.x": 0.1})
    names = [f"bert.encoder.layer.{i}.intermediate.intermediate_act_fn" for i in range(2)]
    with pytest.raises(ConfigError, match="another width"):
        pk.sparsify(model, thresholds={n: torch.ones(64) for n in names})
    assert not any(isinstance(m, ActivationThreshold) for m in model.modules())  # nothing half-applied
    ok = pk.sparsify(model, thresholds={n: 0.1 for n in names})
    assert [float(m.tau) for m in thresholds_of(ok)] == pytest.approx([0.1, 0.1])

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(4, 4), nn.GELU())])

    toy = pk.attach_spec(Tiny(), BackboneSpec("toy", (StackSpec("encoder", "blocks", {"mlp_in": "0"}),)))
    with pytest.raises(UnsupportedError, match="mlp_act"):
        pk.sparsify(toy.eval(), 0.5, calib=[{"x": torch.ones(1, 4)}])
    with pytest.raises(UnsupportedError, match="sparsify"):
        pk.sparse_mlp(_lora())


def test_sparse_path_or_dense_fallback_by_density(monkeypatch):
    import torch.nn.functional as F

    from peftkit.methods.deft import sparse_mlp as S

    model = pk.sparsify(_lora(), 0.7, calib=_batches(4, seed=0))
    batch = _batches(1, seed=2)[0]
    calls = []
    real = F.embedding_bag
    monkeypatch.setattr(F, "embedding_bag", lambda *a, **k: calls.append(1) or real(*a, **k))
    pk.sparse_mlp(model, max_density=1.0)
    _logits(model, batch)
    assert len(calls) == 2  # one per layer
    pk.sparse_mlp(model, max_density=0.0)  # re-installing sets the new limit
    _logits(model, batch)
    assert len(calls) == 2
    assert S.density_limit(None, 1) == S.ONE_TOKEN_MAX_DENSITY and S.density_limit(None, 48) == 0.05
    assert S.density_limit(0.3, 1) == 0.3
