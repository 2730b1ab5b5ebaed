"""MEFT under DDP (torchrun, 2 CPU processes, gloo): the adapter gradients DDP averages equal one process's
gradients on the full batch. The reversible Function returns the adapters' gradients as its own, so DDP's
reducer hooks fire for them like for any other parameter."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = r'''
import os, sys, torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
torch.set_num_threads(1)
sys.path.insert(0, os.environ["PEFTKIT_TEST_DIR"])
from test_meft_ddp import build, batch

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
model = DDP(build())
ids, mask, labels = batch()
part = slice(rank * ids.shape[0] // world, (rank + 1) * ids.shape[0] // world)
logits = model(input_ids=ids[part], attention_mask=mask[part]).logits
torch.nn.functional.cross_entropy(logits, labels[part]).backward()
if rank == 0:
    grads = {n: p.grad for n, p in model.module.named_parameters() if p.requires_grad}
    torch.save(grads, sys.argv[1])
dist.barrier()
dist.destroy_process_group()
# Skip interpreter teardown: gloo's worker threads can abort in C++ static destructors at exit
# ("terminate called without an active exception") after all the work is done and saved.
sys.stdout.flush()
os._exit(0)
'''


def build() -> torch.nn.Module:
    import peftkit as pk

    model = pk.load_backbone("tiny_bert", num_labels=3, seed=0).double()
    torch.manual_seed(0)
    return pk.apply(model, pk.MEFT(variant="meft1", adapter_init_std=0.3))


def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(5, 1000, (4, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[3, 7:] = 0
    return ids, mask, torch.tensor([0, 2, 1, 2])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_two_processes_match_one(tmp_path: Path) -> None:
    script, out = tmp_path / "worker.py", tmp_path / "grads.pt"
    script.write_text(WORKER)
    env = dict(os.environ, PEFTKIT_TEST_DIR=str(Path(__file__).parent), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", str(script), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = torch.load(out)

    model = build()
    ids, mask, labels = batch()
    torch.nn.functional.cross_entropy(model(input_ids=ids, attention_mask=mask).logits, labels).backward()
    ref = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert ddp.keys() == ref.keys() and any("couplings" in n for n in ref)
    assert max((ddp[n] - ref[n]).abs().max().item() for n in ref) <= 1e-12
