"""Backbones: Hugging Face text models (lazy: transformers is imported only when one is built) and the
pure-PyTorch point transformer. Importing this package registers them."""

from peftkit.backbones import hf  # noqa: F401  (registers the HF text backbones; imports only torch)
from peftkit.backbones import point as _point  # noqa: F401  (registers point_mae, point_mae_small, tiny_point)
