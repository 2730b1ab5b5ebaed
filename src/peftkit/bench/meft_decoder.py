"""A short SmolLM2 + MEFT1 training run under bf16 autocast (``peftkit bench meft_accuracy part=decoder``).

MEFT (Liao, Tan, Monz; NeurIPS 2023; arXiv 2306.00477) on a 30-layer pre-LN decoder: F = the decoder layer +
a parallel FFN adapter, G = an adapter, h1_n = lam h1_{n-1} + F(h2_{n-1}), h2_n = beta h2_{n-1} + G(h1_n) with
lam = 0.1, beta = 1; the reversible backward reconstructs every layer input as x1 = (y1 - F(x2)) / lam, so
its rounding grows ~10x per layer and the default anchors (``anchor_every="auto"``, tolerance 1e-3) hold it.

This run checks the issue's "trains with the default settings" on real data, not one fixed batch: BBC News
articles, the model in fp32 under ``torch.autocast("cpu", bfloat16)``, AdamW with a linear schedule after a
6% warm-up and gradient clipping at 1, the default ``pk.MEFT(variant="meft1")``. Recorded per optimiser step:
the training loss, the worst sampled relative reconstruction error of any layer input inside that step's
reversible backward (0 at anchors) and the anchors in use; before and after training: loss and accuracy on a
fixed slice of the validation split (the test split is not read). Any reconstruction warning is kept.

The run-time check sees 4,096 elements per stream; SmolLM2's layer inputs keep ~75% of their squared norm
in 0.1% of the elements (massive activations), which such a sample mostly misses. So each step is also
audited in full: after the backward (same weights, batch and anchors), :func:`reconstruction_errors`
inverts the stack once more and records the worst full relative error of any layer input; the audit's time
is kept apart from the training time.

Shape legend: b batch, t tokens.
"""

from __future__ import annotations

import json
import math
import platform
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn


def _val(model: nn.Module, batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Mean cross-entropy and accuracy over ``batches`` (eval mode, bf16 autocast)."""
    import torch.nn.functional as F

    model.eval()
    loss, right, n = 0.0, 0, 0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for b in batches:
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.float()
            loss += float(F.cross_entropy(logits, b["labels"], reduction="sum"))
            right += int((logits.argmax(-1) == b["labels"]).sum())
            n += len(b["labels"])
    model.train()
    return {"loss": loss / n, "accuracy": right / n}


def _meft1(k: int = 1, adaptive: bool = False, at: float = 1.0, sticky: bool = False,
           nudges: int = 0) -> list[dict[str, Any]]:
    """MEFT1 with every calibration setting spelled out (a label keeps its meaning when defaults change)."""
    return [{"name": "meft", "variant": "meft1", "calibration_batches": k, "adaptive_margin": adaptive,
             "recalibrate_at": at, "sticky_anchors": sticky, "calibration_nudges": nudges}]


# label -> method stack: the defaults, a wider calibration margin, the calibration remedies, and LoRA as the
# same loop's baseline ("meft1" is whatever the defaults were when its row was written; the remedy labels
# spell their settings out)
DECODER_STACKS: dict[str, list[dict[str, Any]]] = {
    "meft1": [{"name": "meft", "variant": "meft1"}],
    "meft1_margin16": [{"name": "meft", "variant": "meft1", "calibration_margin": 16.0}],
    "meft1_k1": _meft1(),
    "meft1_k4": _meft1(k=4),
    "meft1_k8": _meft1(k=8),
    "meft1_adaptive": _meft1(adaptive=True),
    "meft1_drift": _meft1(at=0.5),
    "meft1_k4_adaptive": _meft1(k=4, adaptive=True),
    "meft1_k4_sticky": _meft1(k=4, sticky=True),
    "meft1_k4_sticky_adaptive": _meft1(k=4, sticky=True, adaptive=True),
    "meft1_n4u": _meft1(nudges=4),  # = the bf16 defaults (row meft1_n4: an earlier +-2 eps nudge)
    "lora": [{"name": "lora", "rank": 8, "alpha": 16}],
}


def decoder_train_row(backbone: str = "smollm2", examples: int = 64, max_length: int = 64,
                      batch_size: int = 8, epochs: int = 1, lr: float = 1e-3, val_examples: int = 64,
                      seed: int = 0, method: str = "meft1") -> dict[str, Any]:
    """Train ``DECODER_STACKS[method]`` (MEFT1 with the defaults unless told) on ``examples`` stratified BBC
    articles; see the module docstring.

    Returns:
        A JSON-able row: losses, worst reconstruction error (sampled check and full audit), anchor count and
        whether a calibration ran, per step; validation loss and accuracy before / after, warnings, wall
        time (training and audit apart) and the scale.
    """
    from peftkit.methods.meft.apply import find_stack
    from peftkit.methods.meft.checks import reconstruction_errors
    from peftkit.train.build import build_data, build_model, seed_everything
    from peftkit.train.config import config_from_dict_tree
    from peftkit.train.optim import build_optimizer, lr_factor

    rc = config_from_dict_tree({
        "out_dir": "runs/unused", "seed": seed, "backbone": {"name": backbone, "task": "classification"},
        "data": {"name": "bbc_news", "max_length": max_length, "max_train_examples": examples},
        "methods": DECODER_STACKS[method]})
    seed_everything(seed)
    data = build_data(rc)
    model = build_model(rc, data).train()
    stack = find_stack(model) if method.startswith("meft") else None
    val_items = [data.val[i] for i in range(min(val_examples, len(data.val)))]
    val_batches = [data.collate(val_items[i: i + 16]) for i in range(0, len(val_items), 16)]
    before = _val(model, val_batches)
    opt = build_optimizer(model, lr, 0.01)
    g = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(data.train) / batch_size)
    total = epochs * steps_per_epoch
    warm = math.ceil(0.06 * total)
    trainable = [p for p in model.parameters() if p.requires_grad]
    losses, worst, anchors, caught, full, calibrated = [], [], [], [], [], []
    seen: dict[str, Any] = {}
    if stack is not None:
        run = stack.run

        def spy(hidden: torch.Tensor, *a: Any, **kw: Any) -> Any:  # the stack input and context of this step
            seen["h"] = hidden.detach().to(stack.stream_dtype_for(hidden.dtype))
            seen["ctx"] = stack.context(a, kw, recompute=True)
            before = (stack.anchors, stack.calibrations)
            out = run(hidden, *a, **kw)
            seen["anchors"] = stack.anchors or frozenset()
            seen["calibrated"] = before[0] is None or stack.calibrations != before[1]
            return out

        object.__setattr__(stack, "run", spy)
    audit_s = 0.0
    t0 = time.perf_counter()
    step = 0
    for _ in range(epochs):
        order = torch.randperm(len(data.train), generator=g).tolist()
        for i in range(0, len(order), batch_size):
            b = data.collate([data.train[j] for j in order[i: i + batch_size]])
            for group in opt.param_groups:
                group["lr"] = lr * lr_factor(step, total, warm, "linear")
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
                    loss = nn.functional.cross_entropy(logits.float(), b["labels"])
                loss.backward()
            caught += [f"step {step}: {x.message}" for x in w if "reconstruct" in str(x.message).lower()]
            if stack is not None:
                ta = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    rev = list(stack.couplings[: stack.num_rev])
                    errs = reconstruction_errors(rev, seen["h"], seen["ctx"], seen["anchors"])
                full.append(max(errs or [0.0]))
                calibrated.append(bool(seen["calibrated"]))
                audit_s += time.perf_counter() - ta
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            if stack is not None:
                worst.append(max(stack.last_reconstruction_error or [0.0]))
                anchors.append(len(stack.anchors) if stack.anchors is not None else None)
            step += 1
    seconds = time.perf_counter() - t0 - audit_s
    if stack is not None:
        object.__delattr__(stack, "run")
    after = _val(model, val_batches)
    tol = stack.tolerance if stack is not None else None
    return {"backbone": backbone, "method": method, "stack": DECODER_STACKS[method],
            "mode": "bf16 autocast, fp32 weights",
            "scale": {"examples": examples, "max_length": max_length, "batch_size": batch_size,
                      "epochs": epochs, "lr": lr, "val_examples": len(val_items), "seed": seed,
                      "threads": torch.get_num_threads()},
            "steps": step, "losses": losses, "worst_reconstruction": worst, "anchors": anchors,
            "final_anchors": sorted(stack.anchors or []) if stack is not None else None, "tolerance": tol,
            "steps_over_tolerance": sum(e > tol for e in worst) if tol else None, "warnings": caught,
            "worst_reconstruction_full": full,
            "steps_over_tolerance_full": sum(e > tol for e in full) if tol else None,
            "calibrated": calibrated, "audit_time_s": audit_s,
            "val_before": before, "val_after": after,
            "train_time_s": seconds, "cpu": platform.processor() or platform.machine()}


def _fmt_range(xs: list[Any]) -> str:
    """min-max (median) of the non-None values."""
    vals = sorted(x for x in xs if x is not None)
    if not vals:
        return "–"
    return f"{vals[0]}" if vals[0] == vals[-1] else f"{vals[0]}-{vals[-1]} ({vals[len(vals) // 2]})"


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if len(s) % 2 else (s[len(s) // 2 - 1] + s[len(s) // 2]) / 2


def decoder_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of decoder training rows: losses, validation, anchors, calibrations, and the worst
    reconstruction error per step by the run-time check (sampled) and by the full audit (where recorded)."""
    head = ("| method | lr | seed | training loss: first 5 → last 5 | val loss | val acc % | "
            "anchors per step | steps that calibrated | check (sampled): median / max, steps > tol | "
            "full audit: median / max, steps > tol | s / step |\n"
            "|:---|---:|---:|:---|:---|:---|:---|---:|:---|:---|---:|")
    lines = [head]
    for r in sorted(rows, key=lambda r: (r["scale"]["lr"], r["method"], r["scale"]["seed"])):
        ls, tol = r["losses"], r.get("tolerance")
        loss = f"{sum(ls[:5]) / 5:.2f} → {sum(ls[-5:]) / 5:.2f}"
        val = f"{r['val_before']['loss']:.3f} → {r['val_after']['loss']:.3f}"
        acc = f"{100 * r['val_before']['accuracy']:.1f} → {100 * r['val_after']['accuracy']:.1f}"
        cells = ["–"] * 4
        if tol is not None:
            w = r["worst_reconstruction"]
            cells[0] = _fmt_range(r["anchors"])
            cells[2] = f"{_median(w):.1e} / {max(w):.1e}, {sum(e > tol for e in w)}"
            full = r.get("worst_reconstruction_full")
            if full:
                cells[1] = str(sum(r["calibrated"]))
                cells[3] = f"{_median(full):.1e} / {max(full):.1e}, {sum(e > tol for e in full)}"
            else:
                cells[1] = cells[3] = "n/a"
        sc = r["scale"]
        lines.append(f"| {r['method']} | {sc['lr']:g} | {sc['seed']} | {loss} | {val} | {acc} | {cells[0]} | "
                     f"{cells[1]} | {cells[2]} | {cells[3]} | {r['train_time_s'] / r['steps']:.1f} |")
    return "\n".join(lines) + "\n"


def write_decoder_report(rows_dir: str) -> list[str]:
    """``rows_dir``/table.md (all rows, :func:`decoder_table`) and table.png (per step, the worst
    reconstruction error of every MEFT row, check and full audit, against the tolerance)."""
    import json
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from peftkit.core.io import atomic_write, atomic_write_text

    d = Path(rows_dir)
    rows = [json.loads(p.read_text()) for p in sorted(d.glob("*.json"))]
    md, png = d / "table.md", d / "table.png"
    atomic_write_text(md, decoder_table(rows))
    meft = sorted((r for r in rows if r.get("tolerance")), key=lambda r: (r["scale"]["lr"], r["method"]))
    lrs = sorted({r["scale"]["lr"] for r in meft})
    fig, axes = plt.subplots(1, max(1, len(lrs)), figsize=(6 * max(1, len(lrs)), 4.2), squeeze=False)
    for ax, lr in zip(axes[0], lrs):
        for r in (r for r in meft if r["scale"]["lr"] == lr):
            line, = ax.plot(r["worst_reconstruction"], marker=".",
                            label=f"{r['method']} s{r['scale']['seed']} (check)")
            if r.get("worst_reconstruction_full"):
                ax.plot(r["worst_reconstruction_full"], ls="--", color=line.get_color(), lw=0.8)
        ax.axhline(meft[0]["tolerance"], color="k", lw=1)
        ax.set(yscale="log", xlabel="step", ylabel="worst reconstructed layer input, relative error",
               title=f"SmolLM2 MEFT1, bf16 autocast, lr {lr:g} (dashed: full audit)")
        ax.legend(fontsize=6)
    fig.tight_layout()
    atomic_write(png, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return [str(md), str(png)]


def run_part(cfg: Any) -> int:
    """``bench meft_accuracy part=decoder``: one training row per ``decoder_methods`` label, kept in
    ``rows_dir`` (rows already there are reused), and the rendered table. ``cfg`` is the bench's
    ``AccuracyConfig``."""
    from peftkit.core.errors import ConfigError
    from peftkit.core.io import atomic_write_json

    for method in cfg.decoder_methods.split(","):
        if method not in DECODER_STACKS:
            raise ConfigError(f"decoder_methods: unknown '{method}'; choose from {', '.join(DECODER_STACKS)}")
    for method in cfg.decoder_methods.split(","):
        path = Path(cfg.rows_dir) / (f"{cfg.decoder_backbone}_{method}_bf16autocast_n{cfg.decoder_examples}"
                                     f"_t{cfg.max_length}_e{cfg.epochs}_s{cfg.sweep_seed}"
                                     + ("" if cfg.decoder_lr == 1e-3 else f"_lr{cfg.decoder_lr:g}") + ".json")
        if path.exists():
            row = json.loads(path.read_text())
        else:
            row = decoder_train_row(cfg.decoder_backbone, cfg.decoder_examples, cfg.max_length,
                                    cfg.decoder_batch, cfg.epochs, cfg.decoder_lr, seed=cfg.sweep_seed,
                                    method=method)
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(path, row)
        losses, worst = row["losses"], row["worst_reconstruction"]
        print(f"{row['backbone']} {method} bf16 autocast: {row['steps']} steps, loss {losses[0]:.3f} -> "
              f"{losses[-1]:.3f}; val loss {row['val_before']['loss']:.3f} -> "
              f"{row['val_after']['loss']:.3f}, "
              f"val acc {row['val_before']['accuracy']:.3f} -> {row['val_after']['accuracy']:.3f}; worst "
              f"reconstruction {max(worst or [0.0]):.2e} (steps over tolerance: "
              f"{row['steps_over_tolerance']}); {row['train_time_s']:.0f} s; wrote {path}", flush=True)
    print("wrote", ", ".join(write_decoder_report(cfg.rows_dir)), flush=True)
    return 0
