"""Step time and memory of one Point-PEFT bench row, measured in a fresh process.

``python -m peftkit.bench.point_peft_step RUN.yaml OUT.json [batch_size] [steps]`` builds the row's model
(backbone + checkpoint + method stack) and data exactly as its training run does, takes one fixed training
batch (the first ``batch_size`` training clouds through the training collate, seeded), runs one warm-up
step (it allocates the optimiser state), then reads the baseline resident set, resets the kernel's
high-water mark (``/proc/self/clear_refs``) and runs ``steps`` timed AdamW steps. It reports the median step
time, the peak resident memory of those steps over the baseline, and the bytes saved for backward
(``peftkit.bench.memory.saved_activation_bytes``). One process per row, so no row's memory or allocator
history leaks into another's.

Shapes: b batch, n points.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Any

import torch

from peftkit.core.io import atomic_write_text


def measure(run_yaml: str, batch_size: int = 32, steps: int = 3) -> dict[str, Any]:
    """Measure one row (see the module docstring)."""
    from peftkit.bench.memory import (
        default_loss_for,
        hwm_bytes,
        model_inputs,
        release,
        reset_hwm,
        rss_bytes,
        saved_activation_bytes,
    )
    from peftkit.train.build import build_data, build_model, seed_everything
    from peftkit.train.config import load_config
    from peftkit.train.optim import build_optimizer

    cfg = load_config(run_yaml)
    torch.set_num_threads(cfg.train.threads or 1)
    seed_everything(cfg.seed)
    data = build_data(cfg)
    model = build_model(cfg, data).train()
    opt = build_optimizer(model, cfg.train.lr, cfg.train.weight_decay)
    batch = data.collate([data.train[i] for i in range(min(batch_size, len(data.train)))])  # [b, n, 3]
    loss_fn = default_loss_for(model)

    def step() -> float:
        t0 = time.perf_counter()
        loss_fn(model(**model_inputs(batch)), batch).backward()
        opt.step()
        opt.zero_grad(set_to_none=False)  # gradient buffers stay: they are part of what a step holds
        return time.perf_counter() - t0

    step()
    release()
    baseline = rss_bytes()
    hwm_ok = reset_hwm()
    times = [step() for _ in range(steps)]
    peak = (hwm_bytes() or 0) if hwm_ok else rss_bytes()  # bytes (the helper converts from kiB)
    return {
        "step_time_s": statistics.median(times),
        "step_times_s": times,
        "peak_step_bytes": max(0, peak - baseline),
        "hwm_reset": hwm_ok,
        "saved_activation_bytes": saved_activation_bytes(model, batch, loss_fn),
        "batch_size": int(batch["points"].shape[0]),
        "num_points": int(batch["points"].shape[1]),
    }


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: python -m peftkit.bench.point_peft_step RUN.yaml OUT.json [batch_size] [steps]",
              file=sys.stderr)
        return 2
    res = measure(argv[0], *(int(a) for a in argv[2:4]))
    atomic_write_text(argv[1], json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
