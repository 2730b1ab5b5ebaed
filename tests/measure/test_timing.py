"""measure.timing: interleaved rounds and ratios."""

from __future__ import annotations

import time

import pytest

import peftkit as pk
from peftkit.measure import interleaved_times, median_step_time, medians, ratios


def test_interleaved_times_rotate_and_ratios() -> None:
    order: list[str] = []
    steps = {n: (lambda n=n, s=s: (order.append(n), time.sleep(s))) for n, s in (("a", 0.002), ("b", 0.02))}
    times = interleaved_times(steps, warmup=1, rounds=3)
    assert order[:2] == ["a", "b"] and order[2:4] == ["a", "b"] and order[4:6] == ["b", "a"]
    assert all(len(v) == 3 for v in times.values())
    r = ratios(medians(times), "a")
    assert r["a"] == 1.0 and r["b"] > 3.0
    assert median_step_time(lambda: time.sleep(0.001), warmup=0, iters=3) >= 0.001


def test_bad_timing_arguments() -> None:
    with pytest.raises(pk.ConfigError):
        interleaved_times({"a": lambda: None}, rounds=0)
    with pytest.raises(pk.ConfigError, match="reference"):
        ratios({"a": 1.0}, "b")
