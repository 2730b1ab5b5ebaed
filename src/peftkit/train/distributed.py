"""Scale-out with PyTorch's own engine: ``torchrun --nproc_per_node=N -m peftkit.cli train CONFIG``.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; we open a process group (gloo on
CPU, NCCL on CUDA), wrap the model in DDP (``find_unused_parameters=False``: every trainable parameter of a
method stack takes part in each forward), shard the data with a DistributedSampler and save / log / evaluate
on rank 0 only. Without torchrun everything here is a no-op (world size 1).

FSDP2 (``torch.distributed.fsdp.fully_shard``) for your own loop: :func:`shard` shards every block of every
stack and then the root (each rank keeps 1/N of every parameter, frozen base included; gradients are
reduce-scattered, so N processes on N slices of a batch train as one process on the whole batch),
:func:`full_adapter_state` gathers the trained tensors (a collective: every rank calls it) and
:func:`save_adapter_sharded` writes them as ``pk.save_adapter`` does, from rank 0. ``peftkit train`` itself
uses DDP: its evaluation and checkpoints run on rank 0 alone, which a sharded model cannot do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from peftkit.core.checkpoint import (
    CONFIG_NAME,
    FORMAT,
    WEIGHTS_NAME,
    adapter_state_dict,
    checkpoint_config,
    write_tensor_dir,
)
from peftkit.core.errors import ConfigError, UnsupportedError
from peftkit.core.spec import get_spec
from peftkit.core.state import get_state


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device is '{name}' but CUDA is not available; use device=cpu or auto")
    if name == "cuda":
        return torch.device(f"cuda:{local_rank}")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device '{name}' is not a device (auto, cpu, cuda, cuda:N)") from None


def setup(device: str = "auto") -> DistEnv:
    """Join the torchrun process group if there is one; returns this process's place in it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv(device=pick_device(device))
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local)
    if not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistEnv(rank=rank, world_size=world, local_rank=local, device=dev)


def teardown(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.barrier()  # no rank tears gloo down while a peer is still sending
        dist.destroy_process_group()


def wrap(model: nn.Module, env: DistEnv) -> nn.Module:
    """DDP around ``model`` when distributed (parameters are broadcast from rank 0 at construction)."""
    if not env.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [env.device.index] if env.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=False)


_ADAPTER_NAMES = "peftkit_sharded_adapter_names"


def shard(model: nn.Module, reshard_after_forward: bool = True) -> nn.Module:
    """FSDP2 in place: ``fully_shard`` each block of every stack of the model's spec, then the root.

    Call it under torchrun after ``pk.apply`` (a method's modules inside the blocks are sharded with them) and
    build the optimizer afterwards, on the model's now sharded (DTensor) parameters.
    """
    from torch.distributed.fsdp import fully_shard

    state = get_state(model)
    wrapping = state.wraps_blocks() if state is not None else []
    if wrapping:
        raise UnsupportedError(
            f"FSDP2 cannot shard a model with {', '.join(wrapping)}: these methods run their blocks' weights "
            "outside the block forwards FSDP2 hooks (MEFT's reversible backward); use DDP (peftkit train)"
        )
    # fully_shard swaps every parameter for a new DTensor one: keep the names of what the methods train
    object.__setattr__(model, _ADAPTER_NAMES, tuple(adapter_state_dict(model)))
    for path in get_spec(model).block_paths(model):
        fully_shard(model.get_submodule(path), reshard_after_forward=reshard_after_forward)
    fully_shard(model, reshard_after_forward=reshard_after_forward)
    return model


def full_adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``adapter_state_dict`` with every sharded tensor gathered whole (all ranks must call this)."""
    names = getattr(model, _ADAPTER_NAMES, None)
    if names is None:
        tensors = adapter_state_dict(model)
    else:
        wanted = set(names)
        tensors = {n: t for n, t in [*model.named_parameters(), *model.named_buffers()] if n in wanted}
    out = {}
    for name, t in tensors.items():
        full = t.full_tensor() if hasattr(t, "full_tensor") else t   # DTensor -> all-gather
        out[name] = full.detach().contiguous().cpu()
    return out


def save_adapter_sharded(model: nn.Module, path: str, env: DistEnv) -> None:
    """``pk.save_adapter`` of an FSDP2-sharded model: every rank gathers, rank 0 writes (atomically)."""
    from pathlib import Path

    tensors = full_adapter_state(model)
    if env.is_main:
        cfg = checkpoint_config(model)
        cfg["tensors"] = {k: list(v.shape) for k, v in tensors.items()}
        write_tensor_dir(Path(path), {WEIGHTS_NAME: tensors}, {CONFIG_NAME: cfg}, FORMAT)
    barrier(env)


def unwrap(model: nn.Module) -> nn.Module:
    return (
        model.module
        if hasattr(model, "module") and type(model).__name__ == "DistributedDataParallel"
        else model
    )


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def broadcast(obj: Any, env: DistEnv) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not env.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_true(flag: bool, env: DistEnv) -> bool:
    """Whether ``flag`` holds on every rank (used to stop all ranks together)."""
    if not env.distributed:
        return flag
    t = torch.tensor([int(flag)], device=env.device if env.device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())
