"""Export a LoRA / DoRA / IA3 model in Hugging Face peft's own format.

Writes ``adapter_model.safetensors`` + ``adapter_config.json`` that
``peft.PeftModel.from_pretrained(base, dir)`` reads on the unmodified base model: the adapter weights under
peft's key names (adapter name dropped, ``base_model.model.`` prefix) from peft's own
``get_peft_model_state_dict``, and the trained head as peft's ``modules_to_save`` entries. Written to a
temporary directory and renamed.

Parameter-free methods (DEFT's density loss) change training, not the trained weights: a LoRA trained with
DEFT exports as a plain peft LoRA, and ``peftkit_stack.json`` (also in the safetensors metadata under
``peftkit_stack``) records the whole stack, the class names and what peft does not run.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

from torch import nn

from peftkit.core.configs import config_to_dict
from peftkit.core.errors import UnsupportedError
from peftkit.core.io import atomic_dir, commit_dir
from peftkit.core.labels import label_names
from peftkit.core.state import get_state
from peftkit.methods.hf_peft.targets import ADAPTER_NAME, task_type

EXPORTABLE = ("lora", "dora", "ia3")
EXPORT_RECORD = "peftkit_stack.json"   # the whole method stack, incl. what peft does not run (deft)
_PREFIX = "base_model.model."


def export_peft(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Write ``model``'s LoRA / DoRA / IA3 adapter (and its trained head) in HF peft's format.

    Args:
        model: a model with exactly one of LoRA, DoRA or IA3 applied by ``pk.apply``, plus any number of
            parameter-free methods (DEFT).
        path: the output directory (replaced atomically if it exists).

    Returns:
        The directory written.

    Raises:
        UnsupportedError: the stack is not one LoRA / DoRA / IA3 plus parameter-free methods.
    """
    from peft.utils import SAFETENSORS_WEIGHTS_NAME, get_peft_model_state_dict
    from safetensors.torch import save_file

    state = get_state(model)
    names = state.method_names() if state else []
    peft_methods = [a for a in state.applied if a.name in EXPORTABLE] if state else []
    rest = [a for a in state.applied if a.name not in EXPORTABLE] if state else []
    carrying = [a.name for a in rest if a.params() or a.buffers()]
    if len(peft_methods) != 1 or carrying:
        raise UnsupportedError(
            f"export_peft writes HF peft's format for one {'/'.join(EXPORTABLE)} method plus parameter-free "
            f"methods (deft); this model has {names or 'no method'} applied"
            + (f", and {carrying} carry parameters peft cannot hold" if carrying else "")
            + " (use pk.save_adapter for peftkit's own format)"
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
    # What peft cannot run is recorded, not dropped silently: the full stack, and what was left out.
    record = {
        "exported": peft_methods[0].name,
        "parameter_free": [a.name for a in rest],
        "stack": [{"name": a.name, "config": config_to_dict(a.config)} for a in state.applied],
        "backbone": state.backbone_id,
        "id2label": {str(i): n for i, n in enumerate(label_names(root) or [])} or None,
    }

    final = Path(path)
    tmp = atomic_dir(final)
    try:
        save_file(tensors, str(tmp / SAFETENSORS_WEIGHTS_NAME),
                  metadata={"format": "pt", "peftkit_stack": json.dumps(record)})
        cfg.save_pretrained(str(tmp))
        (tmp / EXPORT_RECORD).write_text(json.dumps(record, indent=2))
        commit_dir(tmp, final)
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
