"""QLoRA on CPU: quantise the frozen Linear layers of every block to 4-bit NF4, then inject peft's LoRA.

Dettmers et al., "QLoRA: Efficient Finetuning of Quantized LLMs", arXiv 2305.14314, eq. 5:
    Y = X doubleDequant(c1, c2, W_nf4) + s * X L1 L2
      W_nf4 : the 4-bit base weight (``Params4bit`` / ``NF4Tensor``), frozen
      c1, c2: first / second level quantisation constants (``block_size`` / ``scaler_block_size``)
      L1 L2 : LoRA's A and B, s = alpha / r (peft's bnb LoRA layer)

Backends: ``bnb`` swaps each ``nn.Linear`` for ``bitsandbytes.nn.Linear4bit`` and sets
``model.is_loaded_in_4bit = True`` so peft dispatches its bnb LoRA layer; ``torchao`` keeps the ``nn.Linear``
and replaces its weight by an ``NF4Tensor`` (peft's generic LoRA layer then calls it). The head and the
modules a model keeps in fp32 (``_keep_in_fp32_modules``, e.g. T5's ``wo``) stay unquantised, as
transformers does for bitsandbytes; so do layers other methods already train. Undo restores the
original ``nn.Linear`` objects, whose weights were never modified.
"""

from __future__ import annotations

from torch import nn

from peftkit.core.errors import UnsupportedError
from peftkit.core.params import owners
from peftkit.core.spec import BackboneSpec
from peftkit.core.state import Applied, get_state
from peftkit.core.surgery import UndoRecord
from peftkit.methods.hf_peft.apply import inject_low_rank
from peftkit.methods.hf_peft.config import QLoRA
from peftkit.methods.hf_peft.resolve import resolve_targets
from peftkit.methods.hf_peft.targets import base_model, check_single_peft

_MISSING = object()


def _bnb_linear(lin: nn.Linear, config: QLoRA) -> nn.Module:
    import bitsandbytes as bnb

    q = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=lin.bias is not None,
                          compute_dtype=lin.weight.dtype, compress_statistics=config.double_quant,
                          quant_type=config.quant_type, device="meta")
    q.weight = bnb.nn.Params4bit(lin.weight.detach().clone(), requires_grad=False,
                                 quant_type=config.quant_type, blocksize=config.block_size,
                                 compress_statistics=config.double_quant)
    q.bias = lin.bias   # the frozen bias is shared, not copied
    return q.to(lin.weight.device)   # Params4bit quantises on .to(device)


def _torchao_linear(lin: nn.Linear, config: QLoRA, where: str) -> nn.Module:
    from torchao.quantization import to_nf4

    n = lin.weight.numel()
    if n % config.block_size or (n // config.block_size) % config.scaler_block_size:
        raise UnsupportedError(
            f"qlora (torchao): {where} has {n} weights; NF4 needs a multiple of block_size "
            f"({config.block_size}) whose block count is a multiple of scaler_block_size "
            f"({config.scaler_block_size}); lower them"
        )
    q = nn.Linear(lin.in_features, lin.out_features, bias=lin.bias is not None, device="meta")
    q.weight = nn.Parameter(to_nf4(lin.weight.detach(), config.block_size, config.scaler_block_size),
                            requires_grad=False)
    q.bias = lin.bias
    return q


def _quantisable(root: nn.Module, spec: BackboneSpec, owned: set[int]) -> list[str]:
    """Paths of the plain ``nn.Linear`` layers inside the blocks that no method trains."""
    keep = tuple(getattr(root, "_keep_in_fp32_modules", None) or ())
    paths = []
    for block in spec.block_paths(root):
        for name, m in root.get_submodule(block).named_modules():
            if type(m) is not nn.Linear or id(m.weight) in owned:
                continue
            if any(k in name.split(".") for k in keep):
                continue
            paths.append(f"{block}.{name}")
    return paths


def quantise_blocks(model: nn.Module, spec: BackboneSpec, config: QLoRA, record: UndoRecord) -> list[str]:
    """Replace the blocks' Linear layers by 4-bit ones (undo recorded). Returns the quantised paths."""
    root = base_model(model)
    if config.backend == "bnb":
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise UnsupportedError(
                "qlora backend 'bnb' needs bitsandbytes (pip install bitsandbytes==0.50.2), "
                "or use backend='torchao'"
            ) from None
        prev = root.__dict__.get("is_loaded_in_4bit", _MISSING)
        record.on_undo(lambda: root.__dict__.pop("is_loaded_in_4bit", None) if prev is _MISSING
                       else root.__dict__.__setitem__("is_loaded_in_4bit", prev))
        root.__dict__["is_loaded_in_4bit"] = True   # peft picks its bnb LoRA layer from this flag
    owned = set(owners(model)) if get_state(model) is not None else set()
    paths = _quantisable(root, spec, owned)
    for path in paths:
        if config.backend == "bnb":
            record.wrap(root, path, lambda lin: _bnb_linear(lin, config))
        else:
            record.wrap(root, path, lambda lin, p=path: _torchao_linear(lin, config, p))
    return paths


def apply_qlora(model: nn.Module, spec: BackboneSpec, config: QLoRA) -> Applied:
    """Quantise the frozen base Linear layers of every block, then LoRA on the target roles.

    Raises:
        UnsupportedError: a target role is not an ``nn.Linear`` (nothing bitsandbytes can quantise), the
            backend is missing, or (torchao) a weight's size does not fit the NF4 block sizes.
    """
    check_single_peft(model, "qlora")
    root = base_model(model)
    resolve_targets(root, spec, config.targets, (nn.Linear,), "qlora")   # validate before touching anything
    record = UndoRecord()
    try:
        quantise_blocks(model, spec, config, record)
    except BaseException:
        record.undo()
        raise
    return inject_low_rank(model, spec, config, "qlora", use_dora=False, record=record, mergeable=False)
