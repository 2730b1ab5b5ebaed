"""Activation memory benchmarks: the fresh-process whole-step peak, on top of :mod:`peftkit.measure`.

MEFT (Liao et al., arXiv 2306.00477) claims "up to 84% less activation memory than full fine-tuning".
``saved_activation_bytes`` / ``saved_activations`` (re-exported from :mod:`peftkit.measure.saved`) count what
autograd keeps between forward and backward; ``peak_step_memory`` runs K optimiser steps of a JSON-able
``StepSpec`` in a fresh process (``bench/_subproc.py``): K-1 warm-up steps (the optimiser state exists), then
the last step's peak. CPU: live tensor bytes allocated inside that step and not yet freed, from the
profiler's memory events (:func:`peftkit.measure.peak.step_peak`; not RSS, which keeps the allocator's
history); CUDA: ``max_memory_allocated`` over the allocation at the start.

Shape legend: b batch, t tokens.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from typing import Any

import torch

from peftkit.measure.saved import (
    OUTSIDE,
    LossFn,
    SavedActivations,
    default_loss_for,
    model_inputs,
    saved_activation_bytes,
    saved_activations,
)

__all__ = ["OUTSIDE", "LossFn", "SavedActivations", "StepSpec", "default_loss_for", "model_inputs",
           "peak_step_memory", "release", "reset_hwm", "rss_bytes", "saved_activation_bytes",
           "saved_activations", "synthetic_batch"]

# ---- whole-step peak in a fresh process ----------------------------------------------------------------


@dataclass
class StepSpec:
    """A picklable (JSON) description of a training step to measure in a fresh process.

    The batch is synthetic and fixed: ``batch_size`` x ``seq_len`` random token ids (seeded), full attention
    mask, random labels; identical for every method so that only the method changes.
    """

    backbone: str
    methods: list[dict[str, Any]]
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    task: str = "classification"
    num_labels: int = 5
    batch_size: int = 16
    seq_len: int = 128
    steps: int = 3                 # K optimiser steps after the baseline; the first allocates optimiser state
    lr: float = 1e-4
    seed: int = 0
    device: str = "cpu"
    threads: int = 1
    saved_bytes: bool = True       # also run saved_activation_bytes (after the peak was read)
    step_times: bool = False       # also time the K steps (seconds each)


def synthetic_batch(spec: StepSpec, vocab_size: int) -> dict[str, torch.Tensor]:
    """The fixed batch of a StepSpec: ids (b, t) in [5, vocab), mask of ones, labels (b,) or ids for an LM.

    For ``task="seq2seq"`` (T5) the labels are random target ids (b, t) and the batch carries the decoder's
    inputs, ``decoder_input_ids`` = the labels shifted right behind the start token 0, so that
    ``model(**model_inputs(batch))`` runs encoder and decoder.
    """
    g = torch.Generator().manual_seed(spec.seed)
    ids = torch.randint(5, vocab_size, (spec.batch_size, spec.seq_len), generator=g)  # (b, t)
    if spec.task == "causal_lm":
        labels = ids.clone()
    elif spec.task == "seq2seq":
        labels = torch.randint(5, vocab_size, (spec.batch_size, spec.seq_len), generator=g)  # (b, t)
        start = torch.zeros(spec.batch_size, 1, dtype=labels.dtype)  # (b, 1)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
                "decoder_input_ids": torch.cat([start, labels[:, :-1]], dim=1)}  # (b, t)
    else:
        labels = torch.randint(spec.num_labels, (spec.batch_size,), generator=g)  # (b,)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def _read_kib(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def rss_bytes() -> int:
    """Current resident set size of this process (``VmRSS``; ``ru_maxrss`` where /proc is missing)."""
    v = _read_kib("VmRSS")
    if v is None:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return v


def hwm_bytes() -> int | None:
    """The kernel's resident high-water mark of this process (``VmHWM``); None where /proc is missing."""
    return _read_kib("VmHWM")


def reset_hwm() -> bool:
    """Reset the kernel's resident high-water mark (``VmHWM``); False where that is not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _read_kib("VmHWM") is not None
    except OSError:
        return False


def peak_step_memory(spec: StepSpec, *, timeout_s: float = 900.0) -> dict[str, Any]:
    """Measure ``spec`` in a fresh process (``python -m peftkit.bench._subproc``) and return its result.

    Returns:
        A dict with ``peak_bytes`` (peak over the baseline), ``baseline_bytes``, ``retained_bytes``,
        ``hwm_reset`` (False: the peak was sampled), ``device``, ``trainable_params`` and, when asked,
        ``saved_activation_bytes`` and ``step_times_s``.

    Raises:
        ConfigError: the spec is wrong (unknown method or key), as the child reported it.
        RuntimeError: the child failed otherwise; the message carries the end of its stderr.
    """
    from peftkit.bench._subproc import measure_fresh

    return measure_fresh([spec], workers=1, timeout_s=timeout_s)[0]


def release() -> None:
    """Drop collectable garbage (and cached CUDA blocks) before reading a baseline."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
