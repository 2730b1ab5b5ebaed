"""Prompt tuning and prefix tuning through peft's ``PeftModel`` wrapper (peft needs it for prompt learning).

    Prompt tuning (Lester et al. 2021): input embeddings X_e (b, t, d) become [P_e; X_e], P_e (p, d) trained.
    Prefix tuning (Li & Liang 2021, eq. 3-5): every attention layer attends to [P_k; K] and [P_v; V], the
        prefixes P (p, L * 2 * d_kv) trained directly or through an MLP P = MLP(P') when ``projection``.
    (b batch, t tokens, p virtual tokens, d width, L layers, d_kv key/value width)

``Applied.model`` is the wrapper: ``pk.apply`` returns it as the model to train. peft copies the task head
into ``modules_to_save`` and trains the copy; ``Applied.head_params`` points peftkit at that copy, so the head
that is counted, saved and trained is the one that runs. Undo copies the trained head back into the
original module, puts the original modules back and drops the wrapper.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import nn

from peftkit.core.errors import ConfigError, UnsupportedError
from peftkit.core.spec import BackboneSpec
from peftkit.core.state import Applied, get_state
from peftkit.core.surgery import UndoRecord, get_module, set_module
from peftkit.methods.hf_peft.config import PrefixTuning, PromptTuning
from peftkit.methods.hf_peft.targets import ADAPTER_NAME, check_single_peft, task_type


def _task_type(model: nn.Module, name: str, spec: BackboneSpec) -> str:
    transformers = sys.modules.get("transformers")
    if transformers is None or not isinstance(model, transformers.PreTrainedModel):
        raise UnsupportedError(
            f"'{name}' runs through peft's prompt learning, which needs a Hugging Face transformers model; "
            f"{type(model).__name__} (family '{spec.family}') is not one. Use an HF backbone, or a method "
            "of peftkit's own (adapter; point_peft for point clouds)"
        )
    task = task_type(model)
    if task not in ("SEQ_CLS", "CAUSAL_LM", "SEQ_2_SEQ_LM"):
        raise UnsupportedError(
            f"'{name}': {type(model).__name__} is not a classification, causal-LM or seq2seq model; load the "
            "backbone with task='classification' or 'causal_lm'"
        )
    return task


def _default_tokenizer(model: nn.Module) -> str:
    """The backbone's own tokenizer: the folder a transformers model was loaded from (``name_or_path``)."""
    folder = str(getattr(model, "name_or_path", "") or "")
    if not folder:
        state = get_state(model)
        bid = state.backbone_id if state else type(model).__name__
        raise ConfigError(
            f"PromptTuning.init='text' on backbone '{bid}', which was not loaded from a folder with a "
            "tokenizer: set PromptTuning.tokenizer to a tokenizer folder"
        )
    return folder


def _head_params(root: nn.Module, spec: BackboneSpec) -> list[nn.Parameter]:
    from peft.utils.other import ModulesToSaveWrapper

    out: list[nn.Parameter] = []
    for path in spec.head:
        m = get_module(root, path)
        out.extend(m.modules_to_save[ADAPTER_NAME].parameters() if isinstance(m, ModulesToSaveWrapper)
                   else m.parameters())
    return out


def _restore_heads(root: nn.Module) -> None:
    """Copy each trained head copy back into its original module and put the original in place."""
    from peft.utils.other import ModulesToSaveWrapper

    wrapped = [(n, m) for n, m in root.named_modules() if isinstance(m, ModulesToSaveWrapper)]
    for path, w in wrapped:
        with torch.no_grad():
            w.original_module.load_state_dict(w.modules_to_save[ADAPTER_NAME].state_dict())
        set_module(root, path, w.original_module)


def _wrap(model: nn.Module, spec: BackboneSpec, name: str, peft_config: Any, config: Any,
          virtual_tokens: int) -> Applied:
    """Wrap ``model`` in peft's ``PeftModel``; ``virtual_tokens`` are the positions prepended to every
    sequence that pass through the blocks (prompt tuning; 0 for prefix tuning, whose prefixes live only in
    the attention keys / values)."""
    from peft import get_peft_model

    root = model
    record = UndoRecord()
    record.on_undo(lambda: _restore_heads(root))
    try:
        wrapper = get_peft_model(root, peft_config, adapter_name=ADAPTER_NAME)
    except IndexError:
        record.undo()
        raise ConfigError(f"{name}: the init text's token ids exceed the model's vocabulary; "
                          "set a tokenizer that matches the backbone") from None
    except BaseException:
        record.undo()
        raise
    params = list(wrapper.prompt_encoder[ADAPTER_NAME].parameters())
    return Applied(name, config, params=lambda: list(params), undo=record.undo, model=wrapper,
                   head_params=lambda: _head_params(root, spec), virtual_tokens=virtual_tokens)


def _check(model: nn.Module, name: str) -> None:
    check_single_peft(model, name)
    state = get_state(model)
    if state is not None and state.base is not model:
        raise UnsupportedError(f"'{name}' must wrap the base model, but it is already wrapped")


def apply_prompt(model: nn.Module, spec: BackboneSpec, config: PromptTuning) -> Applied:
    """Prompt tuning (peft ``PromptTuningConfig``); returns the wrapper through ``Applied.model``."""
    from peft import PromptTuningConfig

    _check(model, "prompt")
    task = _task_type(model, "prompt", spec)
    text = config.init == "text"
    peft_config = PromptTuningConfig(
        task_type=task, num_virtual_tokens=config.num_virtual_tokens,
        prompt_tuning_init="TEXT" if text else "RANDOM",
        prompt_tuning_init_text=config.init_text if text else None,
        tokenizer_name_or_path=(config.tokenizer or _default_tokenizer(model)) if text else None,
        modules_to_save=list(spec.head) or None,
    )
    return _wrap(model, spec, "prompt", peft_config, config, virtual_tokens=config.num_virtual_tokens)


def apply_prefix(model: nn.Module, spec: BackboneSpec, config: PrefixTuning) -> Applied:
    """Prefix tuning (peft ``PrefixTuningConfig``); returns the wrapper through ``Applied.model``."""
    from peft import PrefixTuningConfig

    _check(model, "prefix")
    task = _task_type(model, "prefix", spec)
    peft_config = PrefixTuningConfig(
        task_type=task, num_virtual_tokens=config.num_virtual_tokens, prefix_projection=config.projection,
        encoder_hidden_size=config.projection_dim, modules_to_save=list(spec.head) or None,
    )
    return _wrap(model, spec, "prefix", peft_config, config, virtual_tokens=0)
