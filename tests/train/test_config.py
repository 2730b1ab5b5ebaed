"""Run configs: YAML round trip, dotted overrides, and one clear error for every unknown key."""

from __future__ import annotations

from pathlib import Path

import pytest
import toytask  # noqa: F401  (registers toy_tokens)
import yaml

from peftkit.core.errors import ConfigError
from peftkit.train.config import apply_overrides, config_from_dict_tree, dump_config, load_config, parse_value

BASE = {
    "out_dir": "runs/x",
    "seed": 3,
    "backbone": {"name": "tiny_bert", "hidden_dropout_prob": 0.0},
    "data": {"name": "toy_tokens", "n_train": 24},
    "methods": [{"name": "full"}],
    "train": {"epochs": 2, "lr": "1e-4", "batch_size": 4},
}


def test_yaml_round_trip(tmp_path: Path) -> None:
    cfg = config_from_dict_tree(BASE)
    assert cfg.train.lr == 1e-4 and isinstance(cfg.train.lr, float)  # YAML reads 1e-4 as a string
    assert cfg.backbone.kwargs == {"hidden_dropout_prob": 0.0} and cfg.data.kwargs == {"n_train": 24}
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(cfg))
    again = load_config(path)
    assert again == cfg
    assert yaml.safe_load(path.read_text())["data"] == {"name": "toy_tokens", "n_train": 24}


def test_overrides() -> None:
    tree = apply_overrides(
        BASE,
        [
            "train.lr=3e-4",
            "data.n_train=12",
            "method.name=head_only",
            "seed=7",
            "train.max_steps=null",
            "backbone.task=classification",
            "out_dir=2024",
        ],
    )
    cfg = config_from_dict_tree(tree)
    assert cfg.train.lr == 3e-4 and cfg.data.kwargs["n_train"] == 12 and cfg.seed == 7
    assert cfg.methods == [{"name": "head_only"}] and cfg.train.max_steps is None and cfg.out_dir == "2024"
    assert BASE["train"]["lr"] == "1e-4"  # the input tree is not modified
    two = apply_overrides(
        {**BASE, "methods": [{"name": "full"}, {"name": "head_only"}]}, ["methods.1.name=full"]
    )
    assert two["methods"][1] == {"name": "full"}
    assert parse_value("[1, 2]") == [1, 2] and parse_value("true") is True and parse_value("abc") == "abc"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["trian.lr=1"],
            r"unknown key\(s\) \['trian'\] in the run config; valid keys: out_dir, seed, backbone",
        ),
        (["train.lrr=1"], r"unknown key\(s\) \['lrr'\] in train; valid keys: epochs, batch_size"),
        (
            ["data.n_trian=3"],
            r"unknown key\(s\) \['n_trian'\] in data 'toy_tokens'; valid keys: name, n_train",
        ),
        (["data.n_train=many"], r"data.n_train must be int \(a whole number\), got 'many'"),
        (["method.rank=8"], r"unknown key\(s\) \['rank'\] in methods\[0\] for FullFineTune; valid keys"),
        (["method.name=lorax"], r"unknown method 'lorax'; choose one of: "),
        (["data.name=nope"], r"unknown dataset 'nope'"),
        (["train.schedule=step"], r"train.schedule must be one of linear, cosine, constant"),
        (["train.epochs=two"], r"train.epochs must be int \(a whole number\), got 'two'"),
        (["train.bf16=1"], r"train.bf16 must be bool"),
        (["train.batch_size=0"], r"train.batch_size must be >= 1"),
        (["backbone.num_labels=3"], r"num_labels is filled from the data"),
        (["train.lr"], r"not key=value"),
        (["methods.3.rank=1"], r"index '3' out of range"),
        (["data.n_train=[1"], r"cannot parse value"),
    ],
)
def test_bad_keys_and_values(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_dict_tree(apply_overrides(BASE, overrides))


def test_name_shorthands() -> None:
    tree = {"backbone": "tiny_bert", "data": "toy_tokens", "methods": ["full"]}
    cfg = config_from_dict_tree(apply_overrides(tree, ["data.n_train=8", "method.name=head_only"]))
    assert cfg.backbone.name == "tiny_bert" and cfg.data.kwargs == {"n_train": 8}
    assert cfg.methods == [{"name": "head_only"}]
    with pytest.raises(ConfigError, match=r"methods\[0\] must be a name or a mapping with a 'name'"):
        config_from_dict_tree({**tree, "methods": [{"rank": 8}]})


def test_single_method_shortcut_needs_one_method() -> None:
    tree = {**BASE, "methods": [{"name": "full"}, {"name": "head_only"}]}
    with pytest.raises(ConfigError, match="needs exactly one method"):
        apply_overrides(tree, ["method.name=full"])


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {lr: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="YAML mapping"):
        load_config(bad)
    bad.write_text("methods: []\n")
    with pytest.raises(ConfigError, match="non-empty list"):
        load_config(bad)
