"""FSDP2 worker for tests/train/test_distributed.py: a few AdamW steps of one method on tiny_bert, run either
alone on the whole batch or under torchrun with the model sharded and the batch split over the ranks.

    python fsdp_worker.py METHOD OUT_DIR            one process, no sharding
    torchrun --nproc_per_node=2 fsdp_worker.py METHOD OUT_DIR     FSDP2 (gloo on CPU)
"""

from __future__ import annotations

import os
import sys

import torch

import peftkit as pk
from peftkit.train import distributed as D

METHODS = {"lora": lambda: pk.LoRA(rank=4), "adapter": lambda: pk.Adapter(kind="houlsby"),
           "meft": lambda: pk.MEFT(variant="meft1"), "lora+deft": lambda: [pk.LoRA(rank=4), pk.DEFT()]}
STEPS, BATCH = 3, 8


def main(method: str, out: str) -> None:
    env = D.setup("cpu")
    torch.manual_seed(0)   # same init on every rank
    model = pk.load_backbone("tiny_bert", num_labels=3, hidden_dropout_prob=0.0,
                             attention_probs_dropout_prob=0.0)   # one dropout mask per process otherwise
    model = pk.apply(model, METHODS[method]()).train()
    if env.distributed:
        D.shard(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    gen = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        ids = torch.randint(5, 1000, (BATCH, 10), generator=gen)                    # the global batch
        labels = torch.randint(0, 3, (BATCH,), generator=gen)
        part = slice(env.rank * BATCH // env.world_size, (env.rank + 1) * BATCH // env.world_size)
        logits = model(input_ids=ids[part]).logits
        loss = torch.nn.functional.cross_entropy(logits, labels[part]) + pk.aux_loss(model)
        loss.backward()                   # FSDP2 averages the gradients over the ranks: the global-batch mean
        opt.step()
        opt.zero_grad()
    D.save_adapter_sharded(model, out, env)
    D.teardown(env)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
    if os.environ.get("WORLD_SIZE"):
        os._exit(0)   # as the MEFT DDP worker: skip interpreter teardown under torchrun
