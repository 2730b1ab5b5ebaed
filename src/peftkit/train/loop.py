"""One training run: ``run(load_config("configs/text/bbc_minilm__lora.yaml"))``.

Per optimizer step: ``grad_accum`` micro-batches, each ``loss = task_loss(logits, y) + pk.aux_loss(model)``
(cross-entropy, or MSE for regression; the aux term is e.g. DEFT's density loss), divided by the number of
micro-batches of the step; then grad-norm clipping, AdamW, the schedule. Validation after every epoch,
the final evaluation on ``train.eval_split``. Writes OUT_DIR/{config.yaml, metrics.jsonl, metrics.json,
adapter/, checkpoints/step_N/}. ``resume=RUN_DIR`` continues from the newest checkpoint of that run to the
same result an uninterrupted run reaches. Under torchrun: DDP, sharded data, rank 0 writes and evaluates.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

import peftkit as pk
from peftkit.core.errors import ConfigError
from peftkit.train import distributed as D
from peftkit.train import measure
from peftkit.train.build import (
    build_data,
    build_model,
    check_vocab,
    eval_loader,
    seed_everything,
    train_loader,
)
from peftkit.train.checkpointing import load_checkpoint, new_trainer_state, save_checkpoint
from peftkit.train.config import RunConfig, dump_config
from peftkit.train.evaluate import evaluate, logits_of, split_batch, task_loss
from peftkit.train.optim import build_optimizer, build_scheduler, clip_grad
from peftkit.train.runlog import RunLog, start_run_dir, val_summary

WARMUP_STEPS = 3  # steps left out of the median step time (allocator, first-batch effects)


def run(cfg: RunConfig, resume: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Train, evaluate and save one run.

    Args:
        cfg: the run config (``peftkit.train.config.load_config``).
        resume: a run directory to continue from its newest checkpoint (its files are written there).
        progress: show tqdm bars (rank 0 only).

    Returns:
        The summary written to ``OUT_DIR/metrics.json`` (the same dict on every rank).

    Raises:
        PeftkitError: bad config, data or checkpoint; raised before ``out_dir`` is created where possible.
    """
    env = D.setup(cfg.train.device)
    threads = torch.get_num_threads()
    try:
        return _Run(cfg, env, resume, progress).train()
    finally:
        torch.set_num_threads(threads)  # train.threads applies to this run only
        D.teardown(env)


class _Run:
    def __init__(self, cfg: RunConfig, env: D.DistEnv, resume: str | None, progress: bool) -> None:
        t = cfg.train
        if resume is not None:
            cfg = dataclasses.replace(cfg, out_dir=str(resume))
            if not (Path(resume) / "config.yaml").is_file():
                raise ConfigError(f"--resume {resume}: not a run directory (no config.yaml)")
        if t.batch_size % env.world_size:
            raise ConfigError(
                f"train.batch_size {t.batch_size} (the global batch) must divide evenly over "
                f"{env.world_size} processes"
            )
        if t.threads:
            torch.set_num_threads(t.threads)
        measure.check_hooks(t.measure_density, t.measure_memory)
        self.cfg, self.t, self.env, self.progress = cfg, t, env, progress and env.is_main
        self.out, self.dev = Path(cfg.out_dir), env.device
        seed_everything(cfg.seed)  # same model / method init on every rank
        self.data = build_data(cfg)
        self.model = build_model(cfg, self.data).to(self.dev)
        self.report = pk.param_report(self.model).as_dict()
        seed_everything(cfg.seed + env.rank)  # per-rank streams from here on (dropout, workers)
        self.loader_gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + env.rank)
        per_rank = t.batch_size // env.world_size
        self.loader, self.sampler = train_loader(
            self.data, per_rank, cfg.seed, env, t.num_workers, self.loader_gen
        )
        self.val_loader = eval_loader(self.data, "val", t.eval_batch_size, t.num_workers)
        if t.eval_split == "val" and self.val_loader is None:
            raise ConfigError(f"train.eval_split is val but data '{cfg.data.name}' has no val split")
        self.micro_per_epoch = len(self.loader)
        self.steps_per_epoch = math.ceil(self.micro_per_epoch / t.grad_accum)
        self.total = t.max_steps or self.steps_per_epoch * t.epochs
        self.epochs = math.ceil(self.total / self.steps_per_epoch)
        self.ddp = D.wrap(self.model, env)
        self.opt = build_optimizer(self.model, t.lr, t.weight_decay)
        self.sched = build_scheduler(self.opt, self.total, t.warmup_ratio, t.schedule)
        self.state = new_trainer_state(env.world_size)
        if resume is not None:
            self.state = load_checkpoint(self.out, self.model, self.opt, self.sched, self.loader_gen, env)
        elif env.is_main:
            start_run_dir(self.out, dump_config(cfg))
        D.barrier(env)
        self.log = RunLog(self.out, env.is_main, t.tensorboard)
        self.log.truncate(self.state["step"])  # records a killed run wrote after its last checkpoint
        self.epoch_gen_state = self.loader_gen.get_state()

    def _eval(self, loader: Any, desc: str) -> dict[str, float]:
        d = self.data
        return evaluate(
            self.model, loader, self.dev, d.num_labels, d.metrics, self.t.bf16, self.progress, desc
        )

    # ---- one optimizer step ----------------------------------------------------------------------------

    def _micro(self, batch: dict[str, torch.Tensor], n: int, sync: bool) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, labels = split_batch(batch, self.dev)
        ctx = self.ddp.no_sync() if self.env.distributed and not sync else contextlib.nullcontext()
        with ctx:
            with torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=self.t.bf16):
                lt = task_loss(logits_of(self.ddp(**inputs)), labels, self.data.num_labels)
                la = pk.aux_loss(self.model).float()
            ((lt + la) / n).backward()
        return lt.detach(), la.detach()

    def _step(self, group: list[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        lt_sum = la_sum = torch.zeros((), device=self.dev)
        for i, batch in enumerate(group):
            lt, la = self._micro(batch, len(group), sync=i == len(group) - 1)
            lt_sum, la_sum = lt_sum + lt, la_sum + la
        clip_grad(self.model.parameters(), self.t.grad_clip)
        self.lr = self.opt.param_groups[0]["lr"]  # the rate this step used (logged)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        return lt_sum / len(group), la_sum / len(group)

    def _first_batch(self, batch: dict[str, torch.Tensor]) -> None:
        inputs, labels = split_batch(batch, self.dev)
        check_vocab(self.model, inputs)
        if self.t.measure_memory and self.env.is_main:
            n, model = self.data.num_labels, self.model
            loss_fn = lambda out, *_: task_loss(logits_of(out), labels, n) + pk.aux_loss(model)  # noqa: E731
            batch = {**inputs, "labels": labels}
            self.state["saved_activation_bytes"] = measure.saved_activation_bytes(model, batch, loss_fn)

    # ---- the run -------------------------------------------------------------------------------------------

    def train(self) -> dict[str, Any]:
        st, t = self.state, self.t
        peak = measure.PeakMemory(self.dev) if t.measure_memory else None
        self.ddp.train()
        bar = tqdm(total=self.total, initial=st["step"], desc="train", disable=not self.progress)
        acc: list[Any] = [
            0.0,
            0.0,
            0,
        ]  # task loss, aux loss (device tensors: no sync until a log step), count
        first, last_time = st["step"] == 0, time.perf_counter()
        self.t0, self.time_before = last_time, st["train_time_s"]
        while st["epoch"] < self.epochs and st["step"] < self.total:
            epoch = st["epoch"]
            self.sampler.set_epoch(epoch)
            self.sampler.skip = st["micro"] * self.loader.batch_size
            if st["micro"] == 0:
                self.epoch_gen_state = self.loader_gen.get_state()
            batches = iter(self.loader)
            while st["step"] < self.total and (group := list(itertools.islice(batches, t.grad_accum))):
                if first:
                    self._first_batch(group[0])
                    first = False
                lt, la = self._step(group)
                now = time.perf_counter()
                st["step_times"].append(now - last_time)
                last_time = now
                st["step"] += 1
                st["micro"] += len(group)
                acc = [acc[0] + lt, acc[1] + la, acc[2] + 1]
                bar.update(1)
                if st["step"] % t.log_every == 0 or st["step"] == self.total:
                    self._log_train(acc, epoch, bar)
                    acc = [0.0, 0.0, 0]
                if t.checkpoint_every and st["step"] % t.checkpoint_every == 0 and st["step"] < self.total:
                    self._checkpoint()
            if st["micro"] >= self.micro_per_epoch:
                st["epoch"], st["micro"] = epoch + 1, 0
                self._validate(epoch)
                if st["step"] < self.total:
                    self._checkpoint()
            last_time = time.perf_counter()
        bar.close()
        if st["last_val"].get("step") != st["step"]:
            self._validate(st["epoch"])
        st["train_time_s"] = self._elapsed()
        return self._finish(peak)

    def _log_train(self, acc: list[Any], epoch: int, bar: Any) -> None:
        n = max(acc[2], 1)
        task, aux = float(acc[0]) / n, float(acc[1]) / n
        self.log.record(
            {
                "step": self.state["step"],
                "epoch": epoch,
                "lr": self.lr,
                "loss": task + aux,
                "loss/task": task,
                "loss/aux": aux,
            }
        )
        bar.set_postfix(loss=f"{task + aux:.4f}", aux=f"{aux:.3g}")

    def _validate(self, epoch: int) -> None:
        st = self.state
        if self.val_loader is None:
            return
        if self.env.is_main:
            res = self._eval(self.val_loader, f"val e{epoch}")
            st["last_val"] = {"step": st["step"], **res}
            main = self.data.metrics[0]
            if not st["best"] or res[main] > st["best"][main]:
                st["best"] = {"step": st["step"], **res}
            self.log.record({"step": st["step"], "epoch": epoch, **{f"val/{k}": v for k, v in res.items()}})
        st["last_val"], st["best"] = D.broadcast((st["last_val"], st["best"]), self.env)

    def _elapsed(self) -> float:
        return self.time_before + time.perf_counter() - self.t0

    def _checkpoint(self) -> None:
        st = {**self.state, "train_time_s": self._elapsed()}
        # mid-epoch, a resumed run re-creates the epoch's loader iterator from the epoch-start generator state
        gen = self.loader_gen.get_state() if st["micro"] == 0 else self.epoch_gen_state
        save_checkpoint(
            self.out, self.model, self.opt, self.sched, st, gen, self.t.keep_checkpoints, self.env
        )

    def _finish(self, peak: measure.PeakMemory | None) -> dict[str, Any]:
        st, t, data = self.state, self.t, self.data
        summary: dict[str, Any] = {
            **self.report,
            "num_labels": data.num_labels,
            "steps": st["step"],
            "epochs": self.epochs,
            "world_size": self.env.world_size,
            "train_time_s": st["train_time_s"],
        }
        test = eval_loader(data, "test", t.eval_batch_size, t.num_workers)
        loader = self.val_loader if t.eval_split == "val" else test
        if self.env.is_main:
            if t.eval_split == "val" and st["last_val"]:
                res = {k: v for k, v in st["last_val"].items() if k != "step"}
            else:
                res = self._eval(loader, f"eval {t.eval_split}")
            summary.update({f"eval/{k}": v for k, v in res.items()})
            summary["eval_split"] = t.eval_split
            summary.update(val_summary(st["last_val"], st["best"]))
            times = st["step_times"][WARMUP_STEPS:] or st["step_times"]
            summary["step_time_s"] = statistics.median(times) if times else float("nan")
            if "saved_activation_bytes" in st:
                summary["saved_activation_bytes"] = st["saved_activation_bytes"]
            if peak is not None:
                summary["peak_memory_bytes"] = peak.peak_bytes()
            if t.measure_density and loader is not None:
                summary.update(measure.density(self.model, loader, pad_key=data.pad_key))
            self.log.record(
                {"step": st["step"], **{k: v for k, v in summary.items() if k.startswith("eval/")}}
            )
            pk.save_adapter(self.model, self.out / "adapter")
            self.log.summary(summary)
        self.log.close()
        return D.broadcast(summary, self.env)
