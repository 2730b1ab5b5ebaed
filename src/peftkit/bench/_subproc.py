"""Fresh processes for memory measurements: ``python -m peftkit.bench._subproc JOB.json OUT_DIR``.

``measure_step`` builds the model of a ``StepSpec``, applies its methods, makes the optimiser and the fixed
batch, reads the baseline, runs K training steps, reads the peak, then (optionally) counts the bytes saved
for backward. A fresh process per measurement means no other model's memory and no allocator history are
mixed in.

``measure_fresh`` starts one interpreter (this module's ``main``) that imports the libraries once and then
forks one child per spec, at most ``workers`` at a time; each child measures one spec and writes
``OUT_DIR/<i>.json``. The server itself never runs a tensor operation, so its children start clean; the
import time (tens of seconds on a busy 2-core machine) is paid once instead of once per spec.

Shape legend: b batch, t tokens.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch

from peftkit.bench.memory import (
    StepSpec,
    default_loss_for,
    model_inputs,
    release,
    rss_bytes,
    saved_activation_bytes,
    synthetic_batch,
)
from peftkit.core.configs import method_configs
from peftkit.core.errors import ConfigError, PeftkitError
from peftkit.core.io import atomic_write_text
from peftkit.measure import step_peak


def measure_step(spec: StepSpec) -> dict[str, Any]:
    """Run the StepSpec in this process and return the measurements (see ``memory.peak_step_memory``)."""
    import peftkit as pk

    torch.set_num_threads(spec.threads)
    torch.manual_seed(spec.seed)
    device = torch.device(spec.device)
    cuda = device.type == "cuda"
    kw = dict(spec.backbone_kwargs)
    if spec.task == "classification":
        kw.setdefault("num_labels", spec.num_labels)
    model = pk.load_backbone(spec.backbone, task=spec.task, **kw)
    model = pk.apply(model, method_configs(spec.methods)).to(device)
    model.train()
    report = pk.param_report(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=spec.lr)
    vocab = model.get_input_embeddings().num_embeddings
    batch = {k: v.to(device) for k, v in synthetic_batch(spec, vocab).items()}
    loss_fn = default_loss_for(model)

    release()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    else:
        baseline = rss_bytes()
    times: list[float] = []

    def one_step() -> None:
        t0 = time.perf_counter()
        loss_fn(model(**model_inputs(batch)), batch).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)  # gradients are created (and counted) inside the step
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)

    for _ in range(max(0, spec.steps - 1)):
        one_step()  # warm-up: the optimiser state exists before the measured step
    if cuda:
        one_step()
        peak, retained = torch.cuda.max_memory_allocated(), torch.cuda.memory_allocated()
    else:
        # CPU: live tensor bytes of the last step from the profiler's memory events (not RSS, which keeps
        # the allocator's history): activations, gradients and temporaries allocated inside the step
        measured = step_peak(one_step, "cpu")
        peak, retained = baseline + measured.peak_bytes, baseline + measured.end_bytes
    hwm_ok = True
    out: dict[str, Any] = {
        "device": spec.device,
        "baseline_bytes": baseline,
        "peak_bytes": peak - baseline,
        "retained_bytes": retained - baseline,
        "hwm_reset": hwm_ok,
        "trainable_params": report.trainable,
        "total_params": report.total,
    }
    if spec.step_times:
        out["step_times_s"] = times
    if spec.saved_bytes:
        out["saved_activation_bytes"] = saved_activation_bytes(model, batch, loss_fn)
    return out


# ---- the parent side -----------------------------------------------------------------------------------


def _preload_modules() -> list[str]:
    """What the server imports once: the libraries (and their submodules) this process already uses."""
    roots = ("torch", "transformers", "peft", "peftkit")
    loaded = [m for m in sys.modules if m.split(".")[0] in roots and not m.startswith("peftkit.bench.demo")]
    return sorted(m for m in loaded if m.count(".") <= 3 and "._" not in m)


def measure_fresh(
    specs: Sequence[StepSpec], workers: int = 1, *, timeout_s: float = 900.0, progress: Any = None
) -> list[dict[str, Any]]:
    """``measure_step`` of every spec, each in a process of its own, at most ``workers`` at a time.

    Args:
        specs: what to measure.
        workers: children alive at once (each is its own process, so their memory never mixes).
        timeout_s: for the whole batch of specs.
        progress: an optional tqdm-like bar; ``update(1)`` is called as each spec finishes.

    Raises:
        ConfigError: a spec is wrong (unknown method or key).
        RuntimeError: a child failed otherwise (with the end of the server's stderr).
    """
    with tempfile.TemporaryDirectory(prefix="peftkit-mem-") as tmp:
        job = Path(tmp) / "job.json"
        job.write_text(json.dumps({"specs": [asdict(s) for s in specs], "workers": workers,
                                   "preload": _preload_modules()}))
        threads = max(s.threads for s in specs)
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
        err = open(Path(tmp) / "stderr.txt", "w+")  # noqa: SIM115  (closed below)
        proc = subprocess.Popen([sys.executable, "-m", "peftkit.bench._subproc", str(job), tmp],
                                stdout=subprocess.DEVNULL, stderr=err, env=env)
        deadline, done = time.monotonic() + timeout_s, set()
        while proc.poll() is None:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"memory measurement took over {timeout_s:.0f} s")
            time.sleep(0.2)
            finished = {p.name for p in Path(tmp).glob("[0-9]*.json")} - done
            if progress is not None and finished:
                progress.update(len(finished))
            done |= finished
        err.seek(0)
        stderr = err.read()
        err.close()
        results = []
        for i in range(len(specs)):
            f = Path(tmp) / f"{i}.json"
            if not f.is_file():
                raise RuntimeError(f"memory subprocess failed (exit {proc.returncode}):\n{stderr[-3000:]}")
            r = json.loads(f.read_text())
            if "config_error" in r:
                raise ConfigError(r["config_error"])
            if "error" in r:
                raise RuntimeError(f"memory measurement of spec {i} failed:\n{r['error'][-3000:]}")
            results.append(r)
        if progress is not None:
            progress.update(len(specs) - len(done))
        return results


# ---- the server side -----------------------------------------------------------------------------------


def _child(spec: StepSpec, out: Path) -> int:
    try:
        result, code = measure_step(spec), 0
    except PeftkitError as e:
        result, code = {"config_error": str(e)}, 2
    except BaseException:  # noqa: BLE001  (reported to the parent, which raises)
        result, code = {"error": traceback.format_exc()}, 1
    atomic_write_text(out, json.dumps(result))
    return code


def serve(job: dict[str, Any], out_dir: Path) -> int:
    """Import the preload modules, then fork one child per spec (at most ``workers`` at a time)."""
    for name in job.get("preload", []):
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001  (a module that does not import alone is simply not preloaded)
            pass
    names = {f.name for f in fields(StepSpec)}
    specs = [StepSpec(**{k: v for k, v in s.items() if k in names}) for s in job["specs"]]
    running: set[int] = set()
    worst = 0
    for i, spec in enumerate(specs):
        while len(running) >= max(1, int(job.get("workers", 1))):
            pid, status = os.wait()
            running.discard(pid)
            worst = max(worst, os.waitstatus_to_exitcode(status))
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: measure, write, leave without running the parent's exit handlers
            os._exit(_child(spec, out_dir / f"{i}.json"))
        running.add(pid)
    for pid in running:
        _, status = os.waitpid(pid, 0)
        worst = max(worst, os.waitstatus_to_exitcode(status))
    return worst


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m peftkit.bench._subproc JOB.json OUT_DIR", file=sys.stderr)
        return 2
    return serve(json.loads(Path(argv[0]).read_text()), Path(argv[1]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
