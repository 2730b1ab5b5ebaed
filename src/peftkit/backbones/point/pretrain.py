"""``peftkit pretrain CONFIG.yaml [key=value ...]``: Point-MAE pretraining of a registered point backbone.

Recipe (Point-MAE, arXiv 2203.06604, cfgs/pretrain.yaml): random patch masking 0.6, Chamfer-L2 on the
masked patches, AdamW (lr 1e-3, wd 0.05), cosine schedule with linear warm-up (10 of 300 epochs), batch 128,
1024 points randomly sampled per cloud, ScaleAndTranslate augmentation. Our CPU configs keep the recipe and
scale the schedule (see configs/point/pretrain_small.yaml and docs/point.md).

Data sources: ``kicad_train`` (the train split of ``peftkit data kicad``; never the test split), ``urdf``
(pybullet's 1,000 random objects) and ``synthetic`` (primitives, for tests). Writes to ``out_dir``:
``checkpoint.pt`` (resumable: model, optimiser, schedule, RNG), ``metrics.jsonl``, ``loss.png``,
``encoder.safetensors`` and ``summary.json``; with ``export`` set, also the fp16 encoder at that path.
"""

from __future__ import annotations

import json
import math
import os
import time
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm import tqdm

from peftkit.backbones.point.convert import save_encoder
from peftkit.backbones.point.mae import DECODER_DEPTH, MASK_RATIO, PointMAE
from peftkit.backbones.point.zoo import build_point_model
from peftkit.core.configs import config_from_dict
from peftkit.core.errors import ConfigError, DataError
from peftkit.data.points.transforms import scale_and_translate


@dataclass
class PretrainConfig:
    out_dir: str = "runs/pretrain_point_mae_small"
    seed: int = 0
    backbone: str = "point_mae_small"
    model: dict[str, Any] = field(default_factory=dict)  # PointTransformer size overrides
    sources: tuple[str, ...] = ("kicad_train", "urdf")
    stored_points: int = 2048  # points per cached cloud
    num_points: int = 1024  # paper: 1024 sampled per cloud
    mask_ratio: float = MASK_RATIO  # paper: 0.6
    decoder_depth: int = DECODER_DEPTH  # paper: 4
    decoder_heads: int | None = None  # paper: 6 (= encoder heads at d=384)
    epochs: int = 300  # paper: 300
    warmup_epochs: float = 10  # paper: 10
    batch_size: int = 128  # paper: 128
    lr: float = 1e-3  # paper: 1e-3
    weight_decay: float = 0.05  # paper: 0.05
    min_lr: float = 1e-6  # paper (timm CosineLRScheduler lr_min)
    grad_clip: float | None = None  # paper: none in pretraining
    threads: int = 1
    checkpoint_every: int = 100  # steps
    max_steps: int | None = None  # stop early (the schedule keeps its length)
    export: str | None = None  # fp16 encoder for shipping
    synthetic_count: int = 256  # clouds of the "synthetic" source


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> PretrainConfig:
    """YAML + ``key=value`` overrides (``model.dim=96`` sets a size override)."""
    tree: dict[str, Any] = {}
    if path is not None:
        tree = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: a pretraining config is a mapping of keys")
    for item in overrides or []:
        key, sep, val = item.partition("=")
        if not sep:
            raise ConfigError(f"override '{item}' is not key=value")
        if key.startswith("model."):
            tree.setdefault("model", {})[key[6:]] = yaml.safe_load(val)
        else:
            tree[key] = yaml.safe_load(val)
    hints = typing.get_type_hints(PretrainConfig)
    for key, val in tree.items():
        if isinstance(val, str) and "float" in str(hints.get(key, "")):  # YAML reads 1e-3 as a string
            try:
                tree[key] = float(val)
            except ValueError:
                raise ConfigError(f"{key} must be a number, got '{val}'") from None
    return config_from_dict(PretrainConfig, tree, where=str(path or "overrides"))


def load_corpus(cfg: PretrainConfig) -> torch.Tensor:
    """All pretraining clouds ``[N, stored_points, 3]`` (from the caches, preparing pybullet's on demand)."""
    from peftkit.data.points import kicad, synthetic, urdf_objs
    from peftkit.data.points.sampling import cache_root, load_cloud

    clouds: list[np.ndarray] = []
    for src in cfg.sources:
        if src == "kicad_train":
            split, root = kicad.load_split(), kicad.clouds_dir(cache_root(), cfg.stored_points)
            files = [root / lib / f"{n}.npz" for lib in split["classes"] for n in split["train"][lib]]
            have = [f for f in files if f.is_file()]
            if not have:
                raise DataError(
                    f"no KiCad clouds in {root}; run 'peftkit data kicad points={cfg.stored_points}'"
                )
            clouds += [load_cloud(f) for f in have]
        elif src == "urdf":
            root = urdf_objs.clouds_dir(cache_root(), cfg.stored_points)
            if not (root / "prepare_log.json").is_file():
                urdf_objs.prepare(cache_root(), cfg.stored_points)
            clouds += [load_cloud(f) for f in sorted(root.glob("*.npz"))]
        elif src == "synthetic":
            pts, _ = synthetic.make_shapes(cfg.synthetic_count, cfg.stored_points, seed=cfg.seed)
            clouds += list(pts)
        else:
            raise ConfigError(f"unknown pretraining source '{src}'; choose kicad_train, urdf or synthetic")
    return torch.from_numpy(np.stack(clouds)).float()


def lr_at(step: int, total: int, warmup: int, lr: float, min_lr: float) -> float:
    """Linear warm-up to ``lr`` over ``warmup`` steps, then cosine down to ``min_lr`` at ``total``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * t))


def _batch(corpus: torch.Tensor, idx: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    sub = torch.rand(len(idx), corpus.shape[1], generator=g).argsort(1)[:, :n]  # random n of the stored
    pts = torch.gather(corpus[idx], 1, sub[..., None].expand(-1, -1, 3))  # [b, n, 3]
    return scale_and_translate(pts, g)


def _recipe(cfg: dict[str, Any]) -> dict[str, Any]:
    """The config fields that change what is trained (a resumed run must match them)."""
    return {k: v for k, v in cfg.items() if k not in ("max_steps", "export", "threads", "checkpoint_every")}


def _write_metrics(history: list, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(dict(zip(("step", "loss", "lr"), h))) + "\n" for h in history))
    os.replace(tmp, path)


def _save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def pretrain(cfg: PretrainConfig, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) pretraining; returns the summary written to ``summary.json``."""
    from peftkit.train.optim import param_groups

    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    corpus = load_corpus(cfg)
    if len(corpus) < cfg.batch_size:
        raise DataError(f"the corpus has {len(corpus)} clouds, fewer than one batch of {cfg.batch_size}")
    encoder = build_point_model(cfg.backbone, num_labels=2, seed=cfg.seed, **cfg.model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed + 1)
        mae = PointMAE(encoder, cfg.mask_ratio, cfg.decoder_depth, cfg.decoder_heads)
    torch.manual_seed(cfg.seed)  # drop-path draws from the global RNG; its state is checkpointed too
    opt = torch.optim.AdamW(param_groups(mae, cfg.weight_decay), lr=cfg.lr)
    per_epoch = len(corpus) // cfg.batch_size  # drop_last, as the reference loader
    total, warmup = cfg.epochs * per_epoch, round(cfg.warmup_epochs * per_epoch)
    gen = torch.Generator().manual_seed(cfg.seed)
    step, history, ckpt = 0, [], out / "checkpoint.pt"
    if ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        if _recipe(state["config"]) != _recipe(asdict(cfg)):
            raise ConfigError(f"{ckpt} was written by another config; use a fresh out_dir")
        mae.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        step, history = state["step"], state["history"]
    stop = min(total, cfg.max_steps or total)
    bar = tqdm(total=stop, initial=step, desc="point-mae pretrain", unit="step", disable=not progress)
    mae.train()
    t_start, t_steps = time.perf_counter(), 0
    while step < stop:
        epoch, pos = divmod(step, per_epoch)
        perm = torch.randperm(len(corpus), generator=torch.Generator().manual_seed(cfg.seed * 100003 + epoch))
        idx = perm[pos * cfg.batch_size : (pos + 1) * cfg.batch_size]
        for group in opt.param_groups:
            group["lr"] = lr_at(step, total, warmup, cfg.lr, cfg.min_lr)
        loss = mae(_batch(corpus, idx, cfg.num_points, gen), generator=gen)
        if not torch.isfinite(loss):
            raise DataError(f"the pretraining loss became {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(mae.parameters(), cfg.grad_clip)
        opt.step()
        step, t_steps = step + 1, t_steps + 1
        history.append([step, loss.item(), opt.param_groups[0]["lr"]])
        bar.update(1)
        bar.set_postfix(loss=f"{history[-1][1] * 1000:.2f}e-3", epoch=epoch)
        if step % cfg.checkpoint_every == 0 or step == stop:
            _save(
                {
                    "model": mae.state_dict(),
                    "optimizer": opt.state_dict(),
                    "rng": gen.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "step": step,
                    "history": history,
                    "config": asdict(cfg),
                },
                ckpt,
            )
            _write_metrics(history, out / "metrics.jsonl")
    bar.close()
    return _finish(
        cfg, mae, history, total, per_epoch, len(corpus), (time.perf_counter() - t_start) / max(1, t_steps)
    )


def _finish(
    cfg: PretrainConfig, mae: PointMAE, history: list, total: int, per_epoch: int, n: int, step_time: float
) -> dict[str, Any]:
    out = Path(cfg.out_dir)
    last = history[-min(len(history), max(1, per_epoch)) :]  # the last epoch
    meta = {
        "backbone": cfg.backbone,
        "model": cfg.model,
        "steps": len(history),
        "corpus": n,
        "sources": list(cfg.sources),
        "final_loss": float(np.mean([h[1] for h in last])),
    }
    save_encoder(mae.encoder_state_dict(), out / "encoder.safetensors", meta)
    if cfg.export:
        save_encoder(mae.encoder_state_dict(), Path(cfg.export), meta, fp16=True)
    _write_metrics(history, out / "metrics.jsonl")
    plot_loss_curve([h[0] for h in history], [h[1] for h in history], out / "loss.png", per_epoch)
    summary = meta | {
        "total_steps": total,
        "steps_per_epoch": per_epoch,
        "epochs_done": len(history) / per_epoch,
        "step_time_s": step_time,
        "batch_size": cfg.batch_size,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def plot_loss_curve(steps: list[int], losses: list[float], path: Path, per_epoch: int) -> None:
    """Per-step loss (faint) and its per-epoch mean, log scale, as a small PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    ax.plot(steps, losses, lw=0.5, alpha=0.35, color="tab:blue", label="step")
    k = max(1, per_epoch)
    if len(losses) >= k:
        means = [float(np.mean(losses[i : i + k])) for i in range(0, len(losses) - k + 1, k)]
        ax.plot(
            [steps[min(i + k - 1, len(steps) - 1)] for i in range(0, len(losses) - k + 1, k)],
            means,
            color="tab:blue",
            lw=1.8,
            label="epoch mean",
        )
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("Chamfer-L2 (masked patches)")
    ax.set_title("Point-MAE pretraining loss")
    ax.legend(frameon=False)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


def main(config_path: str | None, overrides: list[str] | None = None) -> int:
    """Entry point of ``peftkit pretrain``."""
    cfg = load_config(config_path, overrides)
    s = pretrain(cfg)
    print(f"peftkit pretrain: {s['steps']} steps, final loss {s['final_loss']:.5f} -> {cfg.out_dir}")
    return 0
