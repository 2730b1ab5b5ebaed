"""``peftkit predict RUN_DIR --text "..." | --file F.csv``: classify new texts with a finished run.

The run folder tells everything: ``config.yaml`` the backbone (and its build arguments) and ``max_length``,
``adapter/`` the trained method stack and the class names (``id2label``). Texts are tokenised with the
backbone's own tokenizer in batches; each row gets the predicted label, its probability and the probability
of every class (softmax of the logits; a regression head, ``num_labels`` 1, gives its value as ``score``).
The CSV is written atomically: a killed prediction leaves no half-written file.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from peftkit.core.checkpoint import read_adapter_config
from peftkit.core.errors import ConfigError
from peftkit.core.io import atomic_write_text

DEFAULT_BATCH_SIZE = 32


@dataclass(frozen=True)
class Prediction:
    """One text's prediction: ``label`` (a class name, or the value for regression), ``score`` (the
    label's probability, or the value), ``probs`` (class name -> probability; empty for regression)."""

    text: str
    label: str
    score: float
    probs: dict[str, float]


def _adapter_dir(run_dir: Path) -> Path:
    if (run_dir / "adapter" / "adapter_config.json").is_file():
        return run_dir / "adapter"
    raise ConfigError(
        f"{run_dir} has no adapter/adapter_config.json: give the out_dir of a finished `peftkit train` run"
    )


def load_run(run_dir: str | os.PathLike[str]) -> tuple[nn.Module, Any, list[str], int]:
    """(model in eval mode, tokenizer, class names, max_length) of a finished run.

    Raises:
        ConfigError: ``run_dir`` is not a finished run folder.
    """
    import peftkit as pk
    from peftkit.train.config import load_config

    run = Path(run_dir)
    if not (run / "config.yaml").is_file():
        raise ConfigError(f"{run} is not a run directory (no config.yaml); give the out_dir of a peftkit run")
    adapter = _adapter_dir(run)
    cfg = load_config(run / "config.yaml")
    saved = read_adapter_config(adapter)
    id2label = saved.get("id2label") or {}
    names = [str(id2label[k]) for k in sorted(id2label, key=int)]
    num_labels = len(names) or _num_labels(run)
    model = pk.load_backbone(cfg.backbone.name, task=cfg.backbone.task, num_labels=num_labels,
                             **cfg.backbone.kwargs)
    model = pk.load_adapter(model, adapter).eval()
    tokenizer = pk.load_tokenizer(cfg.backbone.name)
    max_length = int(cfg.data.kwargs.get("max_length", 128))
    return model, tokenizer, names or [str(i) for i in range(num_labels)], max_length


def _num_labels(run: Path) -> int:
    """Runs saved before class names were recorded: the count from metrics.json."""
    try:
        return int(json.loads((run / "metrics.json").read_text())["num_labels"])
    except (OSError, ValueError, KeyError):
        raise ConfigError(
            f"{run}: the adapter records no class names and metrics.json has no num_labels; rerun training"
        ) from None


@torch.no_grad()
def predict_texts(model: nn.Module, tokenizer: Any, names: Sequence[str], texts: Sequence[str],
                  max_length: int = 128, batch_size: int = DEFAULT_BATCH_SIZE,
                  progress: bool = False) -> list[Prediction]:
    """Classify ``texts`` in batches of ``batch_size`` (a tqdm bar on stderr when ``progress``)."""
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    device = next(model.parameters()).device
    out: list[Prediction] = []
    with tqdm(total=len(texts), desc="predict", unit="text", disable=not progress) as bar:
        for start in range(0, len(texts), batch_size):
            chunk = list(texts[start:start + batch_size])
            batch = tokenizer(chunk, padding=True, truncation=True, max_length=max_length,
                              return_tensors="pt")
            batch = {k: v.to(device) for k, v in batch.items() if k in tokenizer.model_input_names}
            logits = model(**batch).logits.float()                      # (b, num_labels)
            if logits.shape[-1] == 1:                                   # regression head
                values = logits[:, 0].tolist()
                out.extend(Prediction(t, f"{v:.6g}", float(v), {}) for t, v in zip(chunk, values))
            else:
                probs = logits.softmax(-1)                              # (b, num_labels)
                for t, p in zip(chunk, probs.tolist()):
                    k = max(range(len(p)), key=p.__getitem__)
                    out.append(Prediction(t, names[k], p[k], dict(zip(names, p))))
            bar.update(len(chunk))
    return out


def read_texts(path: str | os.PathLike[str], column: str = "text") -> list[str]:
    """The ``column`` of a CSV / TSV / JSONL file (a file with one column needs no name)."""
    from peftkit.data.text_file import read_rows

    header, rows = read_rows(path)
    if column not in header:
        if len(header) == 1:
            column = header[0]
        else:
            raise ConfigError(f"{path} has no column '{column}'; its columns are: {', '.join(header)} "
                              "(choose one with --column)")
    return [str(r.get(column) or "") for _, r in rows]


def to_csv(preds: Sequence[Prediction], names: Sequence[str]) -> str:
    """CSV text: ``text,label,score`` then ``p_<class>`` for each class."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    regression = bool(preds) and not preds[0].probs
    w.writerow(["text", "label", "score"] + ([] if regression else [f"p_{n}" for n in names]))
    for p in preds:
        w.writerow([p.text, p.label, f"{p.score:.6g}"] + [f"{p.probs[n]:.6g}" for n in names if p.probs])
    return buf.getvalue()


def run_predict(run_dir: str, texts: Sequence[str] = (), file: str | None = None, out: str | None = None,
                column: str = "text", batch_size: int = DEFAULT_BATCH_SIZE,
                progress: bool = True) -> tuple[list[Prediction], Path | None]:
    """The ``peftkit predict`` job: texts from ``--text`` and/or ``--file``, CSV to ``out`` (default: beside
    the input file as ``<name>.predictions.csv``; none for --text alone).

    Returns:
        The predictions and the CSV written (None when none was).

    Raises:
        ConfigError: no input, or an input / run folder that does not fit.
    """
    all_texts = list(texts) + (read_texts(file, column) if file else [])
    if not all_texts:
        raise ConfigError("give texts to classify with --text \"...\" (repeatable) or --file F.csv")
    if out is None and file is not None:
        out = str(Path(file).with_name(Path(file).stem + ".predictions.csv"))
    if out is not None and Path(out).is_dir():
        raise ConfigError(f"--out {out} is a directory; give a file name")
    model, tokenizer, names, max_length = load_run(run_dir)
    preds = predict_texts(model, tokenizer, names, all_texts, max_length, batch_size, progress)
    if out is None:
        return preds, None
    atomic_write_text(out, to_csv(preds, names))
    return preds, Path(out)


__all__ = ["Prediction", "load_run", "predict_texts", "read_texts", "to_csv", "run_predict"]
