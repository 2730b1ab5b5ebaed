"""Step time: the median after warm-up, and ratios between methods measured in one run.

The machines these benchmarks run on are shared and noisy, so methods are compared as ratios measured
together (docs/design.md, Measuring): ``interleaved_times`` runs one step of every method in turn, round
after round, so that a slow minute of the machine slows every method alike. Absolute times are only quoted
from a GPU.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping

import torch

from peftkit.core.errors import ConfigError

StepFn = Callable[[], object]


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def time_call(fn: StepFn) -> float:
    """Seconds one call of ``fn`` takes (CUDA work is waited for)."""
    _sync()
    t0 = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - t0


def median_step_time(step: StepFn, *, warmup: int = 2, iters: int = 5) -> float:
    """Median seconds of ``iters`` calls of ``step`` after ``warmup`` untimed ones."""
    if iters < 1 or warmup < 0:
        raise ConfigError(f"need iters >= 1 and warmup >= 0, got iters={iters}, warmup={warmup}")
    for _ in range(warmup):
        step()
    return statistics.median(time_call(step) for _ in range(iters))


def interleaved_times(
    steps: Mapping[str, StepFn], *, warmup: int = 1, rounds: int = 5
) -> dict[str, list[float]]:
    """Time every step function round-robin: warm-up rounds first, then ``rounds`` timed rounds.

    Args:
        steps: name -> a callable doing one full training step of that method.
        warmup: untimed rounds (allocations, lazy optimiser state, caches).
        rounds: timed rounds; in each, every method runs once, in a rotated order so none is always first.

    Returns:
        name -> the per-round seconds, in round order.
    """
    if rounds < 1 or warmup < 0:
        raise ConfigError(f"need rounds >= 1 and warmup >= 0, got rounds={rounds}, warmup={warmup}")
    names = list(steps)
    for _ in range(warmup):
        for n in names:
            steps[n]()
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            out[n].append(time_call(steps[n]))
    return out


def medians(times: Mapping[str, list[float]]) -> dict[str, float]:
    """name -> median seconds."""
    return {n: statistics.median(ts) for n, ts in times.items()}


def ratios(times: Mapping[str, float], reference: str) -> dict[str, float]:
    """name -> time / time of ``reference`` (e.g. relative to full fine-tuning)."""
    if reference not in times:
        raise ConfigError(f"reference '{reference}' is not among the timed methods: {', '.join(times)}")
    ref = times[reference]
    return {n: t / ref for n, t in times.items()}
