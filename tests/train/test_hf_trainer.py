"""HF Trainer integration: the aux loss of an AuxLossModule reaches the Trainer's loss and is logged."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import toytask
from torch import nn

import peftkit as pk
from peftkit.core.state import get_state


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


def _lora_trainer(out: Path, max_steps: int) -> object:
    from transformers import TrainingArguments

    from peftkit.train.hf_trainer import PeftkitTrainer

    data = toytask.toy_tokens(n_train=32, n_val=0, n_test=4)
    model = pk.apply(pk.load_backbone("tiny_bert", num_labels=3), [pk.LoRA(rank=4), pk.DEFT()])
    args = TrainingArguments(
        output_dir=str(out), use_cpu=True, report_to=[], disable_tqdm=True, max_steps=max_steps,
        per_device_train_batch_size=4, learning_rate=0.05, save_strategy="steps", save_steps=2, seed=0,
        logging_steps=1, dataloader_num_workers=0,
    )
    return PeftkitTrainer(model=model, args=args, train_dataset=list(data.train), data_collator=data.collate)


def _adapter(model: nn.Module) -> dict[str, torch.Tensor]:
    from peftkit.core.checkpoint import adapter_state_dict

    return {k: v.detach().clone() for k, v in adapter_state_dict(model).items()}


def test_trainer_checkpoints_are_peftkit_adapters_and_resume_bit_identically(tmp_path: Path) -> None:
    from peft import PeftModel

    full = _lora_trainer(tmp_path / "full", max_steps=4)
    full.train()
    final = _adapter(full.model)

    ckpt = tmp_path / "full" / "checkpoint-2"
    names = sorted(p.name for p in ckpt.iterdir())
    assert "adapter_config.json" in names and "adapter_model.safetensors" in names and "peft" in names
    assert not any(n.startswith(("model.", "pytorch_model")) for n in names)     # never the whole model
    # the checkpoint is what pk.save_adapter writes: it loads strictly into a fresh model
    fresh = pk.load_adapter(pk.load_backbone("tiny_bert", num_labels=3), ckpt)
    assert get_state(fresh).method_names() == ["lora", "deft"]
    # and peft reads the export beside it (DEFT recorded, not needed at inference)
    data = toytask.toy_tokens(n_train=4, n_val=0, n_test=4)
    batch = data.collate(list(data.train))
    batch.pop("labels")
    peft_model = PeftModel.from_pretrained(pk.load_backbone("tiny_bert", num_labels=3), str(ckpt / "peft"))
    with torch.no_grad():
        torch.testing.assert_close(peft_model(**batch).logits, fresh(**batch).logits, rtol=0, atol=1e-6)

    resumed = _lora_trainer(tmp_path / "resumed", max_steps=4)
    with torch.no_grad():   # scramble the adapter and head: what the resumed run trains must come from ckpt
        for p in resumed.model.parameters():
            if p.requires_grad:
                p.normal_()
    resumed.train(resume_from_checkpoint=str(ckpt))
    got = _adapter(resumed.model)
    assert got.keys() == final.keys()
    for k in final:
        assert torch.equal(got[k], final[k]), k

    resumed.save_model(str(tmp_path / "final"))
    again = pk.load_adapter(pk.load_backbone("tiny_bert", num_labels=3), tmp_path / "final")
    assert all(torch.equal(v, final[k]) for k, v in _adapter(again).items())


def test_trainer_without_peftkit_methods_saves_as_transformers_does(tmp_path: Path) -> None:
    from transformers import TrainingArguments

    from peftkit.train.hf_trainer import PeftkitTrainer

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], save_strategy="no")
    trainer = PeftkitTrainer(model=pk.load_backbone("tiny_bert", num_labels=3), args=args)
    trainer.save_model(str(tmp_path / "plain"))
    assert (tmp_path / "plain" / "model.safetensors").is_file()
