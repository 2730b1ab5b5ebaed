"""Training with Hugging Face's ``Trainer``: add ``pk.aux_loss`` (e.g. DEFT's density term) to its loss.

    from peftkit.train.hf_trainer import PeftkitTrainer
    model = pk.apply(pk.load_backbone("minilm", num_labels=5), [pk.LoRA(rank=8), pk.DEFT()])
    trainer = PeftkitTrainer(model=model, args=TrainingArguments(...), train_dataset=..., data_collator=...)
    trainer.train()    # logs "aux_loss" next to "loss"; the reported loss includes it

The aux term is a per-forward mean, like an ordinary task loss. When the Trainer already normalises the
task loss over the whole accumulated batch (models that take ``num_items_in_batch``), the aux term is
divided by the number of accumulation steps so it is not counted once per micro-batch. Evaluation losses
are the task loss alone.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import Trainer

from peftkit.core.apply import aux_loss


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

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if "loss" in logs and self._aux_count:
            logs["aux_loss"] = float(
                self._aux_sum / self._aux_count
            )  # mean over the micro-batches since the last log
            self._aux_sum, self._aux_count = None, 0
        super().log(logs, *args, **kwargs)


__all__ = ["PeftkitTrainer"]
