"""Whole-step peak of live tensor bytes, per method, for ``peftkit bench memory`` (part ``live``).

One training step (forward, loss, backward, AdamW step, ``zero_grad(set_to_none=True)``) is measured after one
warm-up step (which creates the optimiser state and lets MEFT calibrate its anchors) with
:func:`peftkit.measure.peak.step_peak`: profiler memory events on CPU, ``torch.cuda.max_memory_allocated``
on a GPU. The number is the peak of tensors allocated inside the step and not yet freed: activations, the
gradients created in the step, temporaries; not the parameters or the optimiser state that existed before.
Random-weight BERT in a real shape (``bench.random_bert``), dropout on, the same synthetic batch for every
method. Each row is kept as a JSON in ``rows_dir``, and rows already there are not measured again.

Shape legend: b batch, t tokens.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

LIVE_METHODS = ("full FT", "LoRA r=8", "Pfeiffer adapter", "MEFT1", "MEFT2", "MEFT3",
                "MEFT1, backbone attention", "MEFT1, no anchors")
LIVE_DEPTH_ARM = ("MEFT1", "MEFT2", "MEFT3", "MEFT1, no anchors")  # also at every depth: flat in depth?


def live_points(arch: str, depths: list[int], target_depth: int) -> list[tuple[str, int, str]]:
    """(arch, depth, method): every method at the target depth, the MEFT variants at every depth."""
    pts = [(arch, target_depth, m) for m in LIVE_METHODS]
    pts += [(arch, d, m) for m in LIVE_DEPTH_ARM for d in depths if d != target_depth]
    return pts


def row_key(arch: str, depth: int, length: int, batch: int, method: str, device: str) -> str:
    slug = "".join(c if c.isalnum() else "_" for c in method.lower())
    return f"{arch}_L{depth}_T{length}_B{batch}_{slug}_{device}"


def adamw_step(model: torch.nn.Module, batch: dict[str, Any]) -> Callable[[], None]:
    """One training step of ``model`` on ``batch``: loss, backward, AdamW (lr 1e-4) on what trains."""
    from peftkit.bench.memory import default_loss_for, model_inputs

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    loss_fn = default_loss_for(model)

    def step() -> None:
        loss_fn(model(**model_inputs(batch)), batch).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def measure_live(cfg: Any, arch: str, depth: int, length: int, method: str, device: str) -> dict[str, Any]:
    """One row: the live-byte peak of one step of ``method`` (see the module docstring)."""
    from peftkit.bench.memory_sweep import build
    from peftkit.measure import step_peak

    model, batch = build(cfg, method, arch, depth, length)
    step = adamw_step(model, batch)

    step()  # warm-up: optimiser state, MEFT's anchor calibration
    res = step_peak(step, device)
    anchors = [sorted(m.anchors) for m in model.modules() if getattr(m, "anchors", None) is not None]
    row = {"arch": arch, "depth": depth, "length": length, "batch": cfg.batch_size, "method": method,
           "device": device, "peak_bytes": res.peak_bytes, "end_bytes": res.end_bytes,
           "anchors": anchors[0] if anchors else None,
           "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
           "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    return row


def live_rows(cfg: Any, device: str) -> list[dict[str, Any]]:
    """Every live point (stored rows reused); ``cfg`` is the sweep's ``SweepConfig``."""
    from peftkit.core.io import atomic_write_json

    cfg = dataclasses.replace(cfg, batch_size=cfg.live_batch)
    arch, depth, length = cfg.live_target.split(",")
    depths = sorted(int(d) for d in cfg.depths.split(","))
    out = []
    for a, d, m in live_points(arch, depths, int(depth)):
        path = Path(cfg.rows_dir) / f"{row_key(a, d, int(length), cfg.batch_size, m, device)}.json"
        if path.exists():
            out.append(json.loads(path.read_text()))
            continue
        print(f"live peak: {a} L{d} T{length} B{cfg.batch_size} {m}", flush=True)
        row = measure_live(cfg, a, d, int(length), m, device)
        gc.collect()  # the measured model goes before the next is built
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, row)
        out.append(row)
    return out


def live_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with ``peak_vs_full`` (full FT at the same depth) and, for MEFT, ``depth_growth``
    (peak at the deepest / at the shallowest depth measured)."""
    full = {r["depth"]: r["peak_bytes"] for r in rows if r["method"] == "full FT"}
    by_method: dict[str, dict[int, int]] = {}
    for r in rows:
        by_method.setdefault(r["method"], {})[r["depth"]] = r["peak_bytes"]
    out = []
    for r in sorted(rows, key=lambda r: (LIVE_METHODS.index(r["method"]), r["depth"])):
        r = dict(r)
        r["peak_vs_full"] = r["peak_bytes"] / full[r["depth"]] if r["depth"] in full else None
        ds = by_method[r["method"]]
        r["depth_growth"] = ds[max(ds)] / ds[min(ds)] if len(ds) > 1 else None
        out.append(r)
    return out


DECODER_METHODS: dict[str, list[dict[str, Any]]] = {
    "LoRA r=8": [{"name": "lora", "rank": 8, "alpha": 16}],
    "MEFT1": [{"name": "meft", "variant": "meft1"}],
}


def _decoder_row(backbone: str, length: int, label: str, steps: int) -> dict[str, Any]:
    import peftkit as pk
    from peftkit.bench.memory import default_loss_for, model_inputs
    from peftkit.core.configs import method_configs
    from peftkit.measure import step_peak

    torch.manual_seed(0)
    model = pk.apply(pk.load_backbone(backbone, num_labels=5), method_configs(DECODER_METHODS[label])).train()
    ids = torch.randint(5, 40000, (1, length), generator=torch.Generator().manual_seed(0))  # [1, t]
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([3])}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    loss_fn, losses = default_loss_for(model), []

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = loss_fn(model(**model_inputs(batch)), batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss))

    step()
    res = step_peak(step)
    for _ in range(max(0, steps - 2)):
        step()
    stacks = [m for m in model.modules() if getattr(m, "anchors", None) is not None]
    worst = max(stacks[0].last_reconstruction_error or [0.0]) if stacks else None
    return {"backbone": backbone, "length": length, "method": label, "batch": 1, "mode": "bf16 autocast",
            "peak_bytes": res.peak_bytes, "losses": losses,
            "anchors": sorted(stacks[0].anchors) if stacks else None, "reconstruction_worst": worst,
            "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}


def decoder_rows(rows_dir: str, lengths: tuple[int, ...] = (512, 1024), steps: int = 3,
                 backbone: str = "smollm2") -> list[dict[str, Any]]:
    """SmolLM2-135M classifier, batch 1, under bf16 autocast (fp32 weights), default settings: the live-byte
    peak of one step after a warm-up step, and the loss of ``steps`` steps on one fixed batch (it must
    fall). Rows already in ``rows_dir`` are reused."""
    from peftkit.core.io import atomic_write_json

    out = []
    for length in lengths:
        for label in DECODER_METHODS:
            path = Path(rows_dir) / f"{row_key(backbone, 30, length, 1, label, 'cpu_bf16autocast')}.json"
            if path.exists():
                out.append(json.loads(path.read_text()))
                continue
            print(f"decoder: {backbone} T{length} {label}", flush=True)
            row = _decoder_row(backbone, length, label, steps)
            gc.collect()
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(path, row)
            out.append(row)
    return out
