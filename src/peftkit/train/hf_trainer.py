"""Training with Hugging Face's ``Trainer``: add ``pk.aux_loss`` (e.g. DEFT's density term) to its loss.

    from peftkit.train.hf_trainer import PeftkitTrainer
    model = pk.apply(pk.load_backbone("minilm", num_labels=5), [pk.LoRA(rank=8), pk.DEFT()])
    trainer = PeftkitTrainer(model=model, args=TrainingArguments(...), train_dataset=..., data_collator=...)
    trainer.train()    # logs "aux_loss" next to "loss"; the reported loss includes it

Saving: ``save_model`` and every Trainer checkpoint write what ``pk.save_adapter`` writes (the method
parameters, the trained head, the class names; strict to load back) into the folder, plus the same adapter
in HF peft's own format under ``peft/`` when the stack allows (``pk.export_peft``: one LoRA / DoRA / IA3 and
parameter-free methods). Never the whole model under peft's renamed keys, which ``from_pretrained`` would
silently re-initialise. ``trainer.train(resume_from_checkpoint=...)`` and ``load_best_model_at_end`` read
the peftkit adapter back with ``pk.load_adapter``'s checks.

The aux term is a per-forward mean, like an ordinary task loss. When the Trainer already normalises the
task loss over the whole accumulated batch (models that take ``num_items_in_batch``), the aux term is
divided by the number of accumulation steps so it is not counted once per micro-batch. Evaluation losses
are the task loss alone.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import Trainer

from peftkit.core.apply import aux_loss
from peftkit.core.checkpoint import CONFIG_NAME, FORMAT, WEIGHTS_NAME, load_adapter, save_adapter
from peftkit.core.errors import UnsupportedError
from peftkit.core.io import atomic_dir, commit_dir
from peftkit.core.state import get_state
from peftkit.methods.hf_peft.export import export_peft

PEFT_SUBDIR = "peft"   # the HF peft export inside a saved folder


def save_adapter_into(model: nn.Module, folder: str | os.PathLike[str]) -> Path:
    """Write ``pk.save_adapter``'s two files into ``folder`` (which may hold other files: a Trainer
    checkpoint's optimizer state), each replaced atomically, plus ``folder/peft`` when the stack exports."""
    folder = Path(folder)
    tmp = atomic_dir(folder / ".adapter")
    try:
        save_adapter(model, tmp / "pk")
        for name in (WEIGHTS_NAME, CONFIG_NAME):   # the config last: it marks the folder as an adapter
            os.replace(tmp / "pk" / name, folder / name)
        try:
            export_peft(model, tmp / PEFT_SUBDIR)
            commit_dir(tmp / PEFT_SUBDIR, folder / PEFT_SUBDIR)
        except UnsupportedError:
            pass   # e.g. bottleneck adapters, MEFT: peft has no format for them; the peftkit files suffice
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def is_peftkit_adapter(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` holds a ``pk.save_adapter`` checkpoint (not HF peft's files of the same name)."""
    path = Path(folder) / CONFIG_NAME
    try:
        return path.is_file() and json.loads(path.read_text()).get("format") == FORMAT
    except (OSError, ValueError):
        return False


class PeftkitTrainer(Trainer):
    """``transformers.Trainer`` whose training loss is ``task loss + pk.aux_loss(model)``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._aux_sum: torch.Tensor | None = None
        self._aux_count = 0

    def _loss_scaled_for_ga(self, num_items_in_batch: Any) -> bool:
        flag = getattr(self, "loss_is_scaled_for_ga", None)
        if flag is not None:
            return bool(flag)
        accepts = getattr(self, "model_accepts_loss_kwargs", False)
        return bool(accepts and num_items_in_batch is not None) or self.compute_loss_func is not None

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        loss, outputs = super().compute_loss(
            model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
        )
        if model.training:
            aux = aux_loss(self.accelerator.unwrap_model(model))
            detached = aux.detach().float()
            self._aux_sum = detached if self._aux_sum is None else self._aux_sum + detached
            self._aux_count += 1
            if self._loss_scaled_for_ga(num_items_in_batch):
                aux = aux / max(int(getattr(self, "current_gradient_accumulation_steps", 1) or 1), 1)
            loss = loss + aux.to(loss.dtype)
        return (loss, outputs) if return_outputs else loss

    def _peftkit_model(self) -> nn.Module | None:
        model = self.accelerator.unwrap_model(self.model)
        return model if get_state(model) is not None else None

    def _save(self, output_dir: str | None = None, state_dict: dict[str, Any] | None = None) -> None:
        """The adapter (``pk.save_adapter`` + peft export), the tokenizer if any; not the whole model."""
        model = self._peftkit_model()
        if model is None:
            super()._save(output_dir, state_dict)
            return
        if not self.args.should_save:
            return
        folder = Path(output_dir if output_dir is not None else self.args.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        save_adapter_into(model, folder)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(str(folder))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        target = model if model is not None else self._peftkit_model()
        if target is not None and is_peftkit_adapter(resume_from_checkpoint):
            load_adapter(self.accelerator.unwrap_model(target), resume_from_checkpoint)
            return
        super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_best_model(self) -> None:
        best = self.state.best_model_checkpoint
        model = self._peftkit_model()
        if model is not None and best is not None and is_peftkit_adapter(best):
            load_adapter(model, best)
            return
        super()._load_best_model()

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if "loss" in logs and self._aux_count:
            logs["aux_loss"] = float(
                self._aux_sum / self._aux_count
            )  # mean over the micro-batches since the last log
            self._aux_sum, self._aux_count = None, 0
        super().log(logs, *args, **kwargs)


__all__ = ["PeftkitTrainer", "save_adapter_into", "is_peftkit_adapter"]
