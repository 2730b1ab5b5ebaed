"""MEFT's whole-step peak of live tensor bytes against full fine-tuning, on a small random BERT.

The bounds come from measurements of this setting (d 128, 4 heads, t 512, b 2, dropout 0.1, 4 layers):
MEFT 0.19-0.21 of full FT, and 0.30 (MEFT1) when attention dropout takes the math path, whose
[b, h, t, t] graph stays alive in the recomputed layer.
"""

from __future__ import annotations

import warnings

import pytest

from peftkit.bench import memory_sweep
from peftkit.bench.memory_live import measure_live

VARIANTS = ("meft1", "meft2", "meft3")
T = 512  # two head groups of DropoutAttention at d 128, b 2
CFG = memory_sweep.parse(["batch_size=2", "device=cpu"])


def _peak(label: str, layers: int) -> int:
    """Live-byte peak of one training step (after a warm-up step) of ``bench memory``'s ``label``."""
    return measure_live(CFG, "d128", layers, T, label, "cpu")["peak_bytes"]


@pytest.fixture(scope="module")
def full_peak() -> int:
    return _peak("full FT", 4)


@pytest.mark.parametrize("variant", VARIANTS)
def test_meft_step_peak_small_and_flat_in_depth(variant: str, full_peak: int) -> None:
    label = variant.upper()
    deep, shallow = _peak(label, 4), _peak(label, 2)
    print(f"{variant}: peak {deep / full_peak:.3f} of full FT; 4 / 2 layers {deep / shallow:.3f}")
    assert deep <= 0.25 * full_peak   # measured 0.19-0.21 (0.3 with attention dropout on the math path)
    assert deep <= 1.08 * shallow     # measured 1.02-1.04 (anchors: two streams each)


def test_vanilla_backward_peak_grows_with_depth() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        deep = _peak("MEFT1 vanilla", 4)
        shallow = _peak("MEFT1 vanilla", 2)
    assert deep > 1.4 * shallow       # measured 1.56: every layer's graph is kept
