"""``apply_deft``: wrap every block's ``mlp_act`` in a DensityProbe and add the DeftLoss aux-loss module.

DEFT, "From PEFT to DEFT: Parameter Efficient Finetuning for Reducing Activation Density in Transformers"
(Runwal, Pedapati, Chen, arXiv 2402.01911):

    L = L_task + sum over stacks g of weight_g * mean over (b, l in g) of d[b, l]
    d[b, l] = mean over (t, j) of a_l[b, t, j]^2 / (a_l[b, t, j]^2 + eps)

with ``weight_encoder = config.weight`` (also the only stack of BERT / Llama / point models) and
``weight_decoder = config.decoder_weight`` (T5). Probe ``l`` of stack ``g`` gets ``coef = weight_g / L_g``,
so ``aux_loss = sum_l coef_l * mean_b d[b, l]``. Everything is undone by ``pk.remove``.
"""

from __future__ import annotations

from torch import nn

from peftkit.core.errors import ConfigError, UnsupportedError
from peftkit.core.params import owners
from peftkit.core.spec import BackboneSpec
from peftkit.core.state import Applied, get_state
from peftkit.core.surgery import UndoRecord
from peftkit.methods.deft.config import DEFT
from peftkit.methods.deft.loss import DeftLoss
from peftkit.methods.deft.masks import MaskContext
from peftkit.methods.deft.probe import DensityProbe
from peftkit.methods.deft.prune import magnitude_prune

LOSS_ATTR = "peftkit_deft"  # child of the backbone root holding the DeftLoss module


def registered(base: nn.Module, path: str, applied: list[str], who: str = "DEFT",
               role: str = "mlp_act") -> tuple[str, nn.Module]:
    """(registered path, module) of the module at the spec path ``path``.

    An earlier method may have wrapped a parent in a module that forwards attribute access to the original
    (``mlp`` -> ``mlp.base_layer``): the spec path still resolves, but the module is registered deeper, and
    that registered path is the one to replace.
    """
    try:
        mod = base.get_submodule(path)
    except AttributeError:
        raise UnsupportedError(
            f"{who} cannot reach the module at '{path}' (role {role})"
            + (f" after {applied}: that method replaced it" if applied else ": it is not a module there")
        ) from None
    parent_path, _, name = path.rpartition(".")
    if base.get_submodule(parent_path)._modules.get(name) is mod:
        return path, mod
    for found, m in base.named_modules(remove_duplicate=False):
        if m is mod:
            return found, mod
    raise UnsupportedError(f"{who} cannot reach '{path}': the module found there is not part of the model")


def _observed(base: nn.Module, path: str, applied: list[str]) -> tuple[str, nn.Module]:
    """(registered path, module) of the activation DEFT wraps at the spec path ``path``."""
    found, mod = registered(base, path, applied)
    if isinstance(mod, DensityProbe):
        raise ConfigError(f"DEFT already observes '{path}'")
    return found, mod


def apply_deft(model: nn.Module, spec: BackboneSpec, config: DEFT) -> Applied:
    """Put DEFT on ``model`` (in place). Trains nothing; ``pk.aux_loss(model)`` returns its term.

    Raises:
        UnsupportedError: the backbone has no ``mlp_act`` role, an earlier method removed the activation
            modules, or no applied method trains anything before the activations
            (``Applied.trains_before_mlp_act``, e.g. head-only).
        ConfigError: ``prune`` with a method that trains the base weights (``Applied.trains_base``: the
            pruned weights would train back).
    """
    state = get_state(model)
    base = state.base if state is not None else model
    applied = state.method_names() if state is not None else []
    prior = list(state.applied) if state is not None else []
    if not spec.has_role("mlp_act"):
        have = sorted({r for s in spec.stacks for r in s.roles})
        raise UnsupportedError(
            f"DEFT needs the 'mlp_act' role (the MLP activation module) but backbone family '{spec.family}' "
            f"does not define it; its roles are {have}. Add it to the BackboneSpec."
        )
    if prior and not any(a.trains_before_mlp_act for a in prior):
        raise UnsupportedError(
            f"DEFT with {applied}: no trainable parameter lies before any MLP activation, so the density "
            "loss cannot change anything; stack DEFT on a PEFT method (lora, adapter, prompt, prefix, ...)"
        )
    full = [a.name for a in prior if a.trains_base]
    if config.prune and full:
        raise ConfigError(f"DEFT prune with {full[0]}, which trains the base weights (they train back); "
                          "stack DEFT on a PEFT method")

    record = UndoRecord()
    encoder_decoder = len(spec.stacks) > 1
    probes: list[DensityProbe] = []
    try:
        ctx = MaskContext.install(base, spec, record)
        for s in spec.stacks:
            if "mlp_act" not in s.roles:
                continue
            paths = spec.role_paths(base, "mlp_act", stack=s.name)
            weight = config.decoder_weight if encoder_decoder and s.name == "decoder" else config.weight
            for spec_path in paths:
                path, act = _observed(base, spec_path, applied)
                probe = DensityProbe(
                    act, name=path, stack=s.name, eps=config.eps,
                    coef=weight / len(paths), ctx=ctx, exclude_padding=config.exclude_padding,
                    exclude_virtual_tokens=config.exclude_virtual_tokens,
                    centred=config.centre == "threshold", centre_q=config.centre_q,
                )
                record.replace(base, path, probe)
                probes.append(probe)
        record.add_module(base, LOSS_ATTR, DeftLoss(probes, ctx, check_finite=config.check_finite))
        if config.prune:
            owned = owners(model) if state is not None else {}
            magnitude_prune(base, spec, config.prune, record, exclude=owned)
    except BaseException:
        record.undo()
        raise
    return Applied("deft", config, undo=record.undo)


def deft_loss_module(model: nn.Module) -> DeftLoss | None:
    """The DeftLoss module inside ``model`` (None when DEFT is not applied)."""
    for m in model.modules():
        if isinstance(m, DeftLoss):
            return m
    return None


def deft_probes(model: nn.Module) -> list[DensityProbe]:
    """Every DensityProbe inside ``model``, in forward order of the stacks."""
    loss = deft_loss_module(model)
    return list(loss.probes) if loss is not None else []
