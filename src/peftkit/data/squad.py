"""SQuAD v1.1 (Rajpurkar et al., EMNLP 2016, arXiv 1606.05250): the JSON reader and the official EM / F1.

File format: ``{"version": ..., "data": [{"title", "paragraphs": [{"context", "qas": [{"id", "question",
"answers": [{"text", "answer_start"}]}]}]}]}``. Scoring follows the v1.1 evaluation script: each prediction is
compared with every gold answer after normalisation (lowercase, no punctuation, no articles, single
spaces) and the best match counts; a question without a prediction scores 0.

peftkit does not train extractive QA heads: this module reads and scores SQuAD-format data (e.g. for a
model you train with HF's ``Trainer`` and ``peftkit.train.hf_trainer``); ``peftkit train`` is for
classification and regression.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftkit.core.errors import DataError
from peftkit.metrics import squad_exact_match, squad_f1


@dataclass(frozen=True)
class SquadExample:
    id: str
    title: str
    context: str
    question: str
    answers: tuple[str, ...]  # gold answer texts (the train set has one, dev sets three)
    answer_starts: tuple[int, ...]  # character offsets into ``context``


def _get(obj: Any, key: str, kind: type, where: str, path: Path) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise DataError(f"{path}: {where} has no '{key}' (not SQuAD v1.1 format)")
    if not isinstance(obj[key], kind):
        raise DataError(f"{path}: {where}.{key} must be {kind.__name__}, got {type(obj[key]).__name__}")
    return obj[key]


def read_squad(path: str | Path) -> list[SquadExample]:
    """Every question of a SQuAD v1.1 JSON file, in file order.

    Raises:
        DataError: a missing or non-JSON file, a missing / mistyped field (the message gives its JSON path).
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"SQuAD file {p} not found")
    try:
        root = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{p} is not valid JSON ({e.msg} at line {e.lineno})") from None
    out: list[SquadExample] = []
    for a, article in enumerate(_get(root, "data", list, "the file", p)):
        title = str(article.get("title", "")) if isinstance(article, dict) else ""
        for g, para in enumerate(_get(article, "paragraphs", list, f"data[{a}]", p)):
            where = f"data[{a}].paragraphs[{g}]"
            context = _get(para, "context", str, where, p)
            for q, qa in enumerate(_get(para, "qas", list, where, p)):
                wq = f"{where}.qas[{q}]"
                answers = _get(qa, "answers", list, wq, p)
                texts = tuple(
                    _get(ans, "text", str, f"{wq}.answers[{i}]", p) for i, ans in enumerate(answers)
                )
                starts = tuple(
                    _get(ans, "answer_start", int, f"{wq}.answers[{i}]", p) for i, ans in enumerate(answers)
                )
                out.append(
                    SquadExample(
                        str(_get(qa, "id", str, wq, p)),
                        title,
                        context,
                        _get(qa, "question", str, wq, p),
                        texts,
                        starts,
                    )
                )
    if not out:
        raise DataError(f"{p} holds no questions")
    return out


def evaluate_squad(examples: list[SquadExample], predictions: Mapping[str, str]) -> dict[str, float]:
    """``{"squad_exact_match", "squad_f1", "missing"}`` of ``predictions`` (question id -> answer text).

    Questions without gold answers (none in v1.1) are skipped; missing predictions score 0.
    """
    scored = [e for e in examples if e.answers]
    if not scored:
        raise DataError("no answerable questions to score")
    preds = [predictions.get(e.id, "") for e in scored]
    golds = [list(e.answers) for e in scored]
    return {
        "squad_exact_match": squad_exact_match(preds, golds),
        "squad_f1": squad_f1(preds, golds),
        "missing": float(sum(1 for e in scored if e.id not in predictions)),
    }
