"""Shared ``nn`` modules that more than one method builds on (layer 1: imports only ``peftkit.core``)."""

from peftkit.layers.bottleneck import ACTIVATIONS, INITS, Bottleneck, QuickGELU, activation

__all__ = ["ACTIVATIONS", "INITS", "Bottleneck", "QuickGELU", "activation"]
