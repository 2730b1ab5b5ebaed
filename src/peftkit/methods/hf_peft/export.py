"""Export a LoRA / DoRA / IA3 model in Hugging Face peft's own format.

Writes ``adapter_model.safetensors`` + ``adapter_config.json`` that
``peft.PeftModel.from_pretrained(base, dir)`` reads on the unmodified base model: the adapter weights under
peft's key names (adapter name dropped, ``base_model.model.`` prefix) from peft's own
``get_peft_model_state_dict``, and the trained head as peft's ``modules_to_save`` entries. Written to a
temporary directory and renamed.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

from torch import nn

from peftkit.core.errors import UnsupportedError
from peftkit.core.io import atomic_dir, commit_dir
from peftkit.core.state import get_state
from peftkit.methods.hf_peft.targets import ADAPTER_NAME, task_type

EXPORTABLE = ("lora", "dora", "ia3")
_PREFIX = "base_model.model."


def export_peft(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Write ``model``'s LoRA / DoRA / IA3 adapter (and its trained head) in HF peft's format.

    Args:
        model: a model with exactly one of LoRA, DoRA or IA3 applied by ``pk.apply``.
        path: the output directory (replaced atomically if it exists).

    Returns:
        The directory written.

    Raises:
        UnsupportedError: the model's method stack is not a single LoRA / DoRA / IA3.
    """
    from peft.utils import SAFETENSORS_WEIGHTS_NAME, get_peft_model_state_dict
    from safetensors.torch import save_file

    state = get_state(model)
    names = state.method_names() if state else []
    if len(names) != 1 or names[0] not in EXPORTABLE:
        raise UnsupportedError(
            f"export_peft writes HF peft's format for a single {'/'.join(EXPORTABLE)} method; this model has "
            f"{names or 'no method'} applied (use pk.save_adapter for peftkit's own format)"
        )
    root = state.base
    cfg = copy.deepcopy(root.peft_config[ADAPTER_NAME])
    head = list(state.spec.head) if state.train_head else []
    cfg.modules_to_save = head or None
    cfg.task_type = task_type(root)
    cfg.base_model_name_or_path = getattr(getattr(root, "config", None), "_name_or_path", None) or None
    cfg.inference_mode = True

    adapter = get_peft_model_state_dict(root, adapter_name=ADAPTER_NAME)   # peft's own key names
    tensors = {f"{_PREFIX}{k}": v for k, v in adapter.items()}
    for h in head:
        for n, p in root.get_submodule(h).named_parameters():
            tensors[f"{_PREFIX}{h}.{n}"] = p
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}

    final = Path(path)
    tmp = atomic_dir(final)
    try:
        save_file(tensors, str(tmp / SAFETENSORS_WEIGHTS_NAME), metadata={"format": "pt"})
        cfg.save_pretrained(str(tmp))
        commit_dir(tmp, final)
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
