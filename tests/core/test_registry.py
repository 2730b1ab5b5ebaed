"""Registries: duplicate names raise, unknown names list the valid ones."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

import peftkit as pk
from peftkit.core import registry


@dataclass
class _Cfg:
    pass


def test_duplicate_method_raises() -> None:
    pk.list_methods()   # make sure the built-ins are registered, whatever ran first
    with pytest.raises(ValueError, match="'lora' is already registered"):
        registry.register_method("lora", _Cfg, lambda m, s, c: None)


def test_duplicate_backbone_and_dataset_raise() -> None:
    pk.list_backbones()   # make sure the built-ins are registered
    with pytest.raises(ValueError, match="'tiny_bert' is already registered"):
        registry.register_backbone("tiny_bert")(lambda **kw: None)
    name = "_test_dataset_dup"
    try:
        registry.register_dataset(name)(lambda: None)
        with pytest.raises(ValueError, match="already registered"):
            registry.register_dataset(name)(lambda: None)
    finally:
        registry.unregister("dataset", name)


def test_unknown_method_lists_valid() -> None:
    with pytest.raises(pk.ConfigError, match=r"unknown method 'lorra'; choose one of: .*adapter.*lora"):
        registry.get_method("lorra")


def test_unknown_backbone_lists_valid() -> None:
    with pytest.raises(pk.ConfigError, match=r"unknown backbone 'bert_tiny'.*tiny_bert"):
        pk.load_backbone("bert_tiny")


def test_config_of_unregistered_class() -> None:
    with pytest.raises(pk.ConfigError, match="_Cfg is not the config of a registered method"):
        registry.method_for_config(_Cfg())


def test_methods_are_listed_with_summaries() -> None:
    methods = pk.list_methods()
    for name in ("adapter", "lora", "dora", "qlora", "ia3", "prompt", "prefix", "full", "head_only"):
        assert methods[name], name
    assert registry.method_for_config(pk.DoRA()).name == "dora"   # exact type: DoRA is not LoRA
    assert registry.method_for_config(pk.LoRA()).name == "lora"


def test_tokenizers_are_found_through_the_registry() -> None:
    """Datasets look a backbone's tokenizer up in core; the backbone registered the loader."""
    sentinel = object()
    try:
        registry.register_tokenizer("_test_backbone", lambda: sentinel)
        assert registry.get_tokenizer("_test_backbone") is sentinel
        assert pk.load_tokenizer("_test_backbone") is sentinel
    finally:
        registry.unregister("tokenizer", "_test_backbone")
    with pytest.raises(pk.ConfigError, match=r"no tokenizer for backbone '_test_backbone'; .*tiny_bert"):
        registry.get_tokenizer("_test_backbone")
    with pytest.raises(pk.ConfigError, match="unknown registry 'model'; choose one of: method, backbone"):
        registry.unregister("model", "x")
