"""``peftkit pretrain CONFIG.yaml [key=value ...]``: Point-MAE pretraining of a registered point backbone.

Recipe (Point-MAE, arXiv 2203.06604, cfgs/pretrain.yaml): random patch masking 0.6, Chamfer-L2 on the
masked patches, AdamW (lr 1e-3, wd 0.05), cosine schedule with linear warm-up (10 of 300 epochs), batch 128,
1024 points randomly sampled per cloud, ScaleAndTranslate augmentation. Our CPU configs keep the recipe and
scale the schedule (see configs/point/pretrain_small.yaml and docs/point.md). The learning rate at step s is

    lr_s = min_lr + (lr - min_lr) * f(s)

with ``f`` the warm-up + cosine factor of :func:`peftkit.train.optim.lr_factor` (the one schedule of peftkit).

Data sources: ``kicad_train`` (the train split of ``peftkit data kicad``; never the test split), ``urdf``
(pybullet's 1,000 random objects) and ``synthetic`` (primitives, for tests). Writes to ``out_dir``:
``checkpoint.pt`` (resumable: model, optimiser, RNG; tensors and plain values only, loaded with
``torch.load(weights_only=True)``), ``metrics.jsonl`` (the run log), ``loss.png``, ``encoder.safetensors``
and ``summary.json``; with ``export`` set, also the fp16 encoder at that path. Everything is written
atomically; a config, corpus or checkpoint problem is found before ``out_dir`` is touched.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from peftkit.backbones.point.convert import save_encoder
from peftkit.backbones.point.mae import PointMAE
from peftkit.backbones.point.zoo import build_point_model
from peftkit.core.errors import CheckpointError, DataError
from peftkit.core.io import atomic_write, atomic_write_json
from peftkit.data.points.transforms import scale_and_translate
from peftkit.recipes.pretrain_config import PretrainConfig, load_config, recipe_fields
from peftkit.recipes.pretrain_plot import plot_loss_curve
from peftkit.train.optim import lr_factor, param_groups
from peftkit.train.runlog import RunLog

__all__ = ["PretrainConfig", "load_config", "load_corpus", "lr_at", "main", "pretrain"]


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
    return torch.from_numpy(np.stack(clouds)).float()


def lr_at(step: int, total: int, warmup: int, lr: float, min_lr: float) -> float:
    """``min_lr + (lr - min_lr) * lr_factor(step)`` with peftkit's warm-up + cosine factor."""
    return min_lr + (lr - min_lr) * lr_factor(step, total, warmup, "cosine")


def _batch(corpus: torch.Tensor, idx: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    sub = torch.rand(len(idx), corpus.shape[1], generator=g).argsort(1)[:, :n]  # random n of the stored
    pts = torch.gather(corpus[idx], 1, sub[..., None].expand(-1, -1, 3))  # [b, n, 3]
    return scale_and_translate(pts, g)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A resumable pretraining checkpoint, read with ``weights_only=True`` (no code runs from the file).

    Raises:
        CheckpointError: one line, when the file is truncated, corrupt, needs more than tensors and plain
            values, or lacks a field.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError... depending on the damage
        msg = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise CheckpointError(
                f"{path} holds more than tensors and plain values and is refused (it could run code); "
                "delete it or use a fresh out_dir"
            ) from None
        raise CheckpointError(f"{path} is truncated or corrupt ({msg}); delete it to start over") from None
    need = {"model", "optimizer", "rng", "torch_rng", "step", "config"}
    if not isinstance(state, dict) or not need <= set(state):
        raise CheckpointError(f"{path} is not a peftkit pretraining checkpoint (needs {sorted(need)})")
    return state


def _save(state: dict[str, Any], path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def pretrain(cfg: PretrainConfig, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) pretraining; returns the summary written to ``summary.json``."""
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"out_dir {out} is a file; give a directory")
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
    step, ckpt, losses = 0, out / "checkpoint.pt", []
    if ckpt.is_file():
        state = load_checkpoint(ckpt)
        if recipe_fields(state["config"]) != recipe_fields(asdict(cfg)):
            raise CheckpointError(f"{ckpt} was written by another config; use a fresh out_dir")
        try:
            mae.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(f"{ckpt} does not fit this model: {str(e)[:160]}") from None
        gen.set_state(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        step, losses = int(state["step"]), list(state.get("losses", []))
    out.mkdir(parents=True, exist_ok=True)
    log = RunLog(out, enabled=True, tensorboard=False)
    log.truncate(step)  # records a killed run wrote after its last checkpoint
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
        losses.append(loss.item())
        log.record({"step": step, "loss": losses[-1], "lr": opt.param_groups[0]["lr"]})
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1] * 1000:.2f}e-3", epoch=epoch)
        if step % cfg.checkpoint_every == 0 or step == stop:
            state = {
                "model": mae.state_dict(),
                "optimizer": opt.state_dict(),
                "rng": gen.get_state(),
                "torch_rng": torch.get_rng_state(),
                "step": step,
                "losses": losses,
                "config": asdict(cfg),
            }
            _save(state, ckpt)
    bar.close()
    step_time = (time.perf_counter() - t_start) / max(1, t_steps)
    return _finish(cfg, mae, losses, total, per_epoch, len(corpus), step_time)


def _finish(
    cfg: PretrainConfig, mae: PointMAE, losses: list, total: int, per_epoch: int, n: int, step_time: float
) -> dict[str, Any]:
    out = Path(cfg.out_dir)
    last = losses[-min(len(losses), max(1, per_epoch)) :]  # the last epoch
    meta = {
        "backbone": cfg.backbone,
        "model": cfg.model,
        "steps": len(losses),
        "corpus": n,
        "sources": list(cfg.sources),
        "final_loss": float(np.mean(last)),
    }
    save_encoder(mae.encoder_state_dict(), out / "encoder.safetensors", meta)
    if cfg.export:
        save_encoder(mae.encoder_state_dict(), Path(cfg.export), meta, fp16=True)
    plot_loss_curve(list(range(1, len(losses) + 1)), losses, out / "loss.png", per_epoch)
    summary = meta | {
        "total_steps": total,
        "steps_per_epoch": per_epoch,
        "epochs_done": len(losses) / per_epoch,
        "step_time_s": step_time,
        "batch_size": cfg.batch_size,
    }
    atomic_write_json(out / "summary.json", summary, indent=1)
    return summary


def main(config_path: str | None, overrides: list[str] | None = None) -> int:
    """Entry point of ``peftkit pretrain``."""
    cfg = load_config(config_path, overrides)
    s = pretrain(cfg)
    print(f"peftkit pretrain: {s['steps']} steps, final loss {s['final_loss']:.5f} -> {cfg.out_dir}")
    return 0
