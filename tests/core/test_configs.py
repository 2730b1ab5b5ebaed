"""Method configs to and from plain dicts: unknown keys and bad values are one ConfigError each."""

from __future__ import annotations

import pytest

import peftkit as pk
from peftkit.core.configs import config_from_dict, config_to_dict


def test_round_trip_turns_lists_into_tuples() -> None:
    cfg = pk.LoRA(rank=4, targets=("attn_q", "mlp_out"))
    d = config_to_dict(cfg)
    assert d["targets"] == ["attn_q", "mlp_out"]
    assert config_from_dict(pk.LoRA, d) == cfg


def test_unknown_key_lists_valid_keys() -> None:
    with pytest.raises(pk.ConfigError, match=r"\[.rnak.\] in x.yaml for LoRA; valid keys: alpha"):
        config_from_dict(pk.LoRA, {"rnak": 4}, where="x.yaml")


def test_bad_value_message_is_not_wrapped_twice() -> None:
    with pytest.raises(pk.ConfigError) as e:
        config_from_dict(pk.Adapter, {"kind": "serial"})
    assert str(e.value).startswith("Adapter.kind must be one of")


def test_wrong_type_is_a_config_error() -> None:
    with pytest.raises(pk.ConfigError, match="LoRA.rank must be a positive int"):
        config_from_dict(pk.LoRA, {"rank": "8"})
