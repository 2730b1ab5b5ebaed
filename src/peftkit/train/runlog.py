"""A run's files: ``config.yaml``, ``metrics.jsonl`` (one record per log step / evaluation), ``metrics.json``
(the summary) and optional TensorBoard events under ``tb/``. Only rank 0 writes; whole files are written to
a temporary name and renamed. The directory itself is managed by ``peftkit.train.rundir``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from peftkit.core.errors import UnsupportedError
from peftkit.core.io import atomic_write_text


def val_summary(last: dict[str, Any], best: dict[str, Any]) -> dict[str, Any]:
    """``val/<metric>/last``, ``val/<metric>/best`` (at the best main metric) and ``val/best_step``."""
    out = {f"val/{k}/last": v for k, v in last.items() if k != "step"}
    out.update({f"val/{k}/best": v for k, v in best.items() if k != "step"})
    if "step" in best:
        out["val/best_step"] = best["step"]
    return out


def _step_of(line: str) -> float:
    """The step of a ``metrics.jsonl`` record; a torn or foreign line (killed mid-write) is dropped."""
    try:
        rec = json.loads(line)
    except ValueError:
        return math.inf
    return rec.get("step", 0) if isinstance(rec, dict) and isinstance(rec.get("step", 0), int) else math.inf


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
        keep = [ln for ln in path.read_text(errors="replace").splitlines() if _step_of(ln) <= last_step]
        atomic_write_text(path, "".join(f"{ln}\n" for ln in keep))

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
            text = json.dumps({k: _jsonable(v) for k, v in metrics.items()}, indent=1)
            atomic_write_text(self.out / "metrics.json", text)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
