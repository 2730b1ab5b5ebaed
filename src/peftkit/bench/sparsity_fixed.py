"""Diagnostic of ``peftkit bench sparsity``: every variant at the *same absolute* thresholds.

A calibrated sparsifier sets tau_l as the q-quantile of each model's own |a_l|, so its MLP density is about
1 - q for every model by construction: DEFT can show up there only as accuracy kept at a higher q. This
diagnostic asks the direct question instead: with the thresholds tau_l^ref calibrated on a reference model
(``ref``, e.g. ``lora_st``) at q, what MLP density and accuracy does each other model have on the validation
split? A density loss that moves activations under the thresholds shows up as a lower density here.

    density_v(q) = mean over layers l of P_val(|a_l^v| >= tau_l^ref(q))      (valid tokens)

Reads the stored adapters of the bench (``runs_dir``) for one dataset and seed; writes
``OUT/fixed_thresholds__<dataset>__s<seed>.{json,md}`` (rows of other variants at the same reference already
there are kept). Run:
``peftkit bench sparsity_fixed datasets=bbc_news variants=lora_st,lora+deft_thr_st seed0=0``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

REF_QS = (0.9, 0.95, 0.97, 0.99)


def fixed_rows(cfg: Any, dataset: str, seed: int, ref: str, variants: list[str]) -> list[dict[str, Any]]:
    """One row per (variant, q): density (%) and accuracy at the reference model's thresholds at q."""
    import peftkit as pk
    from peftkit.bench.sparsity import adapter_dir, compare, drop_sparsify, loaders, predict, sparse_predict
    from peftkit.core.errors import ConfigError
    from peftkit.core.registry import get_dataset
    from peftkit.methods.deft.calibrate import thresholds_of

    data = get_dataset(dataset)(backbone=cfg.backbone, seed=seed, max_length=cfg.max_length,
                                max_train_examples=cfg.max_train_examples)
    _, val, calib = loaders(cfg, data, seed)

    def load(variant: str) -> Any:
        path = adapter_dir(cfg, dataset, variant, seed)
        if not path.is_dir():
            raise ConfigError(f"sparsity_fixed: no trained adapter at {path}; "
                              "run peftkit bench sparsity first")
        fresh = pk.load_backbone(cfg.backbone, task="classification", num_labels=data.num_labels)
        return pk.load_adapter(fresh, path).eval()

    model = load(ref)
    taus: dict[float, dict[str, float]] = {}
    for q in REF_QS:
        pk.sparsify(model, q, calib=calib)
        taus[q] = {m.name: float(m.tau) for m in thresholds_of(model)}
        drop_sparsify(model)
    rows = []
    for variant in [ref, *[v for v in variants if v != ref]]:
        model = load(variant)
        dense, golds = predict(model, val)
        for q in REF_QS:
            pk.sparsify(model, thresholds=taus[q])
            try:
                preds, density = sparse_predict(model, val)
            finally:
                drop_sparsify(model)
            rows.append({"dataset": dataset, "seed": seed, "ref": ref, "variant": variant, "q_ref": q,
                         "density": density, "dense_acc": compare(dense, dense, golds)["acc"],
                         **compare(preds, dense, golds)})
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    """A table: variant x reference q -> density % and validation accuracy (dense -> sparse)."""
    head = (f"Every model at the thresholds calibrated on `{rows[0]['ref']}` ({rows[0]['dataset']}, seed "
            f"{rows[0]['seed']}, validation split)\n\n| variant | q (on ref) | MLP density % "
            "| val acc dense -> at these thresholds | agreement with dense % |\n|:---|---:|---:|---:|---:|\n")
    body = "".join(f"| {r['variant']} | {r['q_ref']:.2f} | {r['density']:.1f} | {r['dense_acc']:.1f} -> "
                   f"{r['acc']:.1f} | {r['agree']:.1f} |\n" for r in rows)
    return head + body


def main(overrides: list[str]) -> int:
    import torch

    from peftkit.bench.sparsity import VARIANTS, _list, parse
    from peftkit.core.errors import ConfigError
    from peftkit.core.io import atomic_write_json, atomic_write_text

    if any(o in ("-h", "--help") for o in overrides):
        print("peftkit bench sparsity_fixed [ref=VARIANT (default lora_st)] [sparsity bench key=value ...]")
    ref = next((o.split("=", 1)[1] for o in overrides if o.startswith("ref=")), "lora_st")
    cfg = parse([o for o in overrides if not o.startswith("ref=")])
    if ref not in VARIANTS:
        raise ConfigError(f"sparsity_fixed: unknown reference variant {ref!r}; variants {list(VARIANTS)}")
    torch.set_num_threads(cfg.threads)
    for dataset in _list(cfg.datasets):
        stem = Path(cfg.out_dir) / f"fixed_thresholds__{dataset}__s{cfg.seed0}"
        new = fixed_rows(cfg, dataset, cfg.seed0, ref, _list(cfg.variants))
        path = stem.with_suffix(".json")
        old = json.loads(path.read_text())["rows"] if path.is_file() else []
        done = {r["variant"] for r in new}  # rows of other variants at the same reference are kept
        rows = [r for r in old if r["ref"] == ref and r["variant"] not in done] + new
        rows.sort(key=lambda r: r["variant"] != ref)  # the reference first, the rest in their order
        atomic_write_json(stem.with_suffix(".json"), {"rows": rows, "command": " ".join(overrides)})
        atomic_write_text(stem.with_suffix(".md"), markdown(rows))
        print(markdown(rows), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
