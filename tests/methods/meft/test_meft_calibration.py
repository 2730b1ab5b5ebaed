"""MEFT's anchor calibration under bf16 autocast: several batches, an adaptive margin, drift re-calibration.

The model: a random BERT (d 128, 8 layers, no dropout) with MEFT1 under ``torch.autocast("cpu", bfloat16)``.
There, as on SmolLM2, a layer's one-step inversion error depends on the batch (a last-bit difference of the
reconstructed input rounds to another bf16 value inside F on some batches only), so anchors calibrated on
one batch can miss the tolerance on another: the tests below first check that this happens here, so that
they can fail.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from torch import nn

import peftkit as pk
from peftkit.bench.random_bert import build_bench_bert
from peftkit.core.errors import ConfigError
from peftkit.methods.meft.apply import find_stack
from peftkit.methods.meft.checks import calibrate_anchors, reconstruction_errors, stack_input

TOL = 1e-3


def _batches(n: int, tokens: int = 16) -> list[dict[str, torch.Tensor]]:
    out = []
    for s in range(n):
        ids = torch.randint(5, 1000, (2, tokens), generator=torch.Generator().manual_seed(s))
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    return out


def _model(**meft: Any) -> nn.Module:
    """MEFT1 on the random 8-layer BERT, without nudges unless told (the tests below need the bf16 failures
    that the nudges prevent)."""
    meft.setdefault("calibration_nudges", 0)
    torch.manual_seed(0)
    base = build_bench_bert(num_labels=3, arch="d128", layers=8, dropout=0.0)
    return pk.apply(base, pk.MEFT(variant="meft1", adapter_init_std=0.3, **meft)).train()


def _step(model: nn.Module, batch: dict[str, torch.Tensor]) -> None:
    """One reversible forward + backward under bf16 autocast (no optimiser: the weights stay fixed)."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**batch).logits.float().pow(2).sum()
    loss.backward()


def _errors(model: nn.Module, batch: dict[str, torch.Tensor], anchors: frozenset[int]) -> list[float]:
    """Full relative error of every reconstructed layer input with ``anchors``, bf16 autocast."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        stack, hidden, ctx = stack_input(model, **batch)
        return reconstruction_errors(list(stack.couplings), hidden, ctx, anchors)


def test_one_batch_anchors_miss_the_tolerance_on_others() -> None:
    """The premise: anchors calibrated on batch 0 hold it, and not batch 1 (bimodal bf16 inversion error)."""
    model, (b0, b1) = _model(), _batches(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        stack, hidden, ctx = stack_input(model, **b0)
        anchors, _ = calibrate_anchors(list(stack.couplings), hidden, ctx, TOL / 4)
    assert max(_errors(model, b0, frozenset(anchors))) <= TOL / 4
    assert max(_errors(model, b1, frozenset(anchors))) > TOL


def test_nudged_calibration_anchors_the_layers_a_last_bit_difference_breaks() -> None:
    """calibration_nudges: each layer is also inverted from its exact outputs times (1 + u eps); a layer
    whose nudged inversion exceeds nudge_threshold becomes an anchor, the chain decisions are unchanged."""
    model, (b0,) = _model(), _batches(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        stack, hidden, ctx = stack_input(model, **b0)
        cs = list(stack.couplings)
        plain, errs = calibrate_anchors(cs, hidden, ctx, TOL / 4)
        same, _ = calibrate_anchors(cs, hidden, ctx, TOL / 4, nudges=2, nudge_threshold=1.0)
        every, _ = calibrate_anchors(cs, hidden, ctx, TOL / 4, nudges=1, nudge_threshold=1e-12)
        nudged, nerrs = calibrate_anchors(cs, hidden, ctx, TOL / 4, nudges=2, nudge_threshold=TOL / 4)
    assert same == plain and every == list(range(len(cs)))
    assert nerrs[-1] == errs[-1] and set(nudged) != set(plain)  # bf16 flips found on this one batch
    assert max(_errors(model, b0, frozenset(nudged))) <= TOL / 4


def test_calibration_batches_anchors_hold_every_batch() -> None:
    model, batches = _model(calibration_batches=3), _batches(3)
    stack = find_stack(model)
    seen = []
    for b in batches:
        _step(model, b)
        seen.append(stack.anchors)
        assert stack.calibrations == len(seen)
    assert seen[0] <= seen[1] <= seen[2]  # later batches only add anchors
    for b in batches:
        assert max(_errors(model, b, seen[2])) <= TOL / stack.calibration_margin
    _step(model, batches[0])  # k batches done: no further calibration while the check passes
    assert stack.calibrations == 3 and stack.anchors == seen[2]
    single = _model(calibration_batches=1)
    _step(single, batches[0])
    assert max(_errors(single, batches[1], find_stack(single).anchors)) > TOL  # one batch is not enough


def test_check_agrees_with_calibration_on_the_calibration_batch() -> None:
    """The calibration measures the check's sample too: its own batch passes the check at tol / margin."""
    model = _model()
    stack = find_stack(model)
    _step(model, _batches(1, tokens=40)[0])  # 2 x 40 x 128 elements: more than the 4,096 sampled
    assert stack.last_reconstruction_error and max(stack.last_reconstruction_error) <= TOL / 4


def test_adaptive_margin_grows_by_the_excess_and_then_holds() -> None:
    model, (b0, b1) = _model(adaptive_margin=True), _batches(2)
    stack = find_stack(model)
    _step(model, b0)
    assert stack.margin_scale == 1.0
    with pytest.warns(RuntimeWarning, match="chosen again"):
        _step(model, b1)  # batch 0's anchors on batch 1: over the tolerance
    worst = max(stack.last_reconstruction_error)
    assert worst > TOL and stack.anchors is None
    assert stack.margin_scale == pytest.approx(worst / TOL)
    _step(model, b1)  # re-calibrated on batch 1 at tol / (4 * excess)
    threshold = TOL / (stack.calibration_margin * stack.margin_scale)
    assert max(_errors(model, b1, stack.anchors)) <= threshold
    assert max(stack.last_reconstruction_error) <= threshold
    plain = _model(adaptive_margin=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        _step(plain, b0)
        _step(plain, b1)
    assert find_stack(plain).margin_scale == 1.0


def test_sticky_anchors_keep_the_old_ones_and_the_failed_layer() -> None:
    model, (b0, b1) = _model(sticky_anchors=True), _batches(2)
    stack = find_stack(model)
    _step(model, b0)
    first = stack.anchors
    with pytest.warns(RuntimeWarning, match="chosen again"):
        _step(model, b1)
    errs = stack.last_reconstruction_error
    top = max(i for i, e in enumerate(errs) if e > TOL)
    assert top not in first and stack.kept_anchors == first | {top}
    _step(model, b1)
    assert stack.anchors >= first | {top} and max(stack.last_reconstruction_error) <= TOL / 4
    fresh = _model(sticky_anchors=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for b in (b0, b1, b1):
            _step(fresh, b)
    assert find_stack(fresh).kept_anchors == frozenset()


@pytest.mark.parametrize("recalibrate_at", [0.5, 1.0])
def test_recalibrate_at_acts_before_the_tolerance_without_warning(recalibrate_at: float) -> None:
    model, (b0,) = _model(recalibrate_at=recalibrate_at), _batches(1)
    stack = find_stack(model)
    _step(model, b0)
    e = max(stack.last_reconstruction_error)
    assert 0 < e <= TOL / 4
    stack.tolerance = e / 0.75  # the same batch again: its error is 0.75 of the tolerance
    anchors = stack.anchors
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # under the tolerance: never a warning
        _step(model, b0)
    assert max(stack.last_reconstruction_error) == pytest.approx(e)
    assert stack.anchors == (None if recalibrate_at == 0.5 else anchors)


def test_defaults_and_fields_reach_the_stack() -> None:
    cfg = pk.MEFT()
    assert (cfg.calibration_batches, cfg.adaptive_margin, cfg.recalibrate_at, cfg.sticky_anchors,
            cfg.calibration_nudges) == (1, False, 1.0, False, "auto")
    stack = find_stack(_model(calibration_nudges="auto"))
    h = torch.zeros(1, 2, 128)
    assert stack.nudges_per_layer(h) == 0  # fp32: no nudges (the fp32 anchors stay as they were)
    assert stack.nudges_per_layer(h.bfloat16()) == 4  # a bf16 model
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert stack.nudges_per_layer(h) == 4  # bf16 autocast
    stack = find_stack(_model(calibration_batches=2, adaptive_margin=True, recalibrate_at=0.25,
                              sticky_anchors=True, calibration_nudges=3))
    assert (stack.calibration_batches, stack.adaptive_margin, stack.recalibrate_at, stack.sticky_anchors,
            stack.nudges_per_layer(h)) == (2, True, 0.25, True, 3)


def test_default_nudges_under_autocast_hold_other_batches_here() -> None:
    """The default (4 nudges under bf16 autocast) on the random model: batch 0's calibration is nudged
    (more anchors than without) and no check fails on the next batches."""
    model, batches = _model(calibration_nudges="auto"), _batches(4)
    stack = find_stack(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a failed check would warn
        for b in batches:
            _step(model, b)
            assert max(stack.last_reconstruction_error) <= TOL
    assert stack.calibrations == 1
    plain = _model()
    _step(plain, batches[0])
    assert len(stack.anchors) > len(find_stack(plain).anchors)


@pytest.mark.parametrize("bad, match", [
    ({"calibration_batches": 0}, "calibration_batches must be an integer >= 1"),
    ({"calibration_batches": 2.5}, "calibration_batches must be an integer >= 1"),
    ({"calibration_batches": True}, "calibration_batches must be an integer >= 1"),
    ({"calibration_batches": "all"}, "calibration_batches must be an integer >= 1"),
    ({"adaptive_margin": "yes"}, "adaptive_margin must be true or false"),
    ({"sticky_anchors": 1}, "sticky_anchors must be true or false"),
    ({"calibration_nudges": -1}, "calibration_nudges must be 'auto' or an integer >= 0"),
    ({"calibration_nudges": "some"}, "calibration_nudges must be 'auto' or an integer >= 0"),
    ({"recalibrate_at": 0.0}, r"recalibrate_at must be in \(0, 1\]"),
    ({"recalibrate_at": 1.5}, r"recalibrate_at must be in \(0, 1\]"),
])
def test_bad_calibration_settings_refused(bad: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        pk.MEFT(**bad)
