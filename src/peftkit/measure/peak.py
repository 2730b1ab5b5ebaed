"""Whole-step peak memory as live tensor bytes (not process RSS).

CPU: the PyTorch profiler with ``profile_memory=True`` records every allocation and free of a tensor's memory
as a ``[memory]`` event with a signed byte count. Summing them in time order gives the bytes of tensors
allocated inside the profiled call that are alive at each moment,

    live(t) = sum over events e with start(e) <= t of nbytes(e),        peak = max over t of live(t),

i.e. the peak *over what existed before the call* (parameters, optimiser state from an earlier step and the
batch are not counted; gradients and optimiser state created inside the call are). This is exact and free of
allocator effects (glibc keeps freed heap resident, so RSS says little about a step). CUDA:
``torch.cuda.max_memory_allocated`` over ``torch.cuda.memory_allocated`` at the call's start, the same
quantity measured by the caching allocator.

``PeakMemory`` is the cheap, coarse variant a training run can keep on for all its steps (CUDA: the
allocator's peak; CPU: the process's resident high-water mark over the RSS when it was created).
"""

from __future__ import annotations

import os
import resource
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class StepPeak:
    """Live tensor bytes of one call.

    Attributes:
        peak_bytes: the largest sum of bytes allocated inside the call and not yet freed.
        end_bytes: what is still allocated when the call returns (e.g. gradients kept, optimiser state).
        device: ``"cpu"`` (profiler memory events) or ``"cuda"`` (allocator statistics).
    """

    peak_bytes: int
    end_bytes: int
    device: str


def _cpu_events_peak(fn: Callable[[], Any]) -> StepPeak:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=False) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events()  # type: ignore[union-attr]
              if e.name() == "[memory]" and str(e.device_type()).endswith("CPU")]
    live = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        live += int(e.nbytes())
        peak = max(peak, live)
    return StepPeak(peak, live, "cpu")


def step_peak(fn: Callable[[], Any], device: torch.device | str = "cpu") -> StepPeak:
    """Run ``fn()`` once and return its peak of live tensor bytes (see the module docstring).

    Args:
        fn: one training step (forward, loss, backward, optimiser step, ``zero_grad``), or any call.
        device: where the step's tensors live (``"cuda"`` / ``"cuda:N"`` reads the allocator's statistics).
    """
    dev = torch.device(device)
    if dev.type != "cuda":
        return _cpu_events_peak(fn)
    torch.cuda.synchronize(dev)
    start = torch.cuda.memory_allocated(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    fn()
    torch.cuda.synchronize(dev)
    return StepPeak(torch.cuda.max_memory_allocated(dev) - start, torch.cuda.memory_allocated(dev) - start,
                    "cuda")


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


class PeakMemory:
    """Peak memory of a run's training steps: CUDA ``max_memory_allocated``; CPU peak RSS (``ru_maxrss``)
    over the RSS when this object was created."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        self.baseline = _rss_bytes()

    def peak_bytes(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        return max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self.baseline)
