"""DEFT's pure density functions against hand computations (explicit loops over b, t, j in Python floats)."""

from __future__ import annotations

import math

import pytest
import torch

from peftkit.methods.deft.density import (
    per_sample_density,
    per_sample_fraction,
    position_weights,
    smooth_l0,
    smooth_l0_grad,
)

EPS = 1e-7


def _hand_d(a: torch.Tensor, eps: float, valid: list[list[bool]] | None = None) -> list[float]:
    """d[b] = mean over the valid (t, j) of a^2 / (a^2 + eps), by loops."""
    out = []
    for b, sample in enumerate(a.tolist()):
        num, cnt = 0.0, 0
        for t, row in enumerate(sample):
            if valid is not None and not valid[b][t]:
                continue
            for v in row:
                num += v * v / (v * v + eps)
                cnt += 1
        out.append(num / cnt if cnt else 0.0)
    return out


def _acts(seed: int = 0, shape: tuple[int, ...] = (2, 3, 4)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(shape, generator=g, dtype=torch.float64) * 1e-3  # the surrogate's interesting range
    flat = a.view(-1)
    flat[0] = 0.0              # an exact zero (GELU far left)
    flat[-3] = 3.0             # a large one (s ~ 1)
    return a


def test_smooth_l0_and_grad_match_closed_forms():
    a = torch.tensor([0.0, 1e-4, -3.1622776601683795e-4, 0.1, -2.0], dtype=torch.float64)
    s = smooth_l0(a, EPS)
    for ai, si in zip(a.tolist(), s.tolist()):
        assert si == pytest.approx(ai * ai / (ai * ai + EPS), rel=1e-12)
    assert s[2].item() == pytest.approx(0.5, rel=1e-9)  # s = 1/2 at |a| = sqrt(eps)
    g = smooth_l0_grad(a, EPS)
    for ai, gi in zip(a.tolist(), g.tolist()):
        assert gi == pytest.approx(2 * ai * EPS / (ai * ai + EPS) ** 2, rel=1e-12, abs=1e-300)
    leaf = a.clone().requires_grad_()
    ref = torch.autograd.grad(smooth_l0(leaf, EPS).sum(), leaf)[0]
    torch.testing.assert_close(g, ref)


def test_smooth_l0_fp32_for_low_precision_input():
    a = torch.tensor([1e-3, 0.0], dtype=torch.bfloat16)
    assert smooth_l0(a, EPS).dtype == torch.float32
    assert smooth_l0(a, EPS)[1].item() == 0.0


@pytest.mark.parametrize("masked", [False, True])
def test_per_sample_density_matches_loops(masked):
    a = _acts()
    valid = [[True, True, False], [True, False, False]] if masked else None
    vt = torch.tensor(valid) if masked else None
    got = per_sample_density(a, EPS, vt)
    assert got.shape == (2,)
    for g, h in zip(got.tolist(), _hand_d(a, EPS, valid)):
        assert g == pytest.approx(h, rel=1e-10)


def test_per_sample_density_fp32_close_to_fp64():
    a = _acts()
    torch.testing.assert_close(per_sample_density(a.float(), EPS).double(), per_sample_density(a, EPS),
                               rtol=1e-5, atol=1e-7)


def test_per_sample_density_backward_is_the_exact_gradient():
    a = _acts().requires_grad_()
    valid = torch.tensor([[True, False, True], [False, True, True]])
    assert torch.autograd.gradcheck(lambda x: per_sample_density(x, EPS, valid), (a,), eps=1e-9, atol=1e-6)
    # and equals plain autograd through the closed form
    g = torch.randn(2, dtype=torch.float64)
    got = torch.autograd.grad((per_sample_density(a, EPS, valid) * g).sum(), a)[0]
    w = position_weights(valid, 2, 3, 4, dtype=torch.float64)
    ref_loss = ((smooth_l0(a, EPS) * w.unsqueeze(-1)).sum(dim=(1, 2)) * g).sum()
    torch.testing.assert_close(got, torch.autograd.grad(ref_loss, a)[0])


def test_position_weights_sum_to_one_per_sample_and_zero_for_empty():
    w = position_weights(torch.tensor([[True, False], [False, False]]), 2, 2, 5)
    assert w[0].sum().item() * 5 == pytest.approx(1.0)
    assert w[1].abs().sum().item() == 0.0
    with pytest.raises(ValueError, match="mask shape"):
        position_weights(torch.ones(2, 3, dtype=torch.bool), 2, 2, 5)


def test_per_sample_fraction_is_count_nonzero_over_t_times_d():
    a = torch.tensor([[[0.0, 1.0, 0.0], [2.0, 0.0, 0.0]], [[0.0, 0.0, 0.0], [1e-30, -1.0, 3.0]]])
    got = per_sample_fraction(a != 0)
    assert got.tolist() == [2 / 6, 3 / 6]  # torch.count_nonzero(a[b]) / (T * D) in IBM/DEFT
    masked = per_sample_fraction(a != 0, torch.tensor([[True, False], [False, True]]))
    assert masked.tolist() == [1 / 3, 3 / 3]
    none_valid = torch.zeros(1, 2, dtype=torch.bool)
    assert per_sample_fraction(torch.zeros(1, 2, 3, dtype=torch.bool), none_valid).item() == 0


def test_shapes_2d_and_4d_activations():
    a2 = _acts(shape=(2, 4))  # [b, d]: one position
    assert per_sample_density(a2, EPS).tolist() == pytest.approx(_hand_d(a2.unsqueeze(1), EPS))
    a4 = _acts(shape=(2, 2, 3, 4))  # [b, t1, t2, d] -> [b, 6, d]
    assert per_sample_density(a4, EPS).tolist() == pytest.approx(_hand_d(a4.reshape(2, 6, 4), EPS))
    with pytest.raises(ValueError):
        per_sample_density(torch.ones(3), EPS)


def test_surrogate_is_half_at_sqrt_eps_and_gradient_peaks_near_sqrt_eps_over_3():
    # docs/methods/deft.md: ds/da peaks at |a| = sqrt(eps/3) with value about 2.1e3 for eps = 1e-7
    a = torch.logspace(-6, -2, 4001, dtype=torch.float64)
    g = smooth_l0_grad(a, EPS)
    peak = a[g.argmax()].item()
    assert peak == pytest.approx(math.sqrt(EPS / 3), rel=1e-2)
    assert g.max().item() == pytest.approx(3 * math.sqrt(3) / (8 * math.sqrt(EPS)), rel=1e-3)
