"""Measurement primitives used by training and the benchmarks (layer 3: imports core and methods only).

- :mod:`peftkit.measure.saved`: bytes autograd saves for backward in one forward + loss;
- :mod:`peftkit.measure.peak`: a whole step's peak of live tensor bytes (profiler memory events on CPU,
  allocator statistics on CUDA), and a run-long ``PeakMemory``;
- :mod:`peftkit.measure.timing`: step times, interleaved so that ratios between methods are fair;
- :mod:`peftkit.measure.training`: the optional measurements a training run switches on.
"""

from peftkit.measure.peak import PeakMemory, StepPeak, step_peak
from peftkit.measure.saved import SavedActivations, saved_activation_bytes, saved_activations
from peftkit.measure.timing import interleaved_times, median_step_time, medians, ratios, time_call

__all__ = ["PeakMemory", "SavedActivations", "StepPeak", "interleaved_times", "median_step_time", "medians",
           "ratios", "saved_activation_bytes", "saved_activations", "step_peak", "time_call"]
