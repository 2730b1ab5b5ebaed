"""``peftkit bench deft`` / ``bench density``: config parsing, the PEFT-vs-DEFT pairing, the aggregation."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from peftkit.bench import deft as B
from peftkit.bench import density as D
from peftkit.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[3]


def test_overrides_and_unknown_keys():
    cfg = B.parse_overrides(["pairs=minilm_lora", "seeds=2", "weight=10", "eps=1e-4"])
    assert (cfg.pairs, cfg.seeds, cfg.weight, cfg.eps) == ("minilm_lora", 2, 10.0, 1e-4)
    with pytest.raises(ConfigError, match="keys"):
        B.parse_overrides(["seed=3"])
    with pytest.raises(ConfigError, match="unknown pair"):
        B.parse_overrides(["pairs=minilm_ia3"])


def test_peft_and_deft_runs_differ_only_by_the_deft_entry():
    cfg = B.parse_overrides(["pairs=minilm_prompt"])
    peft = B.run_config(cfg, "minilm_prompt", 1, deft=False).to_dict()
    deft = B.run_config(cfg, "minilm_prompt", 1, deft=True).to_dict()
    assert deft["methods"][:-1] == peft["methods"]
    assert deft["methods"][-1] == {"name": "deft", "weight": 1.0, "eps": 1e-7, "exclude_padding": False}
    for key in ("seed", "backbone", "data", "train"):
        assert peft[key] == deft[key], key
    assert peft["out_dir"].endswith("minilm_prompt/peft_s1") and deft["out_dir"].endswith("deft_s1")
    swept = B.run_config(B.parse_overrides(["weight=100"]), "minilm_prompt", 1, deft=True)
    assert swept.out_dir.endswith("deft_w100_e1e-07_s1")


@pytest.mark.parametrize("pair", [p for p in B.PAIRS if p.startswith("minilm") or p.startswith("smollm2")])
def test_bench_stacks_match_the_shipped_configs(pair):
    backbone, stack, lr = B.PAIRS[pair]
    method = {"minilm_pfeiffer": "pfeiffer"}.get(pair, pair.split("_", 1)[1])
    tree = yaml.safe_load((ROOT / "configs" / "text" / f"bbc_{backbone}__{method}+deft.yaml").read_text())
    assert tree["backbone"]["name"] == backbone
    assert tree["methods"][:-1] == list(stack) and tree["methods"][-1]["name"] == "deft"
    assert tree["methods"][-1]["eps"] == 1e-7 and tree["methods"][-1]["weight"] == 1.0
    assert tree["train"]["lr"] == lr and tree["train"]["measure_density"] is True


def _metrics(acc: float, exact: float, layers: tuple[float, ...]) -> dict[str, float]:
    m = {"eval/accuracy": acc}
    for name in B.METRICS:
        m[f"density/{name}@fp32"] = exact
        for i, v in enumerate(layers):
            m[f"density/{name}/L{i}@fp32"] = v
    return m


def test_summary_means_stds_and_per_seed_relative_reduction():
    peft = [_metrics(0.90, 80.0, (70.0, 90.0)), _metrics(0.92, 60.0, (50.0, 70.0))]
    deft = [_metrics(0.89, 40.0, (30.0, 50.0)), _metrics(0.92, 45.0, (40.0, 50.0))]
    rows = B.summarise("minilm_lora", peft, deft)
    p, d, r = rows
    assert (p["variant"], d["variant"], r["variant"]) == ("PEFT", "DEFT", "reduction")
    assert p["accuracy"] == pytest.approx(91.0) and p["exact"] == pytest.approx(70.0)
    assert p["exact_std"] == pytest.approx(14.142135, rel=1e-6)
    assert r["exact"] == pytest.approx((50.0 + 25.0) / 2)        # per seed: 100 (80-40)/80, 100 (60-45)/60
    assert r["accuracy"] == pytest.approx((-1.0 + 0.0) / 2)
    assert p["layers"]["exact"] == [60.0, 80.0] and d["layers"]["gt1e-02"] == [35.0, 50.0]


def test_density_bench_needs_a_finished_run(tmp_path):
    with pytest.raises(ConfigError, match="run_dir"):
        D.parse_overrides([])
    with pytest.raises(ConfigError, match="not a finished run"):
        D.parse_overrides([f"run_dir={tmp_path}"])
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    (tmp_path / "adapter").mkdir()
    with pytest.raises(ConfigError, match="dtype"):
        D.parse_overrides([f"run_dir={tmp_path}", "dtypes=fp32,int8"])
    assert D.parse_overrides([f"run_dir={tmp_path}", "dtypes=bf16", "split=val"]).dtypes == "bf16"
