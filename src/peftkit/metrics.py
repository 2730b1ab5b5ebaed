"""Task metrics: classification (accuracy, F1, MCC), regression (Pearson, Spearman) and SQuAD EM / F1.

Every metric returns a fraction in [0, 1] (or a correlation in [-1, 1]); the official SQuAD script reports
percentages, we do not multiply by 100. Definitions follow the GLUE and SQuAD v1.1 evaluation code:

    accuracy        mean(pred == gold)
    f1              binary F1 of the positive class 1 (GLUE's MRPC / QQP "F1")
    macro_f1        unweighted mean of per-class F1 over the classes present in gold or pred (sklearn)
    matthews_corr   multiclass MCC (Gorodkin 2004)
                    = (c*s - sum_k p_k t_k) / sqrt((s^2 - sum p_k^2)(s^2 - sum t_k^2)),
                    c correct, s samples, p_k predicted / t_k true counts of class k; 0 when undefined
    pearson         Pearson r of predictions and gold scores (STS-B)
    spearman        Pearson r of the ranks, ties take their average rank
    squad_exact_match / squad_f1   max over gold answers after SQuAD normalisation (lowercase, drop
                    punctuation and the articles a/an/the, collapse whitespace); F1 over bag-of-tokens overlap

Shapes: n examples; ``preds`` and ``golds`` are 1-D sequences of length n.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence

from peftkit.core.errors import ConfigError

Num = int | float


def _check(preds: Sequence[Num], golds: Sequence[Num]) -> None:
    if len(preds) != len(golds):
        raise ValueError(f"{len(preds)} predictions for {len(golds)} gold labels")
    if len(golds) == 0:
        raise ValueError("no examples to score")


def accuracy(preds: Sequence[Num], golds: Sequence[Num]) -> float:
    """Fraction of exact matches."""
    _check(preds, golds)
    return sum(int(p == g) for p, g in zip(preds, golds)) / len(golds)


def _f1_of(tp: int, fp: int, fn: int) -> float:
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def f1(preds: Sequence[Num], golds: Sequence[Num], positive: Num = 1) -> float:
    """Binary F1 of the ``positive`` class (0 when it is never predicted correctly)."""
    _check(preds, golds)
    tp = sum(1 for p, g in zip(preds, golds) if p == positive and g == positive)
    fp = sum(1 for p, g in zip(preds, golds) if p == positive and g != positive)
    fn = sum(1 for p, g in zip(preds, golds) if p != positive and g == positive)
    return _f1_of(tp, fp, fn)


def macro_f1(preds: Sequence[Num], golds: Sequence[Num]) -> float:
    """Mean per-class F1 over the classes seen in ``golds`` or ``preds`` (as sklearn's average='macro')."""
    _check(preds, golds)
    classes = sorted(set(golds) | set(preds))
    return sum(f1(preds, golds, positive=c) for c in classes) / len(classes)


def matthews_corr(preds: Sequence[Num], golds: Sequence[Num]) -> float:
    """Matthews correlation, multiclass form (equals the binary phi coefficient for two classes)."""
    _check(preds, golds)
    s = len(golds)
    c = sum(1 for p, g in zip(preds, golds) if p == g)
    pk, tk = Counter(preds), Counter(golds)
    classes = set(pk) | set(tk)
    cov_pt = c * s - sum(pk[k] * tk[k] for k in classes)
    cov_pp = s * s - sum(pk[k] ** 2 for k in classes)
    cov_tt = s * s - sum(tk[k] ** 2 for k in classes)
    if cov_pp == 0 or cov_tt == 0:
        return 0.0
    return cov_pt / math.sqrt(cov_pp * cov_tt)


def pearson(preds: Sequence[Num], golds: Sequence[Num]) -> float:
    """Pearson correlation (0 when either side is constant)."""
    _check(preds, golds)
    n = len(golds)
    mp, mg = sum(preds) / n, sum(golds) / n
    cov = sum((p - mp) * (g - mg) for p, g in zip(preds, golds))
    vp = sum((p - mp) ** 2 for p in preds)
    vg = sum((g - mg) ** 2 for g in golds)
    if vp == 0 or vg == 0:
        return 0.0
    return cov / math.sqrt(vp * vg)


def average_ranks(values: Sequence[Num]) -> list[float]:
    """1-based ranks; tied values share the mean of the ranks they span (e.g. [5, 1, 5] -> [2.5, 1, 2.5])."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        mean_rank = (i + j) / 2 + 1  # positions i..j hold ranks i+1..j+1
        for k in range(i, j + 1):
            ranks[order[k]] = mean_rank
        i = j + 1
    return ranks


def spearman(preds: Sequence[Num], golds: Sequence[Num]) -> float:
    """Spearman correlation: Pearson of the average ranks."""
    _check(preds, golds)
    return pearson(average_ranks(preds), average_ranks(golds))


# ---- SQuAD v1.1 ------------------------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation, drop articles, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _em_one(pred: str, gold: str) -> float:
    return float(normalize_answer(pred) == normalize_answer(gold))


def _f1_one(pred: str, gold: str) -> float:
    p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
    common = Counter(p) & Counter(g)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def _squad(one: Callable[[str, str], float], preds: Sequence[str], golds: Sequence[Sequence[str]]) -> float:
    if len(preds) != len(golds):
        raise ValueError(f"{len(preds)} predictions for {len(golds)} questions")
    if not golds:
        raise ValueError("no questions to score")
    for answers in golds:
        if isinstance(answers, str) or len(answers) == 0:
            raise ValueError("each question needs a non-empty list of gold answers")
    return sum(max(one(p, a) for a in answers) for p, answers in zip(preds, golds)) / len(golds)


def squad_exact_match(preds: Sequence[str], golds: Sequence[Sequence[str]]) -> float:
    """Fraction of questions whose normalised prediction equals one of the normalised gold answers."""
    return _squad(_em_one, preds, golds)


def squad_f1(preds: Sequence[str], golds: Sequence[Sequence[str]]) -> float:
    """Mean over questions of the best token-overlap F1 against any gold answer."""
    return _squad(_f1_one, preds, golds)


CLASSIFICATION = {"accuracy": accuracy, "f1": f1, "macro_f1": macro_f1, "matthews_corr": matthews_corr}
REGRESSION = {"pearson": pearson, "spearman": spearman}
METRICS: dict[str, Callable[..., float]] = {
    **CLASSIFICATION,
    **REGRESSION,
    "squad_exact_match": squad_exact_match,
    "squad_f1": squad_f1,
}


def compute(names: Sequence[str], preds: Sequence[Num], golds: Sequence[Num]) -> dict[str, float]:
    """``{name: value}`` for each metric name (classification or regression metrics)."""
    out = {}
    for name in names:
        if name not in CLASSIFICATION and name not in REGRESSION:
            raise ConfigError(
                f"unknown metric '{name}'; choose from: {', '.join(sorted(CLASSIFICATION | REGRESSION))}"
            )
        out[name] = float(METRICS[name](preds, golds))
    return out
