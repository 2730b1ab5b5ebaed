"""DEFT (density): a smooth-L0 loss on the MLP activations, the density metrics, and magnitude pruning.

Runwal, Pedapati, Chen, "From PEFT to DEFT", arXiv 2402.01911. Importing this package stays light: the
config is here; ``apply``, ``probe``, ``metrics`` import torch only.
"""

from peftkit.methods.deft.config import DEFT

__all__ = ["DEFT"]
