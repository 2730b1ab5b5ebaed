"""measure.timing: the round-robin order of interleaved timing, exact medians and ratios, real time bounds."""

from __future__ import annotations

import time

import pytest

import peftkit as pk
from peftkit.measure import timing as speed


def test_interleaved_rotates_order_and_counts_calls():
    calls: list[str] = []
    naps = {"a": 0.0, "b": 0.004, "c": 0.0}   # b sleeps 4 ms per call: its times must show it

    def step(n: str) -> None:
        calls.append(n)
        time.sleep(naps[n])

    times = speed.interleaved_times({n: (lambda n=n: step(n)) for n in "abc"}, warmup=1, rounds=3)
    assert {n: len(t) for n, t in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert calls == list("abc") + list("abc") + list("bca") + list("cab")   # warm-up, then rotated rounds
    assert all(0.004 <= t < 1.0 for t in times["b"])
    assert all(0.0 < t < 0.5 for n in "ac" for t in times[n])


def test_medians_ratios_and_bad_input():
    med = speed.medians({"full": [3.0, 1.0, 2.0], "lora": [1.0, 0.5, 9.0, 0.7]})
    assert med == {"full": 2.0, "lora": 0.85}
    assert speed.ratios(med, "full") == {"full": 1.0, "lora": 0.425}
    with pytest.raises(pk.ConfigError, match="reference 'x'"):
        speed.ratios(med, "x")
    with pytest.raises(pk.ConfigError):
        speed.interleaved_times({"a": lambda: None}, rounds=0)
    n = []
    t = speed.median_step_time(lambda: (n.append(1), time.sleep(0.003)), warmup=2, iters=3)
    assert 0.003 <= t < 1.0 and len(n) == 5
