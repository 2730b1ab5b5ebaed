"""Build a run's pieces from its config: data, backbone + method stack, data loaders, seeds.

The train order comes from a DistributedSampler in every case (one process is world size 1), so a run
under ``torchrun --nproc_per_node=N`` sees the same global batches as a single process: rank r of step k
holds examples ``perm[k*B + r :: N]`` of the epoch's permutation, B the global batch.
"""

from __future__ import annotations

import contextlib
import itertools
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

import peftkit as pk
from peftkit.core.errors import ConfigError, DataError, PeftkitError
from peftkit.core.labels import set_label_names
from peftkit.core.registry import get_dataset
from peftkit.data.base import TaskData
from peftkit.train.config import RunConfig
from peftkit.train.distributed import DistEnv
from peftkit.train.evaluate import logits_of, split_batch, task_loss


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_data(cfg: RunConfig) -> TaskData:
    """Call the dataset builder: ``builder(backbone=..., seed=..., **data kwargs)``."""
    builder = get_dataset(cfg.data.name)
    try:
        data = builder(backbone=cfg.backbone.name, seed=cfg.seed, **cfg.data.kwargs)
    except TypeError as e:
        if "unexpected keyword argument" in str(e):
            raise ConfigError(f"data '{cfg.data.name}': {e}") from None
        raise
    if not isinstance(data, TaskData):
        raise TypeError(f"dataset builder '{cfg.data.name}' returned {type(data).__name__}, not TaskData")
    if len(data.train) == 0 or len(data.test) == 0:
        raise DataError(f"data '{cfg.data.name}' has an empty train or test split")
    return data


def build_model(cfg: RunConfig, data: TaskData) -> nn.Module:
    """The backbone with ``num_labels`` from the data, and the method stack applied (frozen elsewhere)."""
    try:
        model = pk.load_backbone(
            cfg.backbone.name, task=cfg.backbone.task, num_labels=data.num_labels, **cfg.backbone.kwargs
        )
    except TypeError as e:
        if "unexpected keyword argument" in str(e):
            raise ConfigError(f"backbone '{cfg.backbone.name}': {e}") from None
        raise
    if data.label_names:   # recorded in adapter_config.json (id2label) for `peftkit predict`
        set_label_names(model, data.label_names)
    return pk.apply(model, cfg.method_configs())


class ResumableSampler(DistributedSampler[Any]):
    """DistributedSampler that can start mid-epoch (``skip`` indices of this rank), for resuming."""

    def __init__(
        self, dataset: Dataset[Any], world_size: int, rank: int, seed: int, shuffle: bool = True
    ) -> None:
        super().__init__(
            dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=False
        )
        self.skip = 0

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.skip, None)

    def __len__(self) -> int:
        return super().__len__() - self.skip


def train_loader(
    data: TaskData, per_rank_batch: int, seed: int, env: DistEnv, num_workers: int, generator: torch.Generator
) -> tuple[DataLoader[Any], ResumableSampler]:
    """This rank's train loader: the shared permutation of ``seed`` + epoch, every world_size-th index."""
    sampler = ResumableSampler(data.train, env.world_size, env.rank, seed)
    loader = DataLoader(
        data.train,
        batch_size=per_rank_batch,
        sampler=sampler,
        collate_fn=data.collate,
        num_workers=num_workers,
        generator=generator,
        worker_init_fn=_seed_worker,
    )
    return loader, sampler


def eval_loader(data: TaskData, split: str, batch_size: int, num_workers: int) -> DataLoader[Any] | None:
    ds = data.val if split == "val" else data.test
    if ds is None or len(ds) == 0:
        return None
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=False,
        collate_fn=data.eval_collate or data.collate,
        num_workers=num_workers,
    )


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader generator; python / numpy follow it (per rank: see loop.run).
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)


VOCAB_SCAN_EXAMPLES = 2000  # train examples whose token ids are checked against the embedding table up front


@contextlib.contextmanager
def _rng_untouched() -> Iterator[None]:
    """Run a block without moving any global random stream (python, numpy, torch CPU / CUDA)."""
    py, npy = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


def preflight(model: nn.Module, data: TaskData, device: torch.device, cfg: RunConfig) -> None:
    """Check, before a run writes anything, that the model takes the data: token ids fit the embedding
    table, and one forward + task loss on two train examples works (eval mode, no grad, no RNG drawn).

    Raises:
        ConfigError: the data does not fit the backbone / method stack (one line naming both).
    """
    was_training = model.training
    model.eval()
    try:
        with _rng_untouched(), torch.no_grad():  # datasets may augment with the global RNG
            first = data.train[0]
            if isinstance(first, dict) and isinstance(first.get("input_ids"), list):
                scan = range(min(len(data.train), VOCAB_SCAN_EXAMPLES))
                top = max(max(data.train[i]["input_ids"], default=0) for i in scan)
                check_vocab(model, {"input_ids": torch.tensor([top])})
            examples = [data.train[i] for i in range(min(2, len(data.train)))]
            inputs, labels = split_batch(data.collate(examples), device)
            check_vocab(model, inputs)
            task_loss(logits_of(model(**inputs)), labels, data.num_labels)
    except PeftkitError:
        raise
    except Exception as e:  # the data's batch does not fit this model
        names = "+".join(str(m["name"]) for m in cfg.methods)
        line = (str(e).strip().splitlines() or [""])[0][:200]
        raise ConfigError(
            f"backbone '{cfg.backbone.name}' with methods [{names}] cannot take a batch of data "
            f"'{cfg.data.name}' ({type(e).__name__}: {line}); check that the data is meant for this backbone"
        ) from None
    finally:
        model.train(was_training)


def check_vocab(model: nn.Module, inputs: dict[str, torch.Tensor]) -> None:
    """A token id beyond the embedding table means the tokenizer does not belong to this backbone."""
    ids = inputs.get("input_ids")
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if ids is not None and vocab is not None and ids.numel() and int(ids.max()) >= vocab:
        raise ConfigError(
            f"token id {int(ids.max())} >= the backbone's vocab_size {vocab}: the data was "
            "tokenised for another backbone (tiny_bert: set backbone.vocab_size=30522)"
        )
