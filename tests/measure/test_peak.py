"""measure.peak: the live-tensor-byte peak of a call, from profiler memory events."""

from __future__ import annotations

import torch

from peftkit.measure import step_peak
from peftkit.measure.peak import PeakMemory

MB = 1000 * 1000 * 4  # bytes of a [1000, 1000] float32 tensor


def test_peak_counts_live_tensors_not_what_existed_before() -> None:
    before = torch.randn(1000, 1000)  # allocated outside the call: not counted
    kept: list[torch.Tensor] = []

    def step() -> None:
        a = torch.randn(1000, 1000)   # 1 MB-unit live
        b = a @ before                # 2 live (a, b)
        del a                         # 1
        c = b * 2                     # 2 (b, c)
        d = c + 1                     # 3 (b, c, d): the peak
        del b, c
        kept.append(d)                # 1 stays alive after the call

    res = step_peak(step)
    assert res.device == "cpu"
    assert 3 * MB <= res.peak_bytes < 3 * MB + 64 * 1024
    assert MB <= res.end_bytes < MB + 64 * 1024


def test_peak_of_a_training_step_includes_gradients_created_in_it() -> None:
    lin = torch.nn.Linear(1000, 1000)
    x = torch.randn(64, 1000)

    def step() -> None:
        lin(x).pow(2).sum().backward()

    first = step_peak(step)                 # .grad is created inside: counted, and still alive at the end
    assert first.end_bytes >= 1000 * 1000 * 4
    again = step_peak(step)                 # .grad exists already: the sum replaces it, nothing new stays
    assert again.end_bytes < 64 * 1024
    assert first.peak_bytes >= 1000 * 1000 * 4 + 64 * 1000 * 4  # the gradient and the output


def test_peak_memory_of_a_run_sees_a_big_allocation() -> None:
    pm = PeakMemory(torch.device("cpu"))
    big = torch.ones(64 * 1024 * 1024 // 4)  # 64 MiB, touched
    assert pm.peak_bytes() >= 32 * 1024 * 1024
    del big
