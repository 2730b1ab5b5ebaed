"""Depth flatness vs gradient exactness of MEFT's anchors (``peftkit bench memory part`` ``depth_tradeoff``).

MEFT (Liao, Tan, Monz; NeurIPS 2023; arXiv 2306.00477) keeps only the two output streams when every layer is
reversible, so its memory is flat in depth; the inverse x1 = (y1 - F(x2)) / lam, x2 = (y2 - G(y1)) / beta
amplifies rounding ~1/lam per layer, so peftkit keeps exact stream pairs ("anchors") at the inputs of the
fewest layers that hold every reconstructed layer input under ``tolerance`` (``anchor_every="auto"``). Each
anchor costs two streams [b, t, d] (fp32), and a deeper stack needs more of them: the memory grows with depth.

For each (variant, tolerance, depth) one row on the same random-weight BERT (``bench.random_bert``, dropout
on) and the same synthetic batch: the anchors the calibration chose, the live-byte peak of one training step
after a warm-up step (:func:`peftkit.measure.step_peak`, as ``bench.memory_live``), and the relative L2 error
of all trainable gradients of the reversible backward against plain autograd on the same model, weights,
batch and dropout masks (same seed). ``tolerance`` 0 means no anchors (the paper's behaviour).

Shape legend: b batch, t tokens, d width.
"""

from __future__ import annotations

import gc
import json
import platform
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn


def _grads(model: nn.Module, batch: dict[str, torch.Tensor], reversible: bool) -> dict[str, torch.Tensor]:
    from peftkit.bench.memory import default_loss_for, model_inputs
    from peftkit.methods.meft.apply import find_stack

    find_stack(model).use_reversible_backward = reversible
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # the same dropout masks in both runs
    default_loss_for(model)(model(**model_inputs(batch)), batch).backward()
    out = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    find_stack(model).use_reversible_backward = True
    return out


def rel_l2(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Relative L2 error of all of ``a``'s tensors against ``b``'s, together (NaN or inf when they are)."""
    num = sum(float((a[n].double() - b[n].double()).norm() ** 2) for n in b)
    den = sum(float(b[n].double().norm() ** 2) for n in b)
    return (num / den) ** 0.5 if den > 0 else float("nan")


def tradeoff_row(arch: str, depth: int, length: int, batch_size: int, variant: str,
                 tolerance: float, stream_dtype: str = "auto") -> dict[str, Any]:
    """One (variant, tolerance, depth) row; see the module docstring. ``stream_dtype`` is MEFT's
    (``"auto"``: fp32 streams; ``"float64"``: twice the bytes per stream and per anchor, a smaller rounding
    to amplify, so fewer anchors)."""
    import peftkit as pk
    from peftkit.bench.memory import StepSpec, synthetic_batch
    from peftkit.bench.memory_live import adamw_step
    from peftkit.bench.random_bert import VOCAB, build_bench_bert
    from peftkit.measure import step_peak
    from peftkit.methods.meft.apply import find_stack

    torch.manual_seed(0)
    meft = pk.MEFT(variant=variant, anchor_every="auto" if tolerance > 0 else 0,
                   tolerance=tolerance if tolerance > 0 else 1e-3, stream_dtype=stream_dtype)
    model = pk.apply(build_bench_bert(num_labels=5, arch=arch, layers=depth), meft).train()
    batch = synthetic_batch(StepSpec(backbone="bench_bert", methods=[], batch_size=batch_size,
                                     seq_len=length), VOCAB)
    step = adamw_step(model, batch)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # no anchors: the check warns, by design
        step()  # warm-up: optimiser state, the anchor calibration
        peak = step_peak(step, "cpu")
        anchors = sorted(find_stack(model).anchors or [])
        g_rev = _grads(model, batch, True)
    g_ref = _grads(model, batch, False)
    hidden = model.config.hidden_size
    row = {"arch": arch, "depth": depth, "length": length, "batch": batch_size, "variant": variant,
           "tolerance": tolerance, "stream_dtype": stream_dtype, "anchors": anchors,
           "peak_bytes": peak.peak_bytes,
           "anchor_bytes": 2 * batch_size * length * hidden * (8 if stream_dtype == "float64" else 4),
           "grad_rel_err": rel_l2(g_rev, g_ref),
           "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    return row


def tradeoff_rows(rows_dir: str, arch: str, depths: list[int], length: int, batch_size: int,
                  variants: list[str], tolerances: list[float],
                  stream_dtypes: tuple[str, ...] = ("auto",)) -> list[dict[str, Any]]:
    """Every (stream dtype, variant, tolerance, depth) row, stored rows in ``rows_dir`` reused; with
    ``growth`` (the peak at the deepest depth over the shallowest, per dtype, variant and tolerance)."""
    from peftkit.core.io import atomic_write_json

    out = []
    for sd, v, tol in ((sd, v, tol) for sd in stream_dtypes for v in variants for tol in tolerances):
        rows = []
        for d in depths:
            tag = f"{tol:g}" if tol > 0 else "none"
            dt = "" if sd == "auto" else f"_{sd}"
            path = Path(rows_dir) / f"{arch}_L{d}_T{length}_B{batch_size}_{v}_tol{tag}{dt}_cpu.json"
            if path.exists():
                rows.append(json.loads(path.read_text()))
                continue
            print(f"depth trade-off: {arch} L{d} T{length} B{batch_size} {v} tolerance {tag} streams {sd}",
                  flush=True)
            row = tradeoff_row(arch, d, length, batch_size, v, tol, sd)
            gc.collect()  # the measured model goes before the next is built
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(path, row)
            rows.append(row)
        by_depth = {r["depth"]: r["peak_bytes"] for r in rows}
        for r in rows:
            r["growth"] = by_depth[max(by_depth)] / by_depth[min(by_depth)] if len(by_depth) > 1 else None
        out += rows
    return out
