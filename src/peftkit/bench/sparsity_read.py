"""The test read and the density backfill of ``peftkit bench sparsity`` (rows: ``bench/sparsity.py``).

The test split is read once per row, at the (rule, q) chosen on validation over all seeds of its variant;
a new selection (more seeds) reads it again. Rows written before the dense density columns existed get them
measured on their saved adapter.
"""

from __future__ import annotations

import json
from typing import Any

from peftkit.bench.sparsity import (
    RULES,
    SparsityBenchConfig,
    _list,
    adapter_dir,
    compare,
    dense_densities,
    loaders,
    predict,
    row_path,
    sparse_predict,
)


def test_read(cfg: SparsityBenchConfig, dataset: str, variant: str, seed: int, rule: str,
              q: float) -> dict[str, Any]:
    """The one read of the test split: dense and sparsified at the (rule, q) chosen on validation."""
    import peftkit as pk
    from peftkit.core.registry import get_dataset
    from peftkit.train.build import seed_everything

    data = get_dataset(dataset)(backbone=cfg.backbone, seed=seed, max_length=cfg.max_length,
                                max_train_examples=cfg.max_train_examples)
    seed_everything(seed)
    fresh = pk.load_backbone(cfg.backbone, task="classification", num_labels=data.num_labels)
    model = pk.load_adapter(fresh, adapter_dir(cfg, dataset, variant, seed)).eval()
    _, _, calib = loaders(cfg, data, seed)
    from torch.utils.data import DataLoader

    test = DataLoader(data.test, batch_size=32, collate_fn=data.collate)
    dense, golds = predict(model, test)
    kind, fold = RULES[rule]
    pk.sparsify(model, q, calib=calib, rule=kind, fold_mean=fold)
    preds, density = sparse_predict(model, test)
    return {"dataset": dataset, "variant": variant, "seed": seed, "rule": rule, "q": q, "density": density,
            "dense_acc": compare(dense, dense, golds)["acc"], **compare(preds, dense, golds)}


def backfill_densities(cfg: SparsityBenchConfig, row: dict[str, Any]) -> None:
    """Rows written before the density keys were fixed: measure them on the saved adapter (validation)."""
    import peftkit as pk
    from peftkit.core.io import atomic_write_json
    from peftkit.core.registry import get_dataset

    path = adapter_dir(cfg, row["dataset"], row["variant"], row["seed"])
    if not path.is_dir():
        return
    data = get_dataset(row["dataset"])(backbone=cfg.backbone, seed=row["seed"], max_length=cfg.max_length,
                                       max_train_examples=cfg.max_train_examples)
    fresh = pk.load_backbone(cfg.backbone, task="classification", num_labels=data.num_labels)
    model = pk.load_adapter(fresh, path).eval()
    _, val, _ = loaders(cfg, data, row["seed"])
    row.update(dense_densities(model, val))
    atomic_write_json(row_path(cfg, row["dataset"], row["variant"], row["seed"]), row)


def read_tests(cfg: SparsityBenchConfig) -> None:
    """Read the test split for every row whose selection (made on validation over all seeds) is new."""
    from peftkit.bench.sparsity_report import load_rows, select
    from peftkit.core.io import atomic_write_json

    rows = load_rows(cfg.out_dir)
    for dataset in _list(cfg.datasets):
        for variant in _list(cfg.variants):
            runs = [r for r in rows if r["dataset"] == dataset and r["variant"] == variant]
            if not runs:
                continue
            sel = select(runs, _list(cfg.rules))
            for r in runs:
                if r.get("density_exact") is None:
                    backfill_densities(cfg, r)
                path = row_path(cfg, dataset, variant, r["seed"]).with_name(
                    f"{dataset}__{variant}__s{r['seed']}__test.json")
                if path.is_file():
                    old = json.loads(path.read_text())
                    if (old["rule"], old["q"]) == (sel["rule"], sel["q"]):
                        continue
                if not adapter_dir(cfg, dataset, variant, r["seed"]).is_dir():
                    print(f"[sparsity] no adapter for {path.name}: test not read", flush=True)
                    continue
                atomic_write_json(path, test_read(cfg, dataset, variant, r["seed"], sel["rule"], sel["q"]))
