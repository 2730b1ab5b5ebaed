"""Metrics against hand-computed values, and against scipy / sklearn where they are installed."""

from __future__ import annotations

import math
import random

import pytest

from peftkit import metrics as M
from peftkit.core.errors import ConfigError


def test_accuracy_and_binary_f1_by_hand() -> None:
    preds = [1, 0, 1, 1, 0, 1]
    golds = [1, 0, 0, 1, 1, 1]
    assert M.accuracy(preds, golds) == pytest.approx(4 / 6)
    # positive class 1: tp=3 (idx 0, 3, 5), fp=1 (idx 2), fn=1 (idx 4) -> 2*3 / (6 + 1 + 1)
    assert M.f1(preds, golds) == pytest.approx(6 / 8)


def test_macro_f1_by_hand() -> None:
    preds = [0, 0, 1, 2, 2, 2]
    golds = [0, 1, 1, 2, 2, 0]
    # class 0: tp1 fp1 fn1 -> 2/4; class 1: tp1 fp0 fn1 -> 2/3; class 2: tp2 fp1 fn0 -> 4/5
    assert M.macro_f1(preds, golds) == pytest.approx((0.5 + 2 / 3 + 0.8) / 3)
    # a class only predicted (3) counts with F1 0, as in sklearn
    assert M.macro_f1([3, 0], [0, 0]) == pytest.approx((2 / 3 + 0.0) / 2)


def test_matthews_binary_equals_phi_by_hand() -> None:
    preds = [1, 1, 0, 0, 1, 0, 1, 0]
    golds = [1, 0, 0, 0, 1, 1, 1, 0]
    tp, tn, fp, fn = 3, 3, 1, 1
    phi = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert M.matthews_corr(preds, golds) == pytest.approx(phi)
    assert M.matthews_corr([1, 1, 1], [0, 1, 0]) == 0.0  # constant predictions: undefined -> 0
    assert M.matthews_corr([0, 1, 2], [0, 1, 2]) == pytest.approx(1.0)


def test_pearson_and_spearman_by_hand() -> None:
    x, y = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 5.0, 9.0]
    mx, my = 2.5, 5.0
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y))
    r = cov / math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))
    assert M.pearson(x, y) == pytest.approx(r)
    assert M.spearman(x, y) == pytest.approx(1.0)  # monotone
    assert M.average_ranks([5, 1, 5, 3]) == [3.5, 1.0, 3.5, 2.0]
    # ties: ranks of x = [1.5, 1.5, 3], of y = [1, 2, 3]; pearson of those
    assert M.spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(M.pearson([1.5, 1.5, 3], [1, 2, 3]))


def test_against_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(0)
    x = [rng.randint(0, 5) for _ in range(60)]  # many ties
    y = [v + rng.random() * 3 for v in x]
    assert M.pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-12)
    assert M.spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-12)


def test_against_sklearn() -> None:
    skm = pytest.importorskip("sklearn.metrics")
    rng = random.Random(1)
    golds = [rng.randint(0, 3) for _ in range(80)]
    preds = [g if rng.random() < 0.6 else rng.randint(0, 4) for g in golds]
    assert M.macro_f1(preds, golds) == pytest.approx(skm.f1_score(golds, preds, average="macro"))
    assert M.matthews_corr(preds, golds) == pytest.approx(skm.matthews_corrcoef(golds, preds))


def test_squad_normalisation_em_f1_by_hand() -> None:
    assert M.normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert M.normalize_answer("an apple and a pear") == "apple and pear"
    preds = ["the Eiffel Tower", "Paris France", "blue"]
    golds = [["Eiffel Tower"], ["Paris", "in Paris, France"], ["red", "green"]]
    assert M.squad_exact_match(preds, golds) == pytest.approx(1 / 3)
    # q2: vs "paris": p=1/2 r=1 -> 2/3; vs "in paris france": p=1 r=2/3 -> 0.8; max 0.8
    assert M.squad_f1(preds, golds) == pytest.approx((1.0 + 0.8 + 0.0) / 3)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="2 predictions for 3"):
        M.accuracy([1, 0], [1, 0, 1])
    with pytest.raises(ValueError, match="no examples"):
        M.pearson([], [])
    with pytest.raises(ValueError, match="gold answers"):
        M.squad_f1(["x"], ["x"])
    with pytest.raises(ConfigError, match="unknown metric 'acc'"):
        M.compute(["acc"], [1], [1])
    assert M.compute(["accuracy", "matthews_corr"], [1, 0], [1, 0]) == {"accuracy": 1.0, "matthews_corr": 1.0}
