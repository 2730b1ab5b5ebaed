"""Activation memory: bytes saved for backward, and the peak of a whole training step in a fresh process.

Why two numbers (docs/design.md, Measuring; MEFT, Liao et al., arXiv 2306.00477, claims "up to 84% less
activation memory than full fine-tuning"):

* ``saved_activation_bytes`` counts what autograd keeps alive between forward and backward. Every tensor an
  operation saves for backward (including ``ctx.save_for_backward`` of a custom ``autograd.Function`` such
  as MEFT's reversible backprop) passes through the pack hook of ``torch.autograd.graph.saved_tensors_hooks``.
  We count each distinct storage once (``untyped_storage().data_ptr()``), at its full ``nbytes()``, and
  leave out the storages of parameters and buffers (a frozen ``Linear`` saves its weight to compute
  grad-input, but that weight is resident anyway). Only storages still alive when the loss is ready count:
  a branch whose graph was dropped during forward holds no memory. The per-layer graphs MEFT rebuilds
  *during* backward are transient and not seen here; the step peak catches them.
* ``peak_step_memory`` runs K optimiser steps of a JSON-able ``StepSpec`` in a fresh process
  (``bench/_subproc.py``). CPU: baseline = resident set (``VmRSS``) once the model,
  optimiser and batch exist, before the first step; the kernel's high-water mark ``VmHWM`` is reset there
  (``/proc/self/clear_refs`` = 5) and read after the K steps; we report ``peak - baseline``. Where the HWM
  cannot be reset the peak is the largest ``VmRSS`` seen by a polling thread (flagged ``hwm_reset: false``).
  CUDA: ``torch.cuda.reset_peak_memory_stats`` at the baseline, ``max_memory_allocated`` after the steps.
  ``retained_bytes`` (what the process still holds after the steps: gradients and optimiser state) is
  reported beside it, so on CUDA ``peak - retained`` is the transient, activation-dominated part, as MEFT's
  code computes its "activation memory". On CPU the allocator keeps most freed heap resident, so there
  ``retained`` is close to ``peak`` and says little; use ``saved_activation_bytes`` for activations.

Shape legend: b batch, t tokens.
"""

from __future__ import annotations

import gc
import inspect
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from peftkit.core.errors import ConfigError

OUTSIDE = "(outside)"  # by_module key of tensors saved outside every module's forward (the loss)
# (model_output, batch) -> scalar loss; a one-argument (model_output) -> loss is accepted too.
LossFn = Callable[..., torch.Tensor]


# ---- saved tensors -------------------------------------------------------------------------------------


def default_loss_for(model: nn.Module) -> LossFn:
    """Cross-entropy of ``output.logits`` (or the output tensor) against ``batch["labels"]``, plus the
    auxiliary loss of ``model``'s methods (DEFT's density term), as a training step computes it."""
    from peftkit.core.apply import aux_loss

    def loss_fn(output: Any, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        logits = getattr(output, "logits", output)
        labels = batch["labels"]
        if logits.dim() == 3:  # causal LM: predict token t+1 from tokens <= t; logits (b, t, vocab)
            logits, labels = logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten()
        return nn.functional.cross_entropy(logits.float(), labels, ignore_index=-100) + aux_loss(model)

    return loss_fn


def model_inputs(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The keyword inputs of ``model(**inputs)``: the batch without its ``labels``."""
    return {k: v for k, v in batch.items() if k != "labels"}


def _storage_key(t: torch.Tensor) -> tuple[int, int]:
    """(data_ptr, nbytes) of the storage behind ``t``; tensors without one count at their own size."""
    try:
        s = t.untyped_storage()
        return s.data_ptr(), s.nbytes()
    except (RuntimeError, NotImplementedError):  # sparse / exotic subclasses
        return -id(t), t.numel() * t.element_size()


@dataclass
class SavedActivations:
    """What one forward + loss saved for backward.

    Attributes:
        bytes: distinct non-parameter storages alive after the forward, in bytes.
        tensors: pack-hook calls that counted (the same storage may be saved many times).
        storages: distinct storages counted.
        excluded_param_saves: pack-hook calls on parameter / buffer storages (not counted).
        by_module: bytes per innermost module path that saved them (``(outside)``: the loss, say;
            ``''``: the root module itself).
        by_dtype: bytes per dtype name.
    """

    bytes: int
    tensors: int
    storages: int
    excluded_param_saves: int
    by_module: dict[str, int] = field(default_factory=dict)
    by_dtype: dict[str, int] = field(default_factory=dict)


def saved_activations(
    model: nn.Module,
    batch: Mapping[str, torch.Tensor],
    loss_fn: LossFn | None = None,
    *,
    backward: bool = False,
) -> SavedActivations:
    """Run one forward + loss and account for every tensor saved for backward (see the module docstring).

    Args:
        model: called as ``model(**inputs)`` with the batch minus ``labels``; its train/eval mode is kept.
        batch: model inputs plus whatever ``loss_fn`` needs (``labels``).
        loss_fn: ``(model_output, batch) -> scalar`` or ``(model_output) -> scalar``; defaults to
            ``default_loss_for(model)`` (cross-entropy + ``pk.aux_loss``).
        backward: run ``loss.backward()`` afterwards (fills ``.grad``); otherwise the graph is just freed.

    Returns:
        A ``SavedActivations`` with the total and breakdowns by module and dtype.
    """
    loss_fn = loss_fn or default_loss_for(model)
    owned = {_storage_key(t)[0] for t in [*model.parameters(), *model.buffers()]}
    names = {id(m): n for n, m in model.named_modules()}
    stack: list[str] = []
    saved: list[tuple[weakref.ref[torch.Tensor], str]] = []
    excluded = 0

    def pre(mod: nn.Module, *_: Any) -> None:
        stack.append(names.get(id(mod), "?"))

    def post(mod: nn.Module, *_: Any) -> None:
        if stack:
            stack.pop()

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal excluded
        if _storage_key(t)[0] in owned:
            excluded += 1
        else:
            saved.append((weakref.ref(t), stack[-1] if stack else OUTSIDE))
        return t

    handles = [m.register_forward_pre_hook(pre) for m in model.modules()]
    handles += [m.register_forward_hook(post) for m in model.modules()]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(**model_inputs(batch))
            loss = loss_fn(out, batch) if _arity(loss_fn) != 1 else loss_fn(out)
    finally:
        for h in handles:
            h.remove()
    seen: set[int] = set()
    result = SavedActivations(0, 0, 0, excluded)
    for ref, where in saved:
        t = ref()
        if t is None:  # its graph was dropped during forward: it holds no memory now
            continue
        result.tensors += 1
        ptr, nbytes = _storage_key(t)
        if ptr in seen:
            continue
        seen.add(ptr)
        result.storages += 1
        result.bytes += nbytes
        result.by_module[where] = result.by_module.get(where, 0) + nbytes
        dt = str(t.dtype).removeprefix("torch.")
        result.by_dtype[dt] = result.by_dtype.get(dt, 0) + nbytes
    if backward and loss.requires_grad:
        loss.backward()
    saved.clear()
    del out, loss
    return result


def _arity(fn: Callable[..., Any]) -> int:
    """Positional parameters ``fn`` takes (2 when it cannot be told, e.g. a builtin)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 2
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return 2
    return sum(p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
               and p.default is inspect.Parameter.empty for p in params)


def saved_activation_bytes(
    model: nn.Module,
    batch: Mapping[str, torch.Tensor],
    loss_fn: LossFn | None = None,
    *,
    backward: bool = False,
) -> int:
    """Bytes of the distinct non-parameter tensors one forward + loss saves for backward.

    See ``saved_activations`` for the arguments and the breakdowns.
    """
    return saved_activations(model, batch, loss_fn, backward=backward).bytes


# ---- whole-step peak in a fresh process ----------------------------------------------------------------


@dataclass
class StepSpec:
    """A picklable (JSON) description of a training step to measure in a fresh process.

    The batch is synthetic and fixed: ``batch_size`` x ``seq_len`` random token ids (seeded), full attention
    mask, random labels; identical for every method so that only the method changes.
    """

    backbone: str
    methods: list[dict[str, Any]]
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    task: str = "classification"
    num_labels: int = 5
    batch_size: int = 16
    seq_len: int = 128
    steps: int = 3                 # K optimiser steps after the baseline; the first allocates optimiser state
    lr: float = 1e-4
    seed: int = 0
    device: str = "cpu"
    threads: int = 1
    saved_bytes: bool = True       # also run saved_activation_bytes (after the peak was read)
    step_times: bool = False       # also time the K steps (seconds each)


def method_configs(methods: list[dict[str, Any]]) -> list[Any]:
    """Method config dicts ``{name: lora, rank: 8}`` -> config dataclasses (unknown keys: ConfigError)."""
    from peftkit.core.configs import config_from_dict
    from peftkit.core.registry import get_method

    out = []
    for i, d in enumerate(methods):
        if "name" not in d:
            raise ConfigError(f"methods[{i}] has no 'name'; e.g. {{name: lora, rank: 8}}")
        entry = get_method(d["name"])
        values = {k: v for k, v in d.items() if k != "name"}
        out.append(config_from_dict(entry.config_cls, values, f"methods[{i}]"))
    return out


def synthetic_batch(spec: StepSpec, vocab_size: int) -> dict[str, torch.Tensor]:
    """The fixed batch of a StepSpec: ids (b, t) in [5, vocab), mask of ones, labels (b,) or ids for an LM."""
    g = torch.Generator().manual_seed(spec.seed)
    ids = torch.randint(5, vocab_size, (spec.batch_size, spec.seq_len), generator=g)  # (b, t)
    if spec.task == "causal_lm":
        labels = ids.clone()
    else:
        labels = torch.randint(spec.num_labels, (spec.batch_size,), generator=g)  # (b,)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def _read_kib(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def rss_bytes() -> int:
    """Current resident set size of this process (``VmRSS``; ``ru_maxrss`` where /proc is missing)."""
    v = _read_kib("VmRSS")
    if v is None:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return v


def reset_hwm() -> bool:
    """Reset the kernel's resident high-water mark (``VmHWM``); False where that is not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _read_kib("VmHWM") is not None
    except OSError:
        return False


def peak_step_memory(spec: StepSpec, *, timeout_s: float = 900.0) -> dict[str, Any]:
    """Measure ``spec`` in a fresh process (``python -m peftkit.bench._subproc``) and return its result.

    Returns:
        A dict with ``peak_bytes`` (peak over the baseline), ``baseline_bytes``, ``retained_bytes``,
        ``hwm_reset`` (False: the peak was sampled), ``device``, ``trainable_params`` and, when asked,
        ``saved_activation_bytes`` and ``step_times_s``.

    Raises:
        ConfigError: the spec is wrong (unknown method or key), as the child reported it.
        RuntimeError: the child failed otherwise; the message carries the end of its stderr.
    """
    from peftkit.bench._subproc import measure_fresh

    return measure_fresh([spec], workers=1, timeout_s=timeout_s)[0]


def release() -> None:
    """Drop collectable garbage (and cached CUDA blocks) before reading a baseline."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
