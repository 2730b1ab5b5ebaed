"""Training checkpoints: ``OUT_DIR/checkpoints/step_N/`` written atomically, the last K kept.

A checkpoint holds what an interrupted run needs to continue to the same result as an uninterrupted one:

    adapter/              pk.save_adapter (method parameters, head, method buffers)
    optimizer.pt          AdamW state
    scheduler.pt          LambdaLR state
    rng_rank<R>.pt        python / numpy / torch (CPU, CUDA) generators and the DataLoader generator, per rank
    trainer_state.json    step, epoch, micro-batches done in the epoch, best / last validation metrics

Everything is read back with ``torch.load(weights_only=True)``; the directory is assembled under a temporary
name and renamed into place, so a killed run never leaves a half-written ``step_N``.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from peftkit.core.checkpoint import load_adapter, save_adapter
from peftkit.core.errors import CheckpointError
from peftkit.core.io import atomic_dir, commit_dir
from peftkit.train.distributed import DistEnv, barrier, broadcast

CKPT = "checkpoints"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def new_trainer_state(world_size: int) -> dict[str, Any]:
    """The bookkeeping a checkpoint carries (JSON): position, validation results, step times."""
    return {
        "step": 0,
        "epoch": 0,
        "micro": 0,
        "world_size": world_size,
        "best": {},
        "last_val": {},
        "step_times": [],
        "train_time_s": 0.0,
    }


def rng_state(loader_state: torch.Tensor) -> dict[str, Any]:
    """Every random generator the run draws from, as tensors and plain numbers (weights_only-loadable).

    ``loader_state`` is the DataLoader generator's state at the start of the current epoch, from which a
    resumed epoch re-creates its iterator.
    """
    version, internal, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
        "loader": loader_state,
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], loader_gen: torch.Generator) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["internal"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    torch.set_rng_state(state["torch"])
    loader_gen.set_state(state["loader"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def list_checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of the complete checkpoints under ``out_dir``, oldest first."""
    root = Path(out_dir) / CKPT
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return sorted(found)


def save_checkpoint(
    out_dir: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    trainer_state: dict[str, Any],
    loader_state: torch.Tensor,
    keep: int,
    env: DistEnv,
) -> Path:
    """Write ``checkpoints/step_<step>`` (all ranks call this; rank 0 writes the shared files)."""
    final = Path(out_dir) / CKPT / f"step_{trainer_state['step']}"
    tmp = Path(broadcast(str(atomic_dir(final)) if env.is_main else None, env))
    try:  # any failure (a full disk, a kill) removes the temporary directory: step_N appears whole or not
        torch.save(rng_state(loader_state), tmp / f"rng_rank{env.rank}.pt")
        barrier(env)
        if env.is_main:
            save_adapter(model, tmp / "adapter")
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=1))
            commit_dir(tmp, final)
    except BaseException:
        if env.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if env.is_main:
        for _, old in list_checkpoints(out_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier(env)
    return final


def _load(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{path} not found: the checkpoint is incomplete")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle / zip errors: a corrupt or foreign file
        if "Weights only load failed" in str(e) or "Unsupported global" in str(e):
            raise CheckpointError(
                f"{path} cannot be read: it holds more than tensors and plain values and is refused (it "
                "could run code); resume from another checkpoint or start a new run"
            ) from None
        raise CheckpointError(
            f"{path} cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:160]})"
        ) from None


def load_checkpoint(
    run_dir: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    loader_gen: torch.Generator,
    env: DistEnv,
) -> dict[str, Any]:
    """Restore the newest checkpoint of ``run_dir`` into the given objects; returns its trainer state.

    Raises:
        CheckpointError: no checkpoint, missing or corrupt files, another backbone / method stack, or a
            different number of processes.
    """
    found = list_checkpoints(run_dir)
    if not found:
        raise CheckpointError(
            f"no checkpoint under {Path(run_dir) / CKPT}: nothing to resume "
            "(set train.checkpoint_every, or resume a run that finished an epoch)"
        )
    path = found[-1][1]
    try:
        state = json.loads((path / "trainer_state.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(
            f"{path}/trainer_state.json cannot be read ({e}); the checkpoint is corrupt"
        ) from None
    if state.get("world_size", 1) != env.world_size:
        raise CheckpointError(
            f"{path} was written by {state.get('world_size', 1)} process(es); resume it with the "
            f"same number (this run has {env.world_size})"
        )
    load_adapter(model, path / "adapter")
    try:
        optimizer.load_state_dict(_load(path / "optimizer.pt"))
        scheduler.load_state_dict(_load(path / "scheduler.pt"))
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: optimizer state does not fit this model ({e})") from None
    set_rng_state(_load(path / f"rng_rank{env.rank}.pt"), loader_gen)
    return state
