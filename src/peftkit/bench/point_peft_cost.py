"""``peftkit bench point_peft_cost``: what a training step of Point-PEFT costs against full FT, and where.

In one process, on one fixed training batch of the CPU protocol (``configs/point/kicad__*.yaml``: KiCad,
512 points, 32 patches of 16, batch 32): every row's model is built as its training run builds it, then

- step time: one AdamW step per row, round-robin over the rows (``peftkit.measure.timing``, rotated order,
  1 warm-up round), median over ``rounds``; ratios against full FT from the same rounds;
- peak memory: the live tensor bytes of one step (``peftkit.measure.peak.step_peak``: profiler memory
  events; parameters and the batch are not counted, gradients and optimiser state made in the step are);
- profile: forward wall time per part, from forward pre/post hooks on the parts' modules (grouping, patch
  and position embedding, attention, MLP (+ the parallel adapter), the P2-Bank query and retrieval, the
  local attention and token adapter of the GA-Adapter, the rest of each block: the GA grouping, pooling
  and interpolation), then the backward and the optimiser step, averaged over ``rounds`` steps.

Writes ``OUT/point_peft_cost.{json,md}``.
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from peftkit.bench._args import parse_overrides
from peftkit.core.io import atomic_write_json, atomic_write_text

CACHED = ("data.example_index=true", "methods.0.cache_query=true")
CKPT_ADAPTER = ("methods.0.checkpoint_adapter=true",)
CKPT_BLOCKS = ("methods.0.checkpoint_blocks=true",)
CKPT_ATTN = ("methods.0.checkpoint_attention=true",)
# row -> (config stem under configs/point/kicad__*.yaml, overrides)
ROWS: dict[str, tuple[str, tuple[str, ...]]] = {
    "full": ("full", ()),
    "point_peft": ("point_peft", ()),
    "point_peft_cached": ("point_peft", CACHED),
    "no_bank": ("point_peft_no_bank", ()),
    "head_only": ("linear", ()),
    # memory options: recompute the GA-Adapter / the frozen blocks in backward
    "pp_ckpt_adapter": ("point_peft", CKPT_ADAPTER),
    "pp_ckpt_blocks": ("point_peft", CKPT_BLOCKS),
    "pp_ckpt_both": ("point_peft", (*CKPT_ADAPTER, *CKPT_BLOCKS)),
    "pp_cached_ckpt_adapter": ("point_peft", (*CACHED, *CKPT_ADAPTER)),
    "pp_cached_ckpt_both": ("point_peft", (*CACHED, *CKPT_ADAPTER, *CKPT_BLOCKS)),
    "pp_ckpt_adapter_attn": ("point_peft", (*CKPT_ADAPTER, *CKPT_ATTN)),
    "pp_cached_ckpt_adapter_attn": ("point_peft", (*CACHED, *CKPT_ADAPTER, *CKPT_ATTN)),
}


@dataclass
class CostConfig:
    out_dir: str = "docs/results/point_peft"
    rows: str = (
        "full,point_peft,point_peft_cached,no_bank,head_only,pp_ckpt_adapter,pp_ckpt_blocks,pp_ckpt_both,"
        "pp_cached_ckpt_adapter,pp_cached_ckpt_both,pp_ckpt_adapter_attn,pp_cached_ckpt_adapter_attn"
    )
    batch: int = 32
    rounds: int = 5
    threads: int = 1
    seed: int = 0


def _build(
    stem: str, overrides: tuple[str, ...], batch_size: int, seed: int
) -> tuple[nn.Module, Callable[[], None], dict[str, Any]]:
    from peftkit.train.build import build_data, build_model, seed_everything
    from peftkit.train.config import load_config
    from peftkit.train.optim import build_optimizer

    cfg = load_config(f"configs/point/kicad__{stem}.yaml", [f"seed={seed}", *overrides])
    seed_everything(cfg.seed)
    data = build_data(cfg)
    model = build_model(cfg, data).train()
    opt = build_optimizer(model, cfg.train.lr, cfg.train.weight_decay)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.train), generator=g)[:batch_size].tolist()
    batch = data.collate([data.train[i] for i in idx])  # points [b, n, 3], labels [b]

    inputs = {k: v for k, v in batch.items() if k != "labels"}

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(**inputs), batch["labels"])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return model, step, {"num_points": int(batch["points"].shape[1]), "batch": batch}


# saved-for-backward parts, by the module a tensor was saved in (first matching pattern wins)
SAVED_PARTS: tuple[tuple[str, str], ...] = (
    ("GA-Adapter: local attention (m * k neighbourhood tokens)", r"point_peft\.local_attn"),
    ("GA-Adapter: gather, pool, BN, interpolation (block hooks)", r"blocks\.\d+$"),
    ("adapters (MLP + token)", r"blocks\.\d+\.point_peft\.geo\."),
    ("prompts (+ prompt adapters)", r"blocks\.\d+\.point_peft\.prompt"),
    ("block attention, LayerNorms, stochastic depth", r"blocks\.\d+\.(attn|norm1|norm2|drop_path)"),
    ("block MLP", r"blocks\.\d+\.mlp"),
    ("patch + position embedding", r"(patch_embed|pos_embed)"),
)


def saved_by_part(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, int]:
    """Bytes saved for backward by one forward + loss (``peftkit.measure.saved``), grouped into
    :data:`SAVED_PARTS` (the rest: final norm, head, loss). Inside a ``torch.utils.checkpoint`` region
    nothing is saved; the inputs a region keeps are not seen here (the step peak counts them)."""
    import re

    from peftkit.measure.saved import saved_activations

    res = saved_activations(model, batch)
    out: dict[str, int] = {name: 0 for name, _ in SAVED_PARTS}
    out["rest (final norm, head, loss)"] = 0
    for where, nbytes in res.by_module.items():
        part = next((n for n, pat in SAVED_PARTS if re.match(pat, where)), "rest (final norm, head, loss)")
        out[part] += nbytes
    out["total"] = res.bytes
    return out


def _parts(model: nn.Module) -> dict[str, list[nn.Module]]:
    """Module lists whose forward time makes each profile part (by attribute, from the backbone's layout)."""
    parts: dict[str, list[nn.Module]] = {
        "grouping (FPS + kNN)": [model.group_divider],
        "patch embedding (mini-PointNet)": [model.patch_embed],
        "position embedding": [model.pos_embed],
        "attention": [b.attn for b in model.blocks],
        "MLP (+ parallel adapter)": [b.mlp for b in model.blocks],
        "head": [model.cls_head],
    }
    shared = getattr(model, "point_peft", None)
    if shared is not None:
        if shared.bank is not None:
            parts["P2-Bank query + retrieval"] = [shared.bank]
        if shared.local_attn is not None:
            parts["GA local attention"] = [shared.local_attn]
        geos = [b.point_peft.geo for b in model.blocks if getattr(b.point_peft, "geo", None) is not None]
        if geos:
            parts["GA token adapter"] = [g.token_adapter for g in geos]
    parts["blocks (total)"] = list(model.blocks)
    return parts


def profile(model: nn.Module, step: Callable[[], None], rounds: int) -> dict[str, float]:
    """Mean seconds per step of each forward part, the backward + optimiser step, and the whole step."""
    acc: dict[str, float] = defaultdict(float)
    starts: dict[int, list[float]] = defaultdict(list)
    handles = []
    for name, mods in _parts(model).items():
        for m in mods:
            def pre(mod: nn.Module, *_: Any) -> None:
                starts[id(mod)].append(time.perf_counter())

            def post(mod: nn.Module, *_: Any, name: str = name) -> None:
                acc[name] += time.perf_counter() - starts[id(mod)].pop()

            handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    fwd = model.forward
    totals = defaultdict(float)

    def timed_forward(*a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        out = fwd(*a, **k)
        totals["forward"] += time.perf_counter() - t0
        return out

    model.forward = timed_forward  # type: ignore[method-assign]
    try:
        for _ in range(rounds):
            t0 = time.perf_counter()
            step()
            totals["step"] += time.perf_counter() - t0
    finally:
        del model.forward
        for h in handles:
            h.remove()
    out = {k: v / rounds for k, v in acc.items()}
    in_block = ("attention", "MLP (+ parallel adapter)", "GA local attention", "GA token adapter")
    inner = sum(v for k, v in out.items() if k in in_block)
    out["block rest (GA grouping, pooling, interpolation, residuals)"] = out.pop("blocks (total)") - inner
    out["forward (total)"] = totals["forward"] / rounds
    out["backward + optimiser step"] = (totals["step"] - totals["forward"]) / rounds
    out["step (total)"] = totals["step"] / rounds
    return out


def main(overrides: list[str]) -> int:
    from peftkit.measure.peak import step_peak
    from peftkit.measure.timing import interleaved_times, medians

    cfg = parse_overrides(CostConfig, list(overrides), "point_peft_cost")
    torch.set_num_threads(cfg.threads)
    rows = [r.strip() for r in cfg.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        from peftkit.core.errors import ConfigError

        raise ConfigError(f"unknown row(s) {unknown}; choose from {', '.join(ROWS)}")
    built = {r: _build(*ROWS[r], cfg.batch, cfg.seed) for r in rows}
    times = interleaved_times({r: built[r][1] for r in rows}, warmup=1, rounds=cfg.rounds)
    med = medians(times)
    peaks = {r: step_peak(built[r][1]).peak_bytes for r in rows}
    saved = {r: saved_by_part(built[r][0], built[r][2]["batch"]) for r in rows}
    profiled = ("full", "point_peft", "point_peft_cached")
    profiles = {r: profile(built[r][0], built[r][1], cfg.rounds) for r in rows if r in profiled}
    ref = "full" if "full" in med else rows[0]
    result = {
        "config": dataclasses.asdict(cfg), "step_time_s": med, "step_times_s": times,
        "time_vs_full": {r: med[r] / med[ref] for r in rows}, "peak_bytes": peaks,
        "peak_vs_full": {r: peaks[r] / peaks[ref] for r in rows}, "profile_s": profiles,
        "saved_bytes": saved,
        "num_points": built[rows[0]][2]["num_points"],
    }
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "point_peft_cost.json", result, indent=1)
    md = [f"One process, batch {cfg.batch}, {result['num_points']} points, {cfg.threads} thread(s), "
          f"{cfg.rounds} interleaved rounds (median).", "",
          "| row | step (s) | vs full FT | step peak (MiB) | vs full FT |", "|:---|---:|---:|---:|---:|"]
    for r in rows:
        md.append(f"| {r} | {med[r]:.3f} | {result['time_vs_full'][r]:.2f}x | {peaks[r] / 2**20:.0f} | "
                  f"{result['peak_vs_full'][r]:.2f}x |")
    md += ["", "Saved for backward by one forward (MiB), by part (a checkpointed region's kept inputs are "
           "not counted here; the step peak above counts everything):", "",
           "| part | " + " | ".join(rows) + " |", "|:---|" + "---:|" * len(rows)]
    for part in saved[rows[0]]:
        md.append(f"| {part} | " + " | ".join(f"{saved[r][part] / 2**20:.1f}" for r in rows) + " |")
    for r, prof in profiles.items():
        md += ["", f"Profile of one {r} step (mean of {cfg.rounds}):", ""]
        md += ["| part | ms | share |", "|:---|---:|---:|"]
        for k, v in sorted(prof.items(), key=lambda kv: -kv[1]):
            if k != "step (total)":
                md.append(f"| {k} | {1000 * v:.1f} | {100 * v / prof['step (total)']:.0f}% |")
        md.append(f"| step (total) | {1000 * prof['step (total)']:.1f} | 100% |")
    md.append("")
    md.append("command: peftkit bench point_peft_cost " + " ".join(overrides))
    atomic_write_text(out / "point_peft_cost.md", "\n".join(md) + "\n")
    print("\n".join(md))
    return 0

