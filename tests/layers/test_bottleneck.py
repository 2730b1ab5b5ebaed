"""The shared bottleneck: the formula by hand, the three inits, residual, dropout, the activation table."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from peftkit.core.errors import ConfigError
from peftkit.layers.bottleneck import ACTIVATIONS, Bottleneck, QuickGELU, activation


def _randomise(b: Bottleneck) -> None:
    with torch.no_grad():
        for p in b.parameters():
            p.copy_(torch.randn_like(p) * 0.5)


@pytest.mark.parametrize("act,fn", [("relu", F.relu), ("gelu", F.gelu), ("silu", F.silu),
                                    ("gelu_new", lambda x: F.gelu(x, approximate="tanh")),
                                    ("quick_gelu", lambda x: x * torch.sigmoid(1.702 * x))])
def test_formula_by_hand(act: str, fn) -> None:
    torch.manual_seed(0)
    b = Bottleneck(6, 3, 4, activation=act, scale=2.5)
    _randomise(b)
    h = torch.randn(2, 5, 6)
    want = 2.5 * F.linear(fn(F.linear(h, b.down.weight, b.down.bias)), b.up.weight, b.up.bias)
    torch.testing.assert_close(b(h), want)
    assert b(h).shape == (2, 5, 4)


def test_residual_adds_the_input() -> None:
    torch.manual_seed(0)
    b = Bottleneck(6, 3, residual=True, init="xavier", bias_std=0.1)
    h = torch.randn(4, 6)
    delta = F.linear(F.relu(F.linear(h, b.down.weight, b.down.bias)), b.up.weight, b.up.bias)
    torch.testing.assert_close(b(h), h + delta)
    with pytest.raises(ConfigError, match="d_out == d_in"):
        Bottleneck(6, 3, 5, residual=True)


def test_near_identity_init_is_exactly_zero() -> None:
    torch.manual_seed(0)
    b = Bottleneck(256, 64, init="near_identity", init_std=1e-3)
    assert abs(b.down.weight.std().item() - 1e-3) < 1e-4
    for t in (b.down.bias, b.up.weight, b.up.bias):
        assert torch.count_nonzero(t) == 0
    assert torch.count_nonzero(b(torch.randn(3, 256))) == 0


def test_normal_init_matches_the_meft_recipe() -> None:
    """Both weights N(0, std^2) drawn down then up, biases zero: the numbers of the hand-written recipe."""
    torch.manual_seed(1)
    b = Bottleneck(64, 16, init="normal", init_std=0.02)
    torch.manual_seed(1)
    down, up = nn.Linear(64, 16), nn.Linear(16, 64)
    for lin in (down, up):
        nn.init.normal_(lin.weight, std=0.02)
        nn.init.zeros_(lin.bias)
    torch.testing.assert_close(b.down.weight, down.weight, rtol=0, atol=0)
    torch.testing.assert_close(b.up.weight, up.weight, rtol=0, atol=0)
    assert torch.count_nonzero(b.down.bias) == 0 and torch.count_nonzero(b.up.bias) == 0
    assert 0.015 < b.up.weight.std().item() < 0.025


def test_xavier_init_matches_the_point_peft_recipe() -> None:
    torch.manual_seed(2)
    b = Bottleneck(32, 8, init="xavier", bias_std=1e-6, activation="quick_gelu")
    torch.manual_seed(2)
    down, up = nn.Linear(32, 8), nn.Linear(8, 32)
    for lin in (down, up):
        nn.init.xavier_uniform_(lin.weight)
        nn.init.normal_(lin.bias, std=1e-6)
    for mine, ref in ((b.down, down), (b.up, up)):
        torch.testing.assert_close(mine.weight, ref.weight, rtol=0, atol=0)
        torch.testing.assert_close(mine.bias, ref.bias, rtol=0, atol=0)
    bound = (6 / (32 + 8)) ** 0.5
    assert b.down.weight.abs().max().item() <= bound and b.down.weight.abs().max().item() > 0.5 * bound


def test_dropout_only_in_training() -> None:
    torch.manual_seed(0)
    b = Bottleneck(16, 64, dropout=0.5, init="normal", init_std=0.5)
    h = torch.randn(8, 16)
    b.eval()
    torch.testing.assert_close(b(h), b(h))
    b.train()
    assert not torch.allclose(b(h), b(h))
    assert isinstance(Bottleneck(4, 2).drop, nn.Identity)
    with pytest.raises(ConfigError, match=r"dropout must be in \[0, 1\)"):
        Bottleneck(4, 2, dropout=1.0)


def test_adapter_params_are_all_four() -> None:
    assert Bottleneck(4, 2).adapter_params() == ["down.weight", "down.bias", "up.weight", "up.bias"]


def test_activation_table_and_errors() -> None:
    assert isinstance(activation("quick_gelu"), QuickGELU)
    assert activation("gelu_pytorch_tanh").approximate == "tanh"
    assert isinstance(activation("swish"), nn.SiLU)
    assert {"relu", "gelu", "silu"} <= set(ACTIVATIONS)
    with pytest.raises(ConfigError, match=r"adapter_act 'tanhh' is unknown; choose one of: gelu, "):
        activation("tanhh", "adapter_act")
    with pytest.raises(ConfigError, match="bottleneck init 'zeros' is unknown"):
        Bottleneck(4, 2, init="zeros")
