"""A run's files: ``config.yaml``, ``metrics.jsonl`` (one record per log step / evaluation), ``metrics.json``
(the summary) and optional TensorBoard events under ``tb/``. Only rank 0 writes; whole files are written to
a temporary name and renamed."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

from peftkit.core.errors import UnsupportedError

RUN_FILES = ("config.yaml", "metrics.json", "metrics.jsonl", "adapter", "checkpoints", "tb")


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def clean_run_dir(out: Path) -> list[str]:
    """Remove the files of an earlier run in ``out`` (only peftkit's own names); returns what was removed."""
    removed = []
    for name in RUN_FILES:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
        else:
            continue
        removed.append(name)
    return removed


def start_run_dir(out: Path, config_text: str) -> None:
    """Create ``out`` (replacing an earlier run's files there) and write the resolved ``config.yaml``."""
    out.mkdir(parents=True, exist_ok=True)
    removed = clean_run_dir(out)
    if removed:
        print(f"peftkit: replacing the earlier run in {out} ({', '.join(removed)})")
    write_atomic(out / "config.yaml", config_text)


def val_summary(last: dict[str, Any], best: dict[str, Any]) -> dict[str, Any]:
    """``val/<metric>/last``, ``val/<metric>/best`` (at the best main metric) and ``val/best_step``."""
    out = {f"val/{k}/last": v for k, v in last.items() if k != "step"}
    out.update({f"val/{k}/best": v for k, v in best.items() if k != "step"})
    if "step" in best:
        out["val/best_step"] = best["step"]
    return out


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class RunLog:
    """Appends records to ``metrics.jsonl`` and TensorBoard; a disabled RunLog (rank > 0) does nothing."""

    def __init__(self, out: Path, enabled: bool, tensorboard: bool) -> None:
        self.out, self.enabled = out, enabled
        self.tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UnsupportedError(
                    "train.tensorboard needs the 'tensorboard' package: pip install tensorboard"
                ) from None
            self.tb = SummaryWriter(str(out / "tb"))

    def truncate(self, last_step: int) -> None:
        """Drop records after ``last_step`` (those a killed run wrote after its last checkpoint)."""
        path = self.out / "metrics.jsonl"
        if not self.enabled or not path.is_file():
            return
        keep = [
            ln
            for ln in path.read_text().splitlines()
            if ln.strip() and json.loads(ln).get("step", 0) <= last_step
        ]
        write_atomic(path, "".join(f"{ln}\n" for ln in keep))

    def record(self, rec: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with (self.out / "metrics.jsonl").open("a") as fh:
            fh.write(json.dumps({k: _jsonable(v) for k, v in rec.items()}) + "\n")
        if self.tb is not None:
            for k, v in rec.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(k, v, rec.get("step", 0))

    def summary(self, metrics: dict[str, Any]) -> None:
        if self.enabled:
            write_atomic(
                self.out / "metrics.json", json.dumps({k: _jsonable(v) for k, v in metrics.items()}, indent=1)
            )

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
