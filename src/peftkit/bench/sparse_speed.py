"""``peftkit bench sparse_speed``: is the sparse MLP faster? Dense vs sparse, one thread, batch 1.

Two paths, each with the real packaged weights, in one interleaved run per model (dense and every sparse
setting take turns in every repetition; the median over repetitions is reported, and the ratio is
dense time / sparse time, > 1 = faster; times are the measuring thread's CPU time, which other jobs on a
shared machine do not inflate):

- MiniLM single-sentence classification: one sentence of ``sentence_tokens`` tokens (a BBC article's start);
  MLP-only (the six blocks' ``intermediate`` + ``output.dense`` on the captured hidden states) and end to end.
- SmolLM2-135M greedy decoding: tokens/s over ``new_tokens`` new tokens (KV cache; every decode step is the
  batch-1 one-token path) after a BBC prompt; MLP-only (one block's gated MLP on a one-token input, the
  decoding shape) and end to end.

The sparse model is ``pk.sparsify(model, q, calib=...)`` (magnitude rule, thresholds calibrated on BBC
training articles) + ``pk.sparse_mlp``; densities 50 / 30 / 10 % (q = 0.5 / 0.7 / 0.9) and the extra q of
``extra_q`` (each trained model's own q* from ``peftkit bench sparsity``). Break-even density: the largest
measured density whose MLP-only ratio is >= 1 (linear interpolation between grid points).
"""

from __future__ import annotations

import copy
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class SparseSpeedConfig:
    out_dir: str = "docs/results/sparse_speed"
    models: str = "minilm,smollm2"
    qs: str = "0.5,0.7,0.9"
    extra_q: str = ""                 # e.g. the q* of the trained models: "0.97,0.99"
    reps: int = 15                    # interleaved repetitions (MiniLM); SmolLM2 decoding uses reps_decode
    reps_decode: int = 3
    sentence_tokens: int = 48
    new_tokens: int = 128
    prompt_tokens: int = 32
    calib_examples: int = 16
    threads: int = 1
    report_only: bool = False         # re-render the table and plot from OUT/sparse_speed.json


def _qs(cfg: SparseSpeedConfig) -> list[float]:
    return [float(x) for x in (cfg.qs + "," + cfg.extra_q).split(",") if x.strip()]


def _texts(n: int) -> list[str]:
    from peftkit.data.text import bbc_documents, load_bbc_split

    docs = bbc_documents()
    split = load_bbc_split(list(docs))
    return [docs[i][0] for i in split["train"][:n]]


def _timed(fn: Callable[[], Any]) -> float:
    """CPU seconds of this thread (torch runs on it alone at 1 thread): other jobs on the machine do not
    count, unlike wall time."""
    t = time.thread_time()
    fn()
    return time.thread_time() - t


def interleaved(calls: dict[str, Callable[[], Any]], reps: int) -> dict[str, float]:
    """Median seconds of each call; every repetition runs each call once, in turn (after one warm-up)."""
    for fn in calls.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(reps):
        for k, fn in calls.items():
            times[k].append(_timed(fn))
    return {k: statistics.median(v) for k, v in times.items()}


def _sparse_copies(model: Any, calib: list[dict[str, Any]], qs: list[float]) -> dict[float, Any]:
    import peftkit as pk

    out = {}
    for q in qs:
        m = copy.deepcopy(model).eval()
        pk.sparsify(m, q, calib=calib)
        pk.sparse_mlp(m, max_density=1.0)  # the measured path is always the sparse one (break-even is found)
        out[q] = m
    return out


def _mlp_calls(model: Any, x: Any, gated: bool, layer: int = 0) -> Callable[[], Any]:
    import torch

    blocks = model.model.layers if gated else model.bert.encoder.layer
    block = blocks[layer]

    def run() -> Any:
        with torch.no_grad():
            if gated:
                return block.mlp(x)
            return block.output.dense(block.intermediate(x))

    return run


def _capture(model: Any, inputs: dict[str, Any], gated: bool, layer: int = 0) -> Any:
    import torch

    blocks = model.model.layers if gated else model.bert.encoder.layer
    target = blocks[layer].mlp if gated else blocks[layer].intermediate
    got: list[Any] = []
    h = target.register_forward_pre_hook(lambda m, a: got.append(a[0].detach().clone()))
    with torch.no_grad():
        model(**inputs)
    h.remove()
    return got[0]


def bench_minilm(cfg: SparseSpeedConfig) -> list[dict[str, Any]]:

    import peftkit as pk
    from peftkit.methods.deft.calibrate import measure_density

    tok = pk.load_tokenizer("minilm")
    texts = _texts(cfg.calib_examples + 1)
    enc = lambda t, n: dict(tok(t, truncation=True, max_length=n, padding=True, return_tensors="pt"))  # noqa: E731
    sentence = enc([texts[0]], cfg.sentence_tokens)
    calib = [enc(texts[1 + i: 1 + i + 8], 128) for i in range(0, cfg.calib_examples, 8)]
    dense = pk.load_backbone("minilm", task="classification", num_labels=5).eval()
    sparse = _sparse_copies(dense, calib, _qs(cfg))
    x = _capture(dense, sentence, gated=False)
    calls: dict[str, Callable[[], Any]] = {"mlp/dense": _mlp_calls(dense, x, False)}
    for q, m in sparse.items():
        calls[f"mlp/{q}"] = _mlp_calls(m, x, False)
    mlp = interleaved(calls, cfg.reps)

    def e2e(m: Any) -> Callable[[], Any]:
        return lambda: _nograd(m, sentence)

    calls = {"e2e/dense": e2e(dense), **{f"e2e/{q}": e2e(m) for q, m in sparse.items()}}
    full = interleaved(calls, cfg.reps)
    rows = []
    for q, m in sparse.items():
        d = measure_density(m, [sentence])["mean"]
        t = sentence["input_ids"].shape[1]
        rows.append(_row("minilm", f"classification, 1 x {t} tokens", q, d, mlp, full))
    return rows


def _row(model: str, path: str, q: float, density: float, mlp: dict[str, float],
         full: dict[str, float]) -> dict[str, Any]:
    return {"model": model, "path": path, "q": q, "density": density,
            "mlp_dense_ms": 1e3 * mlp["mlp/dense"], "mlp_sparse_ms": 1e3 * mlp[f"mlp/{q}"],
            "mlp_ratio": mlp["mlp/dense"] / mlp[f"mlp/{q}"], "e2e_dense_ms": 1e3 * full["e2e/dense"],
            "e2e_sparse_ms": 1e3 * full[f"e2e/{q}"], "e2e_ratio": full["e2e/dense"] / full[f"e2e/{q}"]}


def _nograd(m: Any, inputs: dict[str, Any]) -> Any:
    import torch

    with torch.no_grad():
        return m(**inputs)


def bench_smollm2(cfg: SparseSpeedConfig) -> list[dict[str, Any]]:
    import torch

    import peftkit as pk
    from peftkit.methods.deft.calibrate import measure_density

    tok = pk.load_tokenizer("smollm2")
    texts = _texts(cfg.calib_examples + 1)
    prompt = dict(tok([texts[0]], truncation=True, max_length=cfg.prompt_tokens, return_tensors="pt"))
    calib = [dict(tok([t], truncation=True, max_length=128, return_tensors="pt")) for t in texts[1:]]
    dense = pk.load_backbone("smollm2", task="causal_lm").eval()
    sparse = _sparse_copies(dense, calib, _qs(cfg))
    x = _capture(dense, prompt, gated=True)[:, -1:]  # one token: the decoding shape
    calls: dict[str, Callable[[], Any]] = {"mlp/dense": _mlp_calls(dense, x, True)}
    calls.update({f"mlp/{q}": _mlp_calls(m, x, True) for q, m in sparse.items()})
    mlp = interleaved(calls, cfg.reps)

    def gen(m: Any) -> Callable[[], Any]:
        def run() -> Any:
            with torch.no_grad():
                return m.generate(**prompt, max_new_tokens=cfg.new_tokens, min_new_tokens=cfg.new_tokens,
                                  do_sample=False, pad_token_id=tok.pad_token_id or tok.eos_token_id)
        return run

    calls = {"e2e/dense": gen(dense), **{f"e2e/{q}": gen(m) for q, m in sparse.items()}}
    full = interleaved(calls, cfg.reps_decode)
    rows = []
    n = cfg.new_tokens
    for q, m in sparse.items():
        d = measure_density(m, [prompt])["mean"]
        rows.append({**_row("smollm2", f"greedy decoding, {n} new tokens", q, d, mlp, full),
                     "tok_s_dense": n / full["e2e/dense"], "tok_s_sparse": n / full[f"e2e/{q}"]})
    return rows


def break_even(rows: list[dict[str, Any]]) -> float | None:
    """Largest density (%) at which the MLP-only ratio reaches 1, interpolated between measured points."""
    pts = sorted((r["density"], r["mlp_ratio"]) for r in rows)
    best = None
    for (d0, r0), (d1, r1) in zip(pts, pts[1:]):
        if r0 >= 1.0 > r1:
            best = d0 + (r0 - 1.0) / (r0 - r1) * (d1 - d0)
    if best is None and pts and pts[-1][1] >= 1.0:
        best = pts[-1][0]
    return best


def figure(rows: list[dict[str, Any]]) -> Any:
    """Speed-up (dense / sparse) against measured MLP density, MLP-only and end to end, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for i, (key, name) in enumerate((("mlp_ratio", "MLP only"), ("e2e_ratio", "end to end"))):
        for model in dict.fromkeys(r["model"] for r in rows):
            pts = sorted((r["density"], r[key]) for r in rows if r["model"] == model)
            axes[i].plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=model)
        axes[i].axhline(1.0, color="grey", lw=0.8)
        axes[i].set_xscale("log")
        axes[i].xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        axes[i].xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        axes[i].set_xlabel("MLP density % (measured)")
        axes[i].set_ylabel("speed-up (dense / sparse)")
        axes[i].set_title(f"{name}, batch 1, 1 thread")
        axes[i].grid(alpha=0.3)
        axes[i].legend()
    fig.tight_layout()
    return fig


def main(overrides: list[str]) -> int:
    import torch

    from peftkit.bench._args import parse_overrides
    from peftkit.bench.report import Column, fmt_ratio, write_report
    from peftkit.bench.sparsity_report import fixed

    cfg = parse_overrides(SparseSpeedConfig, overrides, "sparse_speed")
    torch.set_num_threads(cfg.threads)
    rows: list[dict[str, Any]] = []
    benches = {"minilm": bench_minilm, "smollm2": bench_smollm2}
    stored: dict[str, Any] = {}
    if cfg.report_only:
        import json

        stored = json.loads((Path(cfg.out_dir) / "sparse_speed.json").read_text())
        rows = stored["rows"]
    for name in [] if cfg.report_only else [m.strip() for m in cfg.models.split(",") if m.strip()]:
        part = benches[name](cfg)
        be = break_even(part)
        for r in part:
            r["break_even"] = be
        rows += part
        print(f"[sparse_speed] {name}: break-even MLP density {be}", flush=True)
    cols = [Column("model", "model"), Column("path", "path"), Column("q", "q", fixed(2)),
            Column("density", "MLP density %", fixed(1)),
            Column("mlp_dense_ms", "MLP dense ms", fixed(3)),
            Column("mlp_sparse_ms", "MLP sparse ms", fixed(3)),
            Column("mlp_ratio", "MLP speed-up", fmt_ratio),
            Column("e2e_dense_ms", "end-to-end dense ms", fixed(1)),
            Column("e2e_sparse_ms", "end-to-end sparse ms", fixed(1)),
            Column("e2e_ratio", "end-to-end speed-up", fmt_ratio),
            Column("break_even", "break-even density %", fixed(1))]
    notes = [f"CPU, {cfg.threads} thread(s), batch 1, fp32; median of {cfg.reps} interleaved repetitions "
             f"({cfg.reps_decode} for decoding); time = CPU time of the measuring thread (torch on 1 thread; "
             "the machine is shared, so wall time would count other jobs); speed-up = dense / sparse.",
             "Sparse = pk.sparsify (magnitude, calibrated on BBC training articles) + pk.sparse_mlp "
             "(embedding_bag down-projection; gated: only the kept rows of the up-projection).",
             f"Command: `peftkit bench sparse_speed {' '.join(overrides)}`"]
    notes = stored.get("notes", notes)  # a re-render keeps the notes (and command) of the measured run
    paths = write_report(cfg.out_dir, "sparse_speed", rows=rows, columns=cols, notes=notes,
                         title="Sparse MLP vs dense: latency at batch 1", meta={"config": vars(cfg)},
                         figure=figure(rows))
    print(Path(paths["md"]).read_text(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
