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
from peftkit.core.io import atomic_write_text
from peftkit.train import distributed, measure
from peftkit.train.build import (
    build_data,
    build_model,
    check_vocab,
    eval_loader,
    preflight,
    seed_everything,
    train_loader,
)
from peftkit.train.checkpointing import load_checkpoint, new_trainer_state, save_checkpoint
from peftkit.train.config import RunConfig, dump_config, load_config
from peftkit.train.evaluate import evaluate, logits_of, split_batch, task_loss
from peftkit.train.optim import build_optimizer, build_scheduler, clip_grad
from peftkit.train.plots import plot_metrics
from peftkit.train.resume import resumed_config
from peftkit.train.rundir import RunLock, check_out_dir, clean_run_orphans, start_run_dir
from peftkit.train.runlog import RunLog, val_summary

WARMUP_STEPS = 3  # steps left out of the median step time (allocator, first-batch effects)


def run(
    cfg: RunConfig, resume: str | None = None, progress: bool = True, overwrite: bool = False
) -> dict[str, Any]:
    """Train, evaluate and save one run.

    Args:
        cfg: the run config (``peftkit.train.config.load_config``).
        resume: a run directory to continue from its newest checkpoint (its files are written there);
            ``cfg`` may change only the resumable keys of ``peftkit.train.resume.RESUMABLE``.
        progress: show tqdm bars (rank 0 only).
        overwrite: write into a non-empty ``out_dir`` that is not a peftkit run (only the run's own file
            names are replaced there).

    Returns:
        The summary written to ``OUT_DIR/metrics.json`` (the same dict on every rank).

    Raises:
        PeftkitError: bad config, data, out_dir or checkpoint; config, out_dir, data, backbone, method stack
            and one forward are all checked before ``out_dir`` is created or changed.
    """
    env = distributed.setup(cfg.train.device)
    threads = torch.get_num_threads()
    try:
        with contextlib.ExitStack() as locks:
            return _Run(cfg, env, resume, progress, overwrite, locks).train()
    finally:
        torch.set_num_threads(threads)  # train.threads applies to this run only
        distributed.teardown(env)


class _Run:
    def __init__(
        self,
        cfg: RunConfig,
        env: distributed.DistEnv,
        resume: str | None,
        progress: bool,
        overwrite: bool,
        locks: contextlib.ExitStack,
    ) -> None:
        changed: list[str] = []
        if resume is not None:
            check_out_dir(str(resume), resume=True)
            cfg, changed = resumed_config(load_config(Path(resume) / "config.yaml"), cfg, str(resume))
        else:
            check_out_dir(cfg.out_dir, overwrite=overwrite)
        opts = cfg.train
        if opts.batch_size % env.world_size:
            raise ConfigError(
                f"train.batch_size {opts.batch_size} (the global batch) must divide evenly over "
                f"{env.world_size} processes"
            )
        if opts.threads:
            torch.set_num_threads(opts.threads)
        measure.check_hooks(opts.measure_density, opts.measure_memory)
        self.cfg, self.opts, self.env, self.progress = cfg, opts, env, progress and env.is_main
        self.out, self.dev = Path(cfg.out_dir), env.device
        seed_everything(cfg.seed)  # same model / method init on every rank
        self.data = build_data(cfg)
        self.model = build_model(cfg, self.data).to(self.dev)
        self.report = pk.param_report(self.model).as_dict()
        seed_everything(cfg.seed + env.rank)  # per-rank streams from here on (dropout, workers)
        self.loader_gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + env.rank)
        per_rank = opts.batch_size // env.world_size
        self.loader, self.sampler = train_loader(
            self.data, per_rank, cfg.seed, env, opts.num_workers, self.loader_gen
        )
        self.val_loader = eval_loader(self.data, "val", opts.eval_batch_size, opts.num_workers)
        if opts.eval_split == "val" and self.val_loader is None:
            raise ConfigError(f"train.eval_split is val but data '{cfg.data.name}' has no val split")
        self.micro_per_epoch = len(self.loader)
        self.steps_per_epoch = math.ceil(self.micro_per_epoch / opts.grad_accum)
        self.total = opts.max_steps or self.steps_per_epoch * opts.epochs
        self.epochs = math.ceil(self.total / self.steps_per_epoch)
        self.ddp = distributed.wrap(self.model, env)
        self.opt = build_optimizer(self.model, opts.lr, opts.weight_decay)
        self.sched = build_scheduler(self.opt, self.total, opts.warmup_ratio, opts.schedule)
        self.state = new_trainer_state(env.world_size)
        preflight(self.model, self.data, self.dev, cfg)
        # everything is checked: from here on the run owns out_dir
        if env.is_main:
            locks.enter_context(RunLock(self.out))
            clean_run_orphans(self.out)
        if resume is not None:
            self.state = load_checkpoint(self.out, self.model, self.opt, self.sched, self.loader_gen, env)
            if changed and env.is_main:  # config.yaml tells what the resumed run does
                atomic_write_text(self.out / "config.yaml", dump_config(cfg))
                print(f"peftkit: resuming {self.out} with changed {', '.join(changed)}")
        elif env.is_main:
            start_run_dir(self.out, dump_config(cfg))
        distributed.barrier(env)
        self.log = RunLog(self.out, env.is_main, opts.tensorboard)
        self.log.truncate(self.state["step"])  # records a killed run wrote after its last checkpoint
        self.epoch_gen_state = self.loader_gen.get_state()

    def _eval(self, loader: Any, desc: str) -> dict[str, float]:
        d = self.data
        return evaluate(
            self.model, loader, self.dev, d.num_labels, d.metrics, self.opts.bf16, self.progress, desc
        )

    # ---- one optimizer step ----------------------------------------------------------------------------

    def _micro(self, batch: dict[str, torch.Tensor], n: int, sync: bool) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, labels = split_batch(batch, self.dev)
        ctx = self.ddp.no_sync() if self.env.distributed and not sync else contextlib.nullcontext()
        with ctx:
            with torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=self.opts.bf16):
                task = task_loss(logits_of(self.ddp(**inputs)), labels, self.data.num_labels)
                aux = pk.aux_loss(self.model).float()
            ((task + aux) / n).backward()
        return task.detach(), aux.detach()

    def _step(self, group: list[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        task_sum = aux_sum = torch.zeros((), device=self.dev)
        for i, batch in enumerate(group):
            task, aux = self._micro(batch, len(group), sync=i == len(group) - 1)
            task_sum, aux_sum = task_sum + task, aux_sum + aux
        clip_grad(self.model.parameters(), self.opts.grad_clip)
        self.lr = self.opt.param_groups[0]["lr"]  # the rate this step used (logged)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        return task_sum / len(group), aux_sum / len(group)

    def _first_batch(self, batch: dict[str, torch.Tensor]) -> None:
        inputs, labels = split_batch(batch, self.dev)
        check_vocab(self.model, inputs)
        if self.opts.measure_memory and self.env.is_main:
            n, model = self.data.num_labels, self.model
            loss_fn = lambda out, *_: task_loss(logits_of(out), labels, n) + pk.aux_loss(model)  # noqa: E731
            batch = {**inputs, "labels": labels}
            self.state["saved_activation_bytes"] = measure.saved_activation_bytes(model, batch, loss_fn)

    # ---- the run -------------------------------------------------------------------------------------------

    def train(self) -> dict[str, Any]:
        state, opts = self.state, self.opts
        peak = measure.PeakMemory(self.dev) if opts.measure_memory else None
        self.ddp.train()
        bar = tqdm(total=self.total, initial=state["step"], desc="train", disable=not self.progress)
        # task-loss sum, aux-loss sum (device tensors: no host sync until a log step), steps since last log
        since_log: list[Any] = [0.0, 0.0, 0]
        first, last_time = state["step"] == 0, time.perf_counter()
        self.t0, self.time_before = last_time, state["train_time_s"]
        while state["epoch"] < self.epochs and state["step"] < self.total:
            epoch = state["epoch"]
            self.sampler.set_epoch(epoch)
            self.sampler.skip = state["micro"] * self.loader.batch_size
            if state["micro"] == 0:
                self.epoch_gen_state = self.loader_gen.get_state()
            batches = iter(self.loader)
            while state["step"] < self.total and (group := list(itertools.islice(batches, opts.grad_accum))):
                if first:
                    self._first_batch(group[0])
                    first = False
                task, aux = self._step(group)
                now = time.perf_counter()
                state["step_times"].append(now - last_time)
                last_time = now
                state["step"] += 1
                state["micro"] += len(group)
                since_log = [since_log[0] + task, since_log[1] + aux, since_log[2] + 1]
                bar.update(1)
                if state["step"] % opts.log_every == 0 or state["step"] == self.total:
                    self._log_train(since_log, epoch, bar)
                    since_log = [0.0, 0.0, 0]
                every = opts.checkpoint_every
                if every and state["step"] % every == 0 and state["step"] < self.total:
                    self._checkpoint()
            if state["micro"] >= self.micro_per_epoch:
                state["epoch"], state["micro"] = epoch + 1, 0
                self._validate(epoch)
                if state["step"] < self.total:
                    self._checkpoint()
            last_time = time.perf_counter()
        bar.close()
        if state["last_val"].get("step") != state["step"]:
            self._validate(state["epoch"])
        state["train_time_s"] = self._elapsed()
        return self._finish(peak)

    def _log_train(self, since_log: list[Any], epoch: int, bar: Any) -> None:
        n = max(since_log[2], 1)
        task, aux = float(since_log[0]) / n, float(since_log[1]) / n
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
        state = self.state
        if self.val_loader is None:
            return
        if self.env.is_main:
            res = self._eval(self.val_loader, f"val e{epoch}")
            state["last_val"] = {"step": state["step"], **res}
            main = self.data.metrics[0]
            if not state["best"] or res[main] > state["best"][main]:
                state["best"] = {"step": state["step"], **res}
            val = {f"val/{k}": v for k, v in res.items()}
            self.log.record({"step": state["step"], "epoch": epoch, **val})
        state["last_val"], state["best"] = distributed.broadcast((state["last_val"], state["best"]), self.env)

    def _elapsed(self) -> float:
        return self.time_before + time.perf_counter() - self.t0

    def _checkpoint(self) -> None:
        state = {**self.state, "train_time_s": self._elapsed()}
        # mid-epoch, a resumed run re-creates the epoch's loader iterator from the epoch-start generator state
        gen = self.loader_gen.get_state() if state["micro"] == 0 else self.epoch_gen_state
        save_checkpoint(
            self.out, self.model, self.opt, self.sched, state, gen, self.opts.keep_checkpoints, self.env
        )

    def _finish(self, peak: measure.PeakMemory | None) -> dict[str, Any]:
        state, opts, data = self.state, self.opts, self.data
        summary: dict[str, Any] = {
            **self.report,
            "num_labels": data.num_labels,
            "steps": state["step"],
            "epochs": self.epochs,
            "world_size": self.env.world_size,
            "train_time_s": state["train_time_s"],
        }
        test = eval_loader(data, "test", opts.eval_batch_size, opts.num_workers)
        loader = self.val_loader if opts.eval_split == "val" else test
        if self.env.is_main:
            if opts.eval_split == "val" and state["last_val"]:
                res = {k: v for k, v in state["last_val"].items() if k != "step"}
            else:
                res = self._eval(loader, f"eval {opts.eval_split}")
            summary.update({f"eval/{k}": v for k, v in res.items()})
            summary["eval_split"] = opts.eval_split
            summary.update(val_summary(state["last_val"], state["best"]))
            times = state["step_times"][WARMUP_STEPS:] or state["step_times"]
            summary["step_time_s"] = statistics.median(times) if times else float("nan")
            if "saved_activation_bytes" in state:
                summary["saved_activation_bytes"] = state["saved_activation_bytes"]
            if peak is not None:
                summary["peak_memory_bytes"] = peak.peak_bytes()
            if opts.measure_density and loader is not None:
                summary.update(measure.density(self.model, loader, pad_key=data.pad_key))
            self.log.record(
                {"step": state["step"], **{k: v for k, v in summary.items() if k.startswith("eval/")}}
            )
            pk.save_adapter(self.model, self.out / "adapter")
            self.log.summary(summary)
            plot_metrics(self.out)  # metrics.png: losses and validation metrics from metrics.jsonl
        self.log.close()
        return distributed.broadcast(summary, self.env)
