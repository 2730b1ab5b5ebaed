"""``pk.sparsify``: calibrated activation sparsity on the MLP activations, a method ``pk.remove`` undoes.

CATS (Lee et al., arXiv 2404.08763) / TEAL (Liu et al., arXiv 2408.14690): every block's ``mlp_act`` (for
gated MLPs the gate activation) is wrapped in an ``ActivationThreshold``; with ``fold_mean`` every
``mlp_out`` in a ``FoldedBias``. The thresholds (and shifts) are buffers listed in the ``Applied`` record, so
``pk.save_adapter`` writes them and ``pk.load_adapter`` checks them strictly (same layers, same shapes).

    model.eval()
    model = pk.sparsify(model, target_sparsity=0.9, calib=batches)   # batches: dicts of model inputs
    ...
    pk.remove(model)                                                  # undoes every applied method
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from peftkit.core.errors import ConfigError, UnsupportedError
from peftkit.core.spec import BackboneSpec, get_spec
from peftkit.core.state import Applied, get_state
from peftkit.core.surgery import UndoRecord
from peftkit.methods.deft.apply import registered
from peftkit.methods.deft.calibrate import calibrate, fold_means, thresholds_of
from peftkit.methods.deft.sparse_config import Sparsify
from peftkit.methods.deft.threshold import ActivationThreshold, FoldedBias


def _require_mlp_act(spec: BackboneSpec) -> None:
    if not spec.has_role("mlp_act"):
        have = sorted({r for s in spec.stacks for r in s.roles})
        raise UnsupportedError(
            f"sparsify needs the 'mlp_act' role (the MLP activation module) but backbone family "
            f"'{spec.family}' does not define it; its roles are {have}. Add it to the BackboneSpec."
        )


def apply_sparsify(model: nn.Module, spec: BackboneSpec, config: Sparsify) -> Applied:
    """Wrap every ``mlp_act`` in an uncalibrated ActivationThreshold (and ``mlp_out`` in a FoldedBias).

    ``pk.sparsify`` calibrates them afterwards; ``pk.load_adapter`` copies saved values into them.

    Raises:
        UnsupportedError: no ``mlp_act`` role, or it is already thresholded.
    """
    _require_mlp_act(spec)
    state = get_state(model)
    base = state.base if state is not None else model
    applied = state.method_names() if state is not None else []
    record = UndoRecord()
    layers: list[ActivationThreshold] = []
    folds: list[FoldedBias] = []
    try:
        for s in spec.stacks:
            if "mlp_act" not in s.roles:
                continue
            for spec_path in spec.role_paths(base, "mlp_act", stack=s.name):
                path, act = registered(base, spec_path, applied, who="sparsify")
                if any(isinstance(m, ActivationThreshold) for m in act.modules()):
                    raise UnsupportedError(f"sparsify: '{path}' is already thresholded")
                layer = ActivationThreshold(act, name=path, rule=config.rule)
                record.replace(base, path, layer)
                layers.append(layer)
            if config.fold_mean:
                for spec_path in spec.role_paths(base, "mlp_out", stack=s.name):
                    path, down = registered(base, spec_path, applied, who="sparsify", role="mlp_out")
                    width = getattr(down, "out_features", None)
                    if not isinstance(width, int):
                        raise UnsupportedError(f"sparsify fold_mean: '{path}' is not a linear layer")
                    fold = FoldedBias(down, width).to(next(down.parameters()).device)
                    record.replace(base, path, fold)
                    folds.append(fold)
        dev = next(base.parameters()).device
        for m in layers:
            m.to(dev)
    except BaseException:
        record.undo()
        raise
    buffers = [m.tau for m in layers] + [f.shift for f in folds]
    return Applied("sparsify", config, undo=record.undo, buffers=lambda: list(buffers),
                   trains_before_mlp_act=False)


def set_thresholds(model: nn.Module, thresholds: Mapping[str, Any]) -> None:
    """Copy ``{layer path: tau}`` into the model's thresholds (exactly its layers, one scalar each).

    Raises:
        ConfigError: other layer names (another backbone) or more than one value per layer (another width).
    """
    layers = {m.name: m for m in thresholds_of(model)}
    if set(thresholds) != set(layers):
        extra, missing = sorted(set(thresholds) - set(layers)), sorted(set(layers) - set(thresholds))
        raise ConfigError(
            f"sparsify thresholds do not fit this model (calibrated on another backbone?): unknown layers "
            f"{extra[:3]}, missing {missing[:3]}; pass one value per mlp_act layer: {sorted(layers)[:3]}..."
        )
    for name, value in thresholds.items():
        t = torch.as_tensor(value, dtype=torch.float32)
        if t.numel() != 1:
            raise ConfigError(f"sparsify threshold of '{name}' has {t.numel()} values, expected one a layer "
                              "(thresholds from another width?)")
        layers[name].tau.fill_(float(t))


def sparsify(model: nn.Module, target_sparsity: float = 0.5, calib: Iterable[Mapping[str, Any]] | None = None,
             rule: str = "magnitude", thresholds: Mapping[str, Any] | None = None, fold_mean: bool = False,
             allow_training: bool = False, keep_labels: bool = False) -> nn.Module:
    """Calibrate and install per-layer activation thresholds on ``model`` (in place); returns the model.

    Args:
        model: a backbone, optionally with methods applied (e.g. a trained LoRA model), in eval mode.
        target_sparsity: q, the fraction of MLP activations zeroed on the calibration tokens.
        calib: batches (dicts of model inputs; ``labels`` dropped unless ``keep_labels``); a few hundred
            tokens suffice.
        rule: ``"magnitude"`` (|a| < tau zeroed) or ``"sign"`` (pre-activation x < tau zeroed).
        thresholds: ``{mlp_act layer path: tau}`` instead of calibrating.
        fold_mean: fold the calibration mean of the zeroed units into the down-projection bias (needs calib).
        allow_training: sparsify a model in training mode (straight-through sparsity-aware fine-tuning).
        keep_labels: pass ``labels`` to the model during calibration (T5: the decoder's inputs).

    Raises:
        ConfigError: q outside [0, 1), an unknown rule, no or an empty calibration set, thresholds that do not
            fit the model, or a model in training mode without ``allow_training``.
        UnsupportedError: the backbone has no ``mlp_act`` role.
    """
    from peftkit.core.apply import apply, remove

    config = Sparsify(target_sparsity=target_sparsity, rule=rule, fold_mean=fold_mean,
                      allow_training=allow_training)
    if model.training and not allow_training:
        raise ConfigError("sparsify: the model is in training mode; call model.eval() first, or pass "
                          "allow_training=True for sparsity-aware fine-tuning")
    batches = list(calib) if calib is not None else None
    if batches is None and thresholds is None:
        raise ConfigError("sparsify needs calib=<batches> (to calibrate) or thresholds={layer: tau}")
    if batches is not None and not batches:
        raise ConfigError("sparsify: the calibration set is empty; pass a few batches (a few hundred tokens)")
    if fold_mean and batches is None:
        raise ConfigError("sparsify fold_mean needs calib=<batches> (the means come from calibration)")
    _require_mlp_act(get_spec(model))
    state = get_state(model)
    model = apply(model, config, train_head=state.train_head if state is not None else False)
    try:
        if thresholds is not None:
            set_thresholds(model, thresholds)
        if batches is not None:
            was = model.training
            model.eval()
            try:
                if thresholds is None:
                    calibrate(model, batches, config.target_sparsity, fold_mean, keep_labels)
                else:
                    fold_means(model, batches, keep_labels)
            finally:
                model.train(was)
    except BaseException:
        _undo_last(model, state is None, remove)
        raise
    return model


def _undo_last(model: nn.Module, created: bool, remove: Any) -> None:
    """Take back the sparsify just applied (everything when it created the peftkit state)."""
    if created:
        remove(model)
        return
    state = get_state(model)
    if state is not None and state.applied and state.applied[-1].name == "sparsify":
        state.applied.pop().undo()
