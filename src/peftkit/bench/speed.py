"""Step-time helpers for the benchmarks: the primitives live in :mod:`peftkit.measure.timing`."""

from __future__ import annotations

from peftkit.measure.timing import StepFn, interleaved_times, median_step_time, medians, ratios, time_call

__all__ = ["StepFn", "interleaved_times", "median_step_time", "medians", "ratios", "time_call"]
