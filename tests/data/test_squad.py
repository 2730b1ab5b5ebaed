"""SQuAD v1.1 reader and scoring on a small file in the real JSON layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peftkit.core.errors import DataError
from peftkit.data.squad import evaluate_squad, read_squad

CONTEXT = "The tower was finished in 1889 in Paris by the Eiffel company."


def _squad(path: Path) -> Path:
    doc = {
        "version": "1.1",
        "data": [
            {
                "title": "Tower",
                "paragraphs": [
                    {
                        "context": CONTEXT,
                        "qas": [
                            {
                                "id": "q1",
                                "question": "When was it finished?",
                                "answers": [{"text": "1889", "answer_start": 26}],
                            },
                            {
                                "id": "q2",
                                "question": "Where?",
                                "answers": [
                                    {"text": "Paris", "answer_start": 34},
                                    {"text": "in Paris", "answer_start": 31},
                                ],
                            },
                            {
                                "id": "q3",
                                "question": "By whom?",
                                "answers": [{"text": "the Eiffel company", "answer_start": 43}],
                            },
                        ],
                    }
                ],
            }
        ],
    }
    path.write_text(json.dumps(doc))
    return path


def test_read_squad(tmp_path: Path) -> None:
    ex = read_squad(_squad(tmp_path / "dev-v1.1.json"))
    assert [e.id for e in ex] == ["q1", "q2", "q3"] and ex[1].answers == ("Paris", "in Paris")
    for e in ex:  # the offsets point at the answers
        assert all(e.context[s : s + len(a)] == a for a, s in zip(e.answers, e.answer_starts))
    assert ex[0].title == "Tower" and ex[0].context == CONTEXT


def test_evaluate_squad_by_hand(tmp_path: Path) -> None:
    ex = read_squad(_squad(tmp_path / "d.json"))
    res = evaluate_squad(ex, {"q1": "in 1889", "q2": "Paris."})  # q3 missing -> 0
    # q1: EM 0 ("in 1889" vs "1889"), F1 = 2 * (1/2 * 1) / (1/2 + 1) = 2/3; q2: EM 1, F1 1
    assert res["squad_exact_match"] == pytest.approx(1 / 3)
    assert res["squad_f1"] == pytest.approx((2 / 3 + 1.0 + 0.0) / 3)
    assert res["missing"] == 1.0


def test_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        read_squad(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"data": [')
    with pytest.raises(DataError, match="not valid JSON"):
        read_squad(bad)
    bad.write_text(
        json.dumps({"data": [{"paragraphs": [{"context": "c", "qas": [{"id": "x", "question": "q"}]}]}]})
    )
    with pytest.raises(DataError, match=r"data\[0\].paragraphs\[0\].qas\[0\] has no 'answers'"):
        read_squad(bad)
    bad.write_text(json.dumps({"data": [{"paragraphs": [{"context": 5, "qas": []}]}]}))
    with pytest.raises(DataError, match=r"context must be str, got int"):
        read_squad(bad)
    bad.write_text(json.dumps({"data": []}))
    with pytest.raises(DataError, match="holds no questions"):
        read_squad(bad)
