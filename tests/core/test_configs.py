"""Method configs to and from plain dicts: unknown keys and bad values are one ConfigError each."""

from __future__ import annotations

import pytest

import peftkit as pk
from peftkit.core.configs import coerce_scalar, config_from_dict, config_to_dict, method_configs


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


def test_yaml_float_strings_become_floats() -> None:
    """YAML 1.1 reads ``1e-7`` as a string: a float field takes it as the number, a non-number is an error."""
    cfg = config_from_dict(pk.DEFT, {"eps": "1e-7", "weight": 2})
    assert cfg.eps == 1e-7 and type(cfg.weight) is float and cfg.weight == 2.0
    assert config_from_dict(pk.Adapter, {"init_scale": "5e-3"}).init_scale == 5e-3
    with pytest.raises(pk.ConfigError, match=r"Adapter.init_scale must be float \(a number\), got 'tiny'"):
        config_from_dict(pk.Adapter, {"init_scale": "tiny"})


@pytest.mark.parametrize("value,hint,want", [
    ("1e-4", float, 1e-4), (3, float, 3.0), (4.0, int, 4), (True, bool, True), (2024, str, "2024"),
    (None, int | None, None), ("2e-3", float | None, 2e-3), ([1, 2], list[int], [1, 2]),
    ("mlp_out", tuple[str, ...], ("mlp_out",)), (["a", "b"], list[str], ["a", "b"]),
])
def test_coerce_scalar_accepts(value: object, hint: object, want: object) -> None:
    got = coerce_scalar(value, hint, "train.x")
    assert got == want and type(got) is type(want)


@pytest.mark.parametrize("value,hint,msg", [
    ("fast", float, "train.x must be float (a number), got 'fast'"),
    ("inf", float, "train.x must be float (a finite number), got 'inf'"),
    (4.5, int, "train.x must be int (a whole number), got 4.5"),
    (True, int, "train.x must be int (a whole number), got True"),
    (1, bool, "train.x must be bool (true or false), got 1"),
    (None, float, "train.x must be float (a number), got None"),
    (False, float, "train.x must be float (a number), got False"),
    ([1], tuple[str, ...], "train.x must be a list of names, got [1]"),
    (None, str, "train.x must be str (text), got None"),
])
def test_coerce_scalar_rejects(value: object, hint: object, msg: str) -> None:
    with pytest.raises(pk.ConfigError) as e:
        coerce_scalar(value, hint, "train.x")
    assert str(e.value) == msg


def test_method_configs_in_stack_order() -> None:
    cfgs = method_configs([{"name": "lora", "rank": 4}, {"name": "deft", "eps": "1e-6"}])
    assert cfgs == [pk.LoRA(rank=4), pk.DEFT(eps=1e-6)]


@pytest.mark.parametrize("methods,msg", [
    ([{"rank": 4}], r"methods\[0\] has no 'name'"),
    (["lora"], r"methods\[0\] has no 'name'"),
    ([{"name": "lora"}, {"name": "loar"}], r"unknown method 'loar'; choose one of: .*lora"),
    ([{"name": "lora", "rnak": 2}], r"unknown key\(s\) \['rnak'\] in methods\[0\] for LoRA"),
    ([{"name": "deft"}, {"name": "lora", "rank": "8"}],
     r"methods.1.rank \(lora\) must be int \(a whole number\)"),
])
def test_method_configs_errors(methods: list, msg: str) -> None:
    with pytest.raises(pk.ConfigError, match=msg):
        method_configs(methods)
