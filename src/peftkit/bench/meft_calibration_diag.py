"""Why MEFT1's anchors miss the tolerance on some SmolLM2 training steps under bf16 autocast: a diagnosis.

MEFT (Liao, Tan, Monz; NeurIPS 2023; arXiv 2306.00477), MEFT1: y1 = lam x1 + F(x2), y2 = x2 + G(y1) with
lam = 0.1; the reversible backward reconstructs x2 = y2 - G(y1) and x1 = (y1 - F(x2)) / lam layer by layer,
restarting from the exact inputs at the anchors. For each batch, at fixed weights, this measures per layer n:

* the one-step ("local") error: invert layer n alone from its exact output, err = |x_rec - x| / |x|
  (Frobenius, worst stream): what layer n adds whatever the anchors above it;
* the chain error with given anchors (what the backward sees), in full, on the run-time check's 4,096-element
  sample, and without the 0.1% largest-magnitude elements ("robust");
* the share of |x|^2 held by the 0.1% largest elements (massive activations).

and the anchors ``calibrate_anchors`` chooses on each batch. It does this at the initial weights, then again
after a few AdamW steps (the bench's schedule), with the anchors of one batch evaluated on the next ones.

Run: ``peftkit bench meft_calibration_diag out_dir=DIR lr=0.003`` (SmolLM2-135M, 160 BBC articles x 64
tokens, batch 16, ~2 min on one CPU thread); writes OUT_DIR/diagnosis_lr{lr}.json and prints a summary.

Shape legend: b batch, t tokens, d model width.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

TOL = 1e-3


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def _robust_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative error without the 0.1% largest-magnitude true elements."""
    t, r = b.reshape(-1).double(), a.reshape(-1).double()
    k = max(1, t.numel() // 1000)
    keep = t.abs() <= t.abs().kthvalue(t.numel() - k).values
    return float((r[keep] - t[keep]).norm() / t[keep].norm().clamp_min(1e-300))


@torch.no_grad()
def layer_profile(couplings: list[Any], hidden: torch.Tensor, ctx: dict[str, Any],
                  anchors: frozenset[int]) -> dict[str, list[float]]:
    """Per layer (bottom first): local error, chain error (full / sampled / robust) with ``anchors`` (0 at
    anchors), and the top-0.1% share of |x2|^2; run it under the autocast of the training."""
    from peftkit.methods.meft.stack import sample_index

    ins, (x1, x2) = [], (hidden, hidden)
    for c in couplings:
        ins.append((x1, x2))
        x1, x2 = c(x1, x2, ctx)
    outs = ins[1:] + [(x1, x2)]
    idx = sample_index(hidden.numel(), hidden.device)
    n = len(couplings)
    prof: dict[str, list[float]] = {k: [0.0] * n for k in ("local", "full", "sampled", "robust", "top_share")}
    o1, o2 = x1, x2
    for i in reversed(range(n)):
        t1, t2 = ins[i]
        l1, l2 = couplings[i].inverse(*outs[i], ctx)
        prof["local"][i] = max(_rel(l1, t1), _rel(l2, t2))
        sq = t2.reshape(-1).double() ** 2
        prof["top_share"][i] = float(sq.topk(max(1, sq.numel() // 1000)).values.sum() / sq.sum())
        if i in anchors:
            o1, o2 = t1, t2
            continue
        r1, r2 = couplings[i].inverse(o1, o2, ctx)
        prof["full"][i] = max(_rel(r1, t1), _rel(r2, t2))
        prof["sampled"][i] = max(_rel(r1.reshape(-1)[idx], t1.reshape(-1)[idx]),
                                 _rel(r2.reshape(-1)[idx], t2.reshape(-1)[idx]))
        prof["robust"][i] = max(_robust_rel(r1, t1), _robust_rel(r2, t2))
        o1, o2 = r1, r2
    return prof


def diagnose(lr: float = 3e-3, examples: int = 160, max_length: int = 64, batch_size: int = 16,
             seed: int = 0, probe_steps: tuple[int, ...] = (2, 5, 9), evals: int = 3) -> dict[str, Any]:
    """The measurements of the module docstring on SmolLM2 + MEFT1 defaults, as one JSON-able dict."""
    from peftkit.methods.meft.apply import find_stack
    from peftkit.methods.meft.checks import calibrate_anchors, stack_input
    from peftkit.train.build import build_data, build_model, seed_everything
    from peftkit.train.config import config_from_dict_tree
    from peftkit.train.optim import build_optimizer, lr_factor

    rc = config_from_dict_tree({
        "out_dir": "runs/unused", "seed": seed, "backbone": {"name": "smollm2", "task": "classification"},
        "data": {"name": "bbc_news", "max_length": max_length, "max_train_examples": examples},
        "methods": [{"name": "meft", "variant": "meft1"}]})
    seed_everything(seed)
    data = build_data(rc)
    model = build_model(rc, data).train()
    stack = find_stack(model)
    stack.check_every = 0
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(seed)).tolist()
    batches = [data.collate([data.train[j] for j in order[i: i + batch_size]])
               for i in range(0, len(order), batch_size)]
    cs = list(stack.couplings)

    def probe(cal: int, targets: list[int]) -> dict[str, Any]:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            caps = {j: stack_input(model, input_ids=batches[j]["input_ids"],
                                   attention_mask=batches[j]["attention_mask"])[1:] for j in {cal, *targets}}
            own = {j: calibrate_anchors(cs, *caps[j], TOL / 4)[0] for j in targets}
            anchors = frozenset(calibrate_anchors(cs, *caps[cal], TOL / 4)[0])
            prof = {j: layer_profile(cs, *caps[j], anchors) for j in targets}
        return {"calibrated_on": cal, "anchors": sorted(anchors), "own_anchors": own, "profiles": prof}

    out: dict[str, Any] = {"backbone": "smollm2", "variant": "meft1", "mode": "bf16 autocast, fp32 weights",
                           "scale": {"examples": examples, "max_length": max_length, "batch_size": batch_size,
                                     "lr": lr, "seed": seed, "threads": torch.get_num_threads()},
                           "probes": [{"after_step": None, **probe(0, list(range(2 * evals)))}]}
    opt = build_optimizer(model, lr, 0.01)
    trainable = [p for p in model.parameters() if p.requires_grad]
    total = 2 * len(batches)
    for step in range(max(probe_steps) + 1):
        b = batches[step % len(batches)]
        for group in opt.param_groups:
            group["lr"] = lr * lr_factor(step, total, 2, "linear")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            loss = nn.functional.cross_entropy(logits.float(), b["labels"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step in probe_steps:
            nxt = [(step + 1 + k) % len(batches) for k in range(evals)]
            out["probes"].append({"after_step": step, **probe(nxt[0], nxt)})
    out["summary"] = summarise(out)
    return out


def summarise(out: dict[str, Any]) -> dict[str, Any]:
    """Counts over all probed (batch, layer) pairs: local errors by size, layers whose local error exceeded
    the tolerance, check-vs-full ratio quantiles, worst chain error with another batch's anchors."""
    local, ratio, over_layers, cross, share = [], [], {}, [], []
    for p in out["probes"]:
        for j, prof in p["profiles"].items():
            local += prof["local"]
            share += prof["top_share"]
            for i, e in enumerate(prof["local"]):
                if e > TOL:
                    over_layers[i] = over_layers.get(i, 0) + 1
            ratio += [s / f for s, f in zip(prof["sampled"], prof["full"]) if f > 0]
            if int(j) != p["calibrated_on"]:
                cross.append(max(prof["full"]))
    q = sorted(ratio)
    n_pairs = len(local)
    return {
        "batch_layer_pairs": n_pairs,
        "local_under_1e-6": sum(e < 1e-6 for e in local), "local_1e-6_to_tol_over_4": sum(
            1e-6 <= e <= TOL / 4 for e in local), "local_over_tol_over_4": sum(e > TOL / 4 for e in local),
        "local_over_tol": sum(e > TOL for e in local), "local_max": max(local),
        "layers_local_over_tol_count": dict(sorted(over_layers.items())),
        "probed_batches": sum(len(p["profiles"]) for p in out["probes"]),
        "sampled_over_full": {k: q[int(f * (len(q) - 1))] for k, f in
                              (("min", 0), ("p10", 0.1), ("median", 0.5), ("p90", 0.9), ("max", 1))},
        "other_batch_anchors_worst_full": cross,
        "other_batch_anchors_over_tol": sum(e > TOL for e in cross),
        "top01_share_median": sorted(share)[len(share) // 2],
    }


@dataclass
class DiagConfig:
    """Where the diagnosis goes and the learning rate of its AdamW steps."""

    out_dir: str = "docs/results/meft_rows/smollm2_train/diagnosis"
    lr: float = 3e-3


def main(argv: list[str]) -> int:
    """``peftkit bench meft_calibration_diag [out_dir=DIR] [lr=LR]``: writes OUT_DIR/diagnosis_lr{lr}.json."""
    from peftkit.bench._args import parse_overrides
    from peftkit.core.errors import ConfigError
    from peftkit.core.io import atomic_write_json

    cfg = parse_overrides(DiagConfig, argv, "meft_calibration_diag")
    if not cfg.lr > 0:
        raise ConfigError(f"meft_calibration_diag: lr must be > 0, got {cfg.lr}")
    torch.set_num_threads(1)
    out = diagnose(lr=cfg.lr)
    path = Path(cfg.out_dir) / f"diagnosis_lr{cfg.lr:g}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, out)
    print(json.dumps(out["summary"], indent=1))
    print("wrote", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
