"""The pure parts of ``peftkit bench sparsity`` / ``sparse_speed``: McNemar, selection on validation,
break-even interpolation, option checking."""

from __future__ import annotations

import pytest

from peftkit.bench import sparse_speed, sparsity, sparsity_report
from peftkit.core.errors import ConfigError


def test_mcnemar_exact_two_sided():
    assert sparsity.mcnemar_p(0, 0) == 1.0
    assert sparsity.mcnemar_p(0, 5) == pytest.approx(2 / 32)      # 2 * P(X <= 0), X ~ Bin(5, 1/2)
    assert sparsity.mcnemar_p(1, 6) == pytest.approx(2 * 8 / 128)  # 2 * (1 + 7) / 2^7
    assert sparsity.mcnemar_p(10, 10) == 1.0


def test_compare_counts_discordant_pairs():
    got = sparsity.compare(preds=[0, 1, 1, 2], dense=[0, 1, 2, 2], golds=[0, 2, 2, 2])
    assert got == {"acc": 50.0, "agree": 75.0, "only_dense": 1, "only_sparse": 0, "n": 4}


def _run(seed: int, accs: dict[str, list[float]], dense: float = 90.0) -> dict:
    curves = {rule: [{"q": q, "acc": a, "density": 100 * (1 - q), "only_dense": 0 if a >= dense - 1 else 30,
                      "only_sparse": 0} for q, a in zip((0.0, 0.5, 0.9), xs)] for rule, xs in accs.items()}
    return {"seed": seed, "val_dense_acc": dense, "curves": curves}


def test_selection_takes_the_largest_q_within_one_point_and_not_significant():
    runs = [_run(0, {"magnitude": [90, 89.5, 80], "sign": [90, 89.0, 89.2]}),
            _run(1, {"magnitude": [90, 89.5, 80], "sign": [90, 89.2, 89.0]})]
    sel = sparsity_report.select(runs, ["magnitude", "sign"])
    assert (sel["rule"], sel["q"]) == ("sign", 0.9)
    sel = sparsity_report.select(runs, ["magnitude"])
    assert (sel["rule"], sel["q"]) == ("magnitude", 0.5)
    # averaged over seeds: one seed far below pulls the mean out of the 1-point band
    runs = [_run(0, {"magnitude": [90, 89.5, 89.5]}), _run(1, {"magnitude": [90, 89.5, 86.0]})]
    assert sparsity_report.select(runs, ["magnitude"])["q"] == 0.5


def test_break_even_interpolates_where_the_ratio_crosses_one():
    rows = [{"density": 50.0, "mlp_ratio": 0.6}, {"density": 30.0, "mlp_ratio": 0.8},
            {"density": 10.0, "mlp_ratio": 1.2}]
    assert sparse_speed.break_even(rows) == pytest.approx(20.0)
    assert sparse_speed.break_even([{"density": 10.0, "mlp_ratio": 0.9}]) is None


def test_unknown_variant_or_rule_is_one_clear_error():
    with pytest.raises(ConfigError, match="unknown variant/rule"):
        sparsity.parse(["variants=lora,nope"])
    with pytest.raises(ConfigError, match="unknown option"):
        sparsity.parse(["epoch=3"])
    assert sparsity.parse(["seeds=1", "rules=sign"]).seeds == 1
