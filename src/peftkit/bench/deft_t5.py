"""Mechanics check of DEFT on an encoder-decoder: a tiny random T5 (not a result about T5 quality).

DEFT's T5 objective (IBM/DEFT ``SQuAD/deft_trainer.py``) adds an encoder and a decoder density term, each a
mean over (samples, layers) of its own stack: ``L = L_task + weight * L_enc + decoder_weight * L_dec``. This
check trains the random ``tiny_t5`` (full fine-tuning, teacher-forced cross-entropy on a fixed synthetic
batch) with four weightings: none, encoder only, decoder only, both; and reports the encoder and decoder
densities before and after, each computed apart (decoder positions with label -100 masked).

eps is 1e-2 here, not the paper's 1e-7: the random model's activations are O(0.1), where a^2/(a^2+1e-7) is
flat (the gradient 2 a eps / (a^2+eps)^2 is ~1e-8), so nothing would move in a few steps.

Shape legend: b batch, t source tokens, u target tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from peftkit.bench import report as R

VARIANTS: tuple[tuple[str, tuple[float, float] | None], ...] = (
    ("no DEFT", None), ("encoder only", (1.0, 0.0)), ("decoder only", (0.0, 1.0)), ("both", (1.0, 1.0)),
)
METRICS = ("gt1e-02", "gt1e-04", "exact")


def synthetic_batch(seed: int = 0, b: int = 8, t: int = 16, u: int = 6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, t, dtype=torch.long)  # [b, t]
    mask[b // 2:, t // 2:] = 0
    labels = torch.randint(5, 1000, (b, u), generator=g)  # [b, u]
    labels[b // 2:, u // 2:] = -100
    ids = torch.randint(5, 1000, (b, t), generator=g)  # [b, t]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _densities(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, float]:
    from peftkit.methods.deft.metrics import density_report

    r = density_report(model, [batch])
    return {f"{s}/{m}": r[f"{s}/{m}_masked@fp32"] for s in ("encoder", "decoder") for m in METRICS}


def train_variant(weights: tuple[float, float] | None, steps: int, eps: float, lr: float,
                  batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    import peftkit as pk

    model = pk.load_backbone("tiny_t5", seed=0)
    stack: list[Any] = [pk.FullFineTune()]
    if weights is not None:
        stack.append(pk.DEFT(weight=weights[0], decoder_weight=weights[1], eps=eps, exclude_padding=True))
    model = pk.apply(model, stack)
    before = _densities(model, batch)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.eval()  # no dropout: the variants differ only by the density terms
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for _ in range(steps):
            loss = model(**batch).loss + pk.aux_loss(model)
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        task = float(model(**batch).loss)
    after = _densities(model, batch)
    row: dict[str, Any] = {"task_loss": task}
    for k in before:
        row[f"{k}/before"], row[f"{k}/after"] = before[k], after[k]
        row[f"{k}/cell"] = f"{before[k]:.1f} → {after[k]:.1f}"
    return row


def run_check(out_dir: str, threads: int | None = 1, steps: int = 60, eps: float = 1e-2,
              lr: float = 1e-3) -> dict[str, Path]:
    """Train the four variants; write OUT/deft_t5.{json,md,png}."""
    if threads:
        torch.set_num_threads(threads)
    batch = synthetic_batch()
    rows = [{"variant": name, **train_variant(w, steps, eps, lr, batch)} for name, w in VARIANTS]
    cols = [R.Column("variant", "density terms"), R.Column("task_loss", "task loss after", R.fmt_float)]
    cols += [R.Column(f"{s}/{m}/cell", f"{s} {m} %") for s in ("encoder", "decoder") for m in METRICS[:2]]
    notes = [
        "MECHANICS CHECK on a random 2+2-layer T5 v1.1 (gated-GELU, d_ff 64): not a quality result.",
        f"Full fine-tuning, Adam lr {lr:g}, {steps} steps on one synthetic batch (8 x 16 source, 8 x 6 "
        f"target tokens, padding on half), DEFT eps {eps:g} (bench/deft_t5.py says why not 1e-7), padding "
        "masked.",
        "Densities: % of MLP activations with |a| > tau in each stack, fp32, before -> after training.",
    ]
    fig = R.bar_panels(rows, "variant", [R.Panel(f"{s}/gt1e-02/after", f"{s} |a|>1e-2 after (%)",
                                                 lambda x: R.fmt_pct(x, 1)) for s in ("encoder", "decoder")])
    title = "DEFT on T5: encoder and decoder terms apart (mechanics check)"
    return R.write_report(out_dir, "deft_t5", rows=rows, columns=cols, title=title, notes=notes, figure=fig)
