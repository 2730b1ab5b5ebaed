"""The threshold-aware DEFT surrogate (``DEFT(centre="threshold")``, not in the paper): its value and gradient
on a hand example, the calibration of its centres, the contract with ``pk.aux_loss``, bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import peftkit as pk
from peftkit.core.errors import ConfigError, PeftkitError
from peftkit.methods.deft.apply import deft_probes
from peftkit.methods.deft.calibrate import thresholds_of
from peftkit.methods.deft.centre import calibrate_centres
from peftkit.methods.deft.density import per_sample_density, smooth_l0_excess, smooth_l0_excess_grad

A = [-0.5, -0.05, 0.0, 0.05, 0.12, 0.3]
TAU, EPS = 0.1, 0.01
# r = relu(|a| - tau) = [0.4, 0, 0, 0, 0.02, 0.2]; s = r^2 / (r^2 + eps);
# ds/da = sign(a) 2 r eps / (r^2 + eps)^2
S_HAND = [0.16 / 0.17, 0.0, 0.0, 0.0, 0.0004 / 0.0104, 0.04 / 0.05]
G_HAND = [-0.008 / 0.17**2, 0.0, 0.0, 0.0, 0.0004 / 0.0104**2, 0.004 / 0.05**2]


def test_value_and_gradient_on_a_hand_example():
    a = torch.tensor(A, dtype=torch.float64)
    assert torch.allclose(smooth_l0_excess(a, EPS, TAU), torch.tensor(S_HAND, dtype=torch.float64))
    assert torch.allclose(smooth_l0_excess_grad(a, EPS, TAU), torch.tensor(G_HAND, dtype=torch.float64))
    x = a.clone().view(1, 1, 6).requires_grad_(True)
    d = per_sample_density(x, EPS, tau=TAU)
    assert d.item() == pytest.approx(sum(S_HAND) / 6, rel=1e-12)
    d.sum().backward()
    assert torch.allclose(x.grad.view(-1), torch.tensor(G_HAND, dtype=torch.float64) / 6)
    assert x.grad.view(-1)[1:4].abs().max().item() == 0.0  # under the threshold: no pull at all


def test_analytic_backward_is_the_exact_gradient_and_tau_zero_is_the_paper():
    g = torch.Generator().manual_seed(0)
    a = (torch.randn(2, 3, 5, generator=g, dtype=torch.float64) * 0.3).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: per_sample_density(x, EPS, tau=0.15), (a,))
    paper = per_sample_density(a, EPS)
    assert torch.equal(per_sample_density(a, EPS, tau=0.0), paper)
    assert bool((per_sample_density(a, EPS, tau=0.15) < paper).all())  # r <= |a|: never more than the paper


def _batches(n: int, seed: int, b: int = 4, t: int = 12) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        mask = torch.ones(b, t, dtype=torch.long)
        mask[0, t // 2:] = 0
        out.append({"input_ids": torch.randint(5, 1000, (b, t), generator=g), "attention_mask": mask})
    return out


def _model(centre: str = "threshold") -> nn.Module:
    torch.manual_seed(0)
    base = pk.load_backbone("tiny_bert", task="classification", num_labels=3)
    return pk.apply(base, [pk.LoRA(), pk.DEFT(eps=EPS, centre=centre, centre_q=0.8)])


def test_centres_are_the_sparsify_thresholds_and_the_term_trains_the_adapter():
    model = _model()
    calib = _batches(4, seed=0)
    model(**_batches(1, seed=1)[0])
    with pytest.raises(PeftkitError, match="calibrate_centres"):
        pk.aux_loss(model)
    pk.sparsify(model.eval(), 0.8, calib=calib, allow_training=True)
    taus = calibrate_centres(model, calib)
    sparsify_taus = [float(m.tau) for m in thresholds_of(model)]
    assert list(taus.values()) == pytest.approx(sparsify_taus, rel=0, abs=0) and min(sparsify_taus) > 0
    assert [p.tau for p in deft_probes(model)] == list(taus.values())
    model.train()
    model(**_batches(1, seed=2)[0])
    loss = pk.aux_loss(model)
    assert 0.0 < loss.item() < 1.0
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if p.requires_grad and "lora" in n.lower()]
    assert grads and any(g is not None and g.abs().sum() > 0 for g in grads)


def test_the_centred_term_is_below_the_paper_term_on_the_same_model():
    calib, batch = _batches(4, seed=0), _batches(1, seed=3)[0]
    paper, centred = _model("zero").eval(), _model("threshold").eval()
    calibrate_centres(centred, calib)
    with torch.no_grad():
        paper(**batch)
        centred(**batch)
        p, c = pk.aux_loss(paper).item(), pk.aux_loss(centred).item()
    assert 0.0 < c < p


@pytest.mark.parametrize("kwargs, match", [({"centre": "middle"}, "centre must be one of"),
                                           ({"centre_q": 1.0}, "centre_q"), ({"centre_q": 0.0}, "centre_q")])
def test_bad_config_is_one_clear_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        pk.DEFT(**kwargs)


def test_bad_calibration_input_is_one_clear_error():
    with pytest.raises(ConfigError, match="no DEFT with centre='threshold'"):
        calibrate_centres(_model("zero"), _batches(1, seed=0))
    with pytest.raises(ConfigError, match="calibration set is empty"):
        calibrate_centres(_model(), [])
    with pytest.raises(ValueError, match="tau"):
        per_sample_density(torch.ones(1, 2, 3), EPS, tau=-0.1)
