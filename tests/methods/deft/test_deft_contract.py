"""The contract suite with DEFT stacked on each method (cases and fixtures of test_contract.py / conftest.py).

DEFT trains nothing, so the checks are: the stack's outputs equal the same stack's without DEFT (at init and
after load), gradients reach exactly the method parameters and the head (the density term included), the
parameter counts are those of the stack without DEFT, save -> fresh -> load reproduces outputs and the
density term, and ``pk.remove`` restores the base.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import peftkit as pk
from methods.test_contract import CASES, Case, _method_params, _perturb, head_count  # tests/ is on sys.path
from peftkit.core.state import get_state

STACKED = ("adapter-houlsby", "adapter-pfeiffer", "adapter-parallel", "lora", "dora", "ia3", "qlora-bnb",
           "prompt", "prefix", "adapter+lora", "lora-point", "adapter-houlsby-point")
DEFT_CASES = [c for c in CASES if c.id in STACKED]


def _stack(case: Case) -> list[Any]:
    cfg = case.config()
    return [*(cfg if isinstance(cfg, list) else [cfg]), pk.DEFT(weight=0.5)]


def _params() -> list[Any]:
    return [pytest.param(c, b, id=f"{c.id}+deft-{b}") for c in DEFT_CASES for b in c.backbones]


def test_every_stacked_case_exists():
    assert {c.id for c in DEFT_CASES} == set(STACKED)


@pytest.mark.parametrize("case,name", _params())
def test_deft_changes_no_output(case: Case, name: str, tiny: Any) -> None:
    torch.manual_seed(5)
    plain = pk.apply(tiny.build(name), case.config())
    torch.manual_seed(5)
    with_deft = pk.apply(tiny.build(name), _stack(case))
    assert torch.equal(tiny.output(with_deft, name), tiny.output(plain, name))
    assert torch.isfinite(pk.aux_loss(with_deft)) and pk.aux_loss(with_deft).item() > 0


@pytest.mark.parametrize("case,name", _params())
def test_density_gradient_reaches_only_method_and_head(case: Case, name: str, tiny: Any) -> None:
    model = pk.apply(tiny.build(name), _stack(case))
    state = get_state(model)
    _perturb(_method_params(model))
    (tiny.forward(model, name).float().pow(2).mean() + pk.aux_loss(model)).backward()
    expected = {id(p) for p in _method_params(model)} | {id(p) for p in state.head_parameters()}
    assert {id(p) for p in model.parameters() if p.grad is not None} == expected
    # the density term alone reaches the method (the head sits after every MLP)
    model.zero_grad(set_to_none=True)
    tiny.forward(model, name)
    pk.aux_loss(model).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in _method_params(model))


@pytest.mark.parametrize("case,name", _params())
def test_param_report_is_the_stack_without_deft(case: Case, name: str, tiny: Any) -> None:
    base = tiny.build(name)
    spec = pk.get_spec(base)
    expected = {owner: f(base, spec) for owner, f in case.owners.items()}
    head = head_count(base, spec)
    report = pk.param_report(pk.apply(base, _stack(case)))
    assert report.owner("deft").params == 0
    for owner, n in expected.items():
        assert report.owner(owner).trainable == n, owner
    assert report.trainable == sum(expected.values()) + head


@pytest.mark.parametrize("case,name", _params())
def test_save_fresh_load_reproduces_outputs_and_density(case: Case, name: str, tiny: Any,
                                                        tmp_path: Any) -> None:
    model = pk.apply(tiny.build(name), _stack(case))
    _perturb([p for p in model.parameters() if p.requires_grad])
    ref = tiny.output(model, name)
    aux = pk.aux_loss(model)
    pk.save_adapter(model, tmp_path / "ckpt")
    torch.manual_seed(1)
    fresh = pk.load_adapter(tiny.build(name), tmp_path / "ckpt")
    assert [a.name for a in get_state(fresh).applied][-1] == "deft"
    assert torch.equal(tiny.output(fresh, name), ref)
    assert torch.equal(pk.aux_loss(fresh), aux)


@pytest.mark.parametrize("case,name", _params())
def test_remove_restores_base(case: Case, name: str, tiny: Any) -> None:
    model = tiny.build(name)
    ref = tiny.output(model, name)
    modules = [(n, type(m), id(m)) for n, m in model.named_modules()]
    keys = list(model.state_dict())
    hooks = (len(model._forward_pre_hooks), len(model._forward_hooks))
    applied = pk.apply(model, _stack(case))
    _perturb(_method_params(applied))
    tiny.output(applied, name)
    base = pk.remove(applied)
    assert base is model and torch.equal(tiny.output(base, name), ref)
    assert [(n, type(m), id(m)) for n, m in base.named_modules()] == modules
    assert list(base.state_dict()) == keys
    assert (len(base._forward_pre_hooks), len(base._forward_hooks)) == hooks
    assert get_state(base) is None
