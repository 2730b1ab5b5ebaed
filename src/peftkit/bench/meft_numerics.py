"""MEFT on a real model: how close the converted model starts to the PLM, and how exact its reconstruction is.

MEFT (Liao, Tan, Monz; NeurIPS 2023; arXiv 2306.00477) keeps the PLM's "starting point": with adapters near 0
one stream carries the PLM's hidden states, with a leak of lam (or beta) of the previous one, and the output
is the mean of the two streams. The inverse x2 = (y2 - G(y1)) / beta, x1 = (y1 - F(x2)) / lam divides by 0.1,
so rounding errors grow layer by layer. Measured here on real all-MiniLM-L6-v2 and BBC News articles:

* ``init_fidelity``: cosine between the converted model's final hidden states and the PLM's, per non-padding
  token (output = mean of the streams; also the stream closest to the PLM), per variant and (lam, beta);
* ``reconstruction_table``: relative error of every reconstructed layer input (fp64 / fp32 / bf16 model;
  streams in the model dtype as in the reference, or ``stream_dtype="auto"``), no anchors;
* ``gradient_table``: relative error of the adapter gradients of the reversible backward against plain
  autograd on the same model (fp32), float64 or fp32 (default) streams, with and without anchors;
* ``default_reconstruction_table``: the defaults (auto anchors), fp32 and bf16 autocast.

Shape legend: b batch, t tokens, d width.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import peftkit as pk
from peftkit.methods.meft.apply import find_stack
from peftkit.methods.meft.checks import stack_reconstruction_errors

VARIANTS = ("meft1", "meft2", "meft3")
INIT_SETTINGS: tuple[tuple[str, float | None, float | None], ...] = (
    ("meft1", None, None), ("meft1", 0.01, None), ("meft1", 0.5, None), ("meft1", 1.0, None),
    ("meft2", None, None), ("meft2", None, 0.01), ("meft2", None, 1.0),
    ("meft3", None, None), ("meft3", 0.01, 0.01), ("meft3", 1.0, 1.0),
)


def bbc_batch(n: int = 16, max_length: int = 128, backbone: str = "minilm") -> dict[str, torch.Tensor]:
    """The first ``n`` BBC News test articles, tokenised and padded: input_ids / attention_mask (b, t)."""
    from peftkit.data.text import bbc_news

    data = bbc_news(backbone=backbone, max_length=max_length)
    batch = data.collate([data.test[i] for i in range(n)])
    batch.pop("labels")
    return batch


def _streams(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, tuple[Any, ...]]:
    stack, seen = find_stack(model), {}
    h = stack.couplings[-1].register_forward_hook(lambda m, a, out: seen.__setitem__("y", out))
    try:
        with torch.no_grad():
            out = model(**batch).last_hidden_state
    finally:
        h.remove()
    return out, seen["y"]


def init_fidelity(batch: dict[str, torch.Tensor], settings: Any = INIT_SETTINGS, backbone: str = "minilm",
                  seed: int = 0) -> list[dict[str, Any]]:
    """Token cosine (mean and min over non-padding tokens) of MEFT's output, and of its closest stream, with
    the PLM's last hidden state (MiniLM: the encoder output before pooling), at the paper's init."""
    base = pk.load_backbone(backbone, task="encoder").eval()
    with torch.no_grad():
        ref = base(**batch).last_hidden_state  # [b, t, d]
    mask = batch["attention_mask"].bool()
    rows = []
    for variant, lam, beta in settings:
        torch.manual_seed(seed)
        config = pk.MEFT(variant=variant, lam=lam, beta=beta)
        model = pk.apply(pk.load_backbone(backbone, task="encoder"), config)
        model.eval()
        out, ys = _streams(model, batch)
        cos = F.cosine_similarity(out[mask], ref[mask], dim=-1)
        per = [F.cosine_similarity(y.to(ref.dtype)[mask], ref[mask], dim=-1).mean().item() for y in ys]
        l, b, _ = pk.MEFT(variant=variant, lam=lam, beta=beta).resolved()
        rows.append({"variant": variant, "lam": l, "beta": b, "cos_mean": cos.mean().item(),
                     "cos_min": cos.min().item(), "stream_cos": max(per), "stream": 1 + per.index(max(per))})
    return rows


def reconstruction_table(batch: dict[str, torch.Tensor], backbone: str = "minilm",
                         variants: tuple[str, ...] = VARIANTS) -> list[dict[str, Any]]:
    """Per-layer relative reconstruction error (index 0: the input of layer 0) per dtype, variant, streams."""
    rows = []
    for dtype in (torch.float64, torch.float32, torch.bfloat16):
        for stream in ("model", "auto"):
            if dtype == torch.float64 and stream == "auto":
                continue  # identical: auto keeps float64 streams for a float64 model
            if dtype == torch.bfloat16 and stream == "model":
                continue  # 16-bit streams are refused (ConfigError)
            for variant in variants:
                torch.manual_seed(0)
                model = pk.load_backbone(backbone, task="encoder").to(dtype)
                model = pk.apply(model, pk.MEFT(variant=variant, stream_dtype=stream)).eval()
                errs = stack_reconstruction_errors(model, **batch)
                rows.append({"dtype": str(dtype).removeprefix("torch."), "streams": stream,
                             "variant": variant, "errors": errs, "worst": max(errs),
                             **{f"layer{i}": e for i, e in enumerate(errs)}})
    return rows


def gradient_table(batch: dict[str, torch.Tensor], backbone: str = "minilm",
                   anchors: tuple[int | str, ...] = (0, 2, "auto"),
                   variants: tuple[str, ...] = VARIANTS) -> list[dict[str, Any]]:
    """Relative error ||g_rev - g_plain|| / ||g_plain|| of all adapter gradients (fp32 model, eval mode)."""
    labels = torch.arange(batch["input_ids"].shape[0]) % 5
    rows = []
    for variant in variants:
        for stream in ("float64", "auto"):
            for anchor in anchors:
                torch.manual_seed(0)
                model = pk.load_backbone(backbone, num_labels=5)
                config = pk.MEFT(variant=variant, stream_dtype=stream, anchor_every=anchor)
                model = pk.apply(model, config).eval()
                stack, grads = find_stack(model), {}
                for rev in (True, False):
                    stack.use_reversible_backward = rev
                    model.zero_grad(set_to_none=True)
                    F.cross_entropy(model(**batch).logits, labels).backward()
                    grads[rev] = torch.cat([p.grad.flatten() for p in stack.couplings.parameters()])
                err = ((grads[True] - grads[False]).norm() / grads[False].norm()).item()
                rows.append({"variant": variant, "streams": stream, "anchor_every": anchor,
                             "grad_rel_err": err})
    return rows


def local_model(folder: str, num_labels: int = 5) -> nn.Module:
    """A transformers classifier from a local folder (e.g. the unpacked all-mpnet-base-v2), spec attached."""
    from peftkit.backbones.hf import finish
    from peftkit.backbones.hf.loading import from_pretrained

    return finish(from_pretrained(folder, "classification", num_labels), f"local:{folder}")


def local_bbc_batch(folder: str, n: int, max_length: int) -> dict[str, torch.Tensor]:
    """The first ``n`` BBC News test articles, tokenised with the tokenizer in ``folder``."""
    from transformers import AutoTokenizer

    from peftkit.data.text import bbc_documents, load_bbc_split

    docs = bbc_documents()
    test = load_bbc_split(list(docs))["test"][:n]
    tok = AutoTokenizer.from_pretrained(folder)
    enc = tok([docs[i][0] for i in test], truncation=True, max_length=max_length, padding=True,
              return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def default_reconstruction_table(batch: dict[str, torch.Tensor], backbone: str = "minilm",
                                 variants: tuple[str, ...] = VARIANTS,
                                 model_dir: str = "") -> list[dict[str, Any]]:
    """With MEFT's defaults (fp32 streams, ``anchor_every="auto"``, tolerance 1e-3), in train mode (dropout
    on), fp32 and under bf16 autocast: the anchors the calibration chose, the relative error of every
    reconstructed layer input in the reversible backward (sampled check; 0 at anchors), and what one anchor
    costs (two fp32 streams [b, t, d])."""
    rows = []
    for mode in ("fp32", "bf16 autocast"):
        for variant in variants:
            torch.manual_seed(0)
            base = local_model(model_dir) if model_dir else pk.load_backbone(backbone, num_labels=5)
            model = pk.apply(base, pk.MEFT(variant=variant)).train()
            stack = find_stack(model)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode != "fp32"):
                logits = model(**batch).logits
            logits.float().pow(2).mean().backward()
            b, t = batch["input_ids"].shape
            width = stack.couplings[0].f.adapter.up.out_features
            errs = stack.last_reconstruction_error or [0.0] * len(stack)  # every layer anchored: no check
            rows.append({"backbone": backbone, "mode": mode, "variant": variant, "layers": len(stack),
                         "anchors": sorted(stack.anchors or []), "errors": errs, "worst": max(errs),
                         "tolerance": stack.tolerance, "anchor_bytes": 2 * b * t * width * 4,
                         "anchor_bytes_per_token": 2 * width * 4, "tokens": b * t,
                         "calibration": stack.calibration_errors})
    return rows
