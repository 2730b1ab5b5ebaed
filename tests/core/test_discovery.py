"""Discovery is installed by the package top; core finds backbones' specs through registered resolvers."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import pytest
from torch import nn

import peftkit as pk
from peftkit.core import discovery
from peftkit.core.apply import backbone_id
from peftkit.core.checkpoint import checkpoint_config
from peftkit.core.spec import (
    SPEC_ATTR,
    BackboneSpec,
    StackSpec,
    attach_spec,
    get_spec,
    register_spec_resolver,
)


def test_registry_alone_sees_the_builtins() -> None:
    """``import peftkit.core.registry`` runs the package top first, whose hook fills the registries."""
    code = ("import sys; import peftkit.core.registry as r; print(sorted(r.list_methods())); "
            "print(sorted(r.list_backbones())); print(sorted(r.list_datasets())); "
            "print(sorted(m for m in ('transformers', 'peft', 'bitsandbytes', 'h5py') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         check=True)
    methods, backbones, datasets, heavy = out.stdout.strip().splitlines()
    assert heavy == "[]"   # discovery registers everything without importing the optional heavy packages
    assert "'adapter'" in methods and "'lora'" in methods and "'deft'" in methods and "'meft'" in methods
    assert "'tiny_bert'" in backbones and "'tiny_point'" in backbones
    assert "'bbc_news'" in datasets


def test_hook_runs_once_and_not_reentrantly() -> None:
    calls: list[int] = []

    def hook() -> None:
        calls.append(1)
        discovery.discover()   # a module being discovered looks something up: no recursion

    try:
        discovery.set_discovery(hook)
        discovery.discover()
        discovery.discover()
        assert calls == [1]
    finally:
        discovery.set_discovery(pk._discover)


def test_a_failing_hook_is_retried() -> None:
    calls: list[int] = []

    def hook() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise ImportError("plugin broke")

    try:
        discovery.set_discovery(hook)
        with pytest.raises(ImportError, match="plugin broke"):
            discovery.discover()
        discovery.discover()
        discovery.discover()
        assert calls == [1, 1]
    finally:
        discovery.set_discovery(pk._discover)
    assert "lora" in pk.list_methods()


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([nn.Linear(3, 3)])


def test_registered_resolver_describes_a_model_without_a_spec() -> None:
    toy_spec = BackboneSpec("toy_family", (StackSpec("encoder", "blocks", {"mlp_out": ""}),))
    register_spec_resolver(lambda m: toy_spec if isinstance(m, _Toy) else None)
    model = _Toy()
    assert get_spec(model) is toy_spec
    assert backbone_id(model) == "toy_family:_Toy"
    with pytest.raises(pk.UnsupportedError, match="has no BackboneSpec"):
        get_spec(nn.Linear(2, 2))   # no resolver recognises a bare Linear


def test_hf_models_are_resolved_by_the_hf_backbone(tiny) -> None:
    model = tiny.build("tiny_bert")
    object.__delattr__(model, SPEC_ATTR)
    assert get_spec(model).family == "bert"


def test_attach_spec_records_the_backbone_id() -> None:
    model = attach_spec(_Toy(), BackboneSpec("toy", (StackSpec("encoder", "blocks", {}),)), "my_toy")
    assert backbone_id(model) == "my_toy"


def test_checkpoint_records_the_installed_version(tiny) -> None:
    model = pk.apply(tiny.build("tiny_bert"), pk.LoRA(rank=2))
    version = importlib.metadata.version("peftkit")
    assert checkpoint_config(model)["peftkit_version"] == version == pk.__version__
