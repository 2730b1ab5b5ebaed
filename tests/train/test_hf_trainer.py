"""HF Trainer integration: the aux loss of an AuxLossModule reaches the Trainer's loss and is logged."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import toytask
from torch import nn

import peftkit as pk


class Penalty(nn.Module):
    """A toy AuxLossModule: aux = 0.5 * w^2, so its gradient is the only thing that moves ``w``."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(2.0))

    def aux_loss(self) -> torch.Tensor:
        return 0.5 * self.w**2


def _train(tmp_path: Path, trainer_cls: type, with_penalty: bool) -> tuple[list[dict[str, float]], nn.Module]:
    from transformers import TrainingArguments

    data = toytask.toy_tokens(n_train=16, n_val=0, n_test=4)
    model = pk.load_backbone("tiny_bert", num_labels=3)
    if with_penalty:
        model.add_module("penalty", Penalty())
    args = TrainingArguments(
        output_dir=str(tmp_path / trainer_cls.__name__),
        use_cpu=True,
        report_to=[],
        disable_tqdm=True,
        max_steps=2,
        per_device_train_batch_size=4,
        logging_steps=1,
        learning_rate=0.1,
        save_strategy="no",
        seed=0,
        max_grad_norm=0.0,
    )
    trainer = trainer_cls(model=model, args=args, train_dataset=list(data.train), data_collator=data.collate)
    trainer.train()
    return [h for h in trainer.state.log_history if "loss" in h], model


def test_aux_loss_reaches_trainer_loss(tmp_path: Path) -> None:
    from transformers import Trainer

    from peftkit.train.hf_trainer import PeftkitTrainer

    plain, _ = _train(tmp_path, Trainer, with_penalty=False)
    ours, model = _train(tmp_path, PeftkitTrainer, with_penalty=True)
    assert len(plain) == len(ours) == 2
    assert ours[0]["aux_loss"] == pytest.approx(0.5 * 2.0**2)
    for p, o in zip(plain, ours):
        # the task part is identical (the penalty does not touch the forward); the rest is the aux term
        assert o["loss"] - p["loss"] == pytest.approx(o["aux_loss"], abs=2e-4)  # Trainer rounds to 4 digits
    assert float(model.penalty.w.detach()) < 2.0 - 1e-3  # trained through the aux gradient only
    assert ours[1]["aux_loss"] < ours[0]["aux_loss"]
