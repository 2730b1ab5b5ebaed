"""Hugging Face transformers backbones: family specs (``specs``), model building (``loading``), the
packaged pretrained models and their tokenizers (``packaged``) and tiny random test models (``tiny``).

Importing this package registers the backbones; transformers itself is imported only when one is built.
"""

from peftkit.backbones.hf import packaged, tiny  # noqa: F401  (registers the backbones)
from peftkit.backbones.hf.loading import cache_dir, finish
from peftkit.backbones.hf.packaged import load_tokenizer, minilm_path, register_tokenizer
from peftkit.backbones.hf.specs import register_hf_family, spec_for_hf_model, supported_families

__all__ = ["cache_dir", "finish", "load_tokenizer", "minilm_path", "register_tokenizer", "register_hf_family",
           "spec_for_hf_model", "supported_families"]
