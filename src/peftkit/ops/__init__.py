"""Point-cloud geometry ops (FPS, kNN, grouping, Chamfer) shared by the point data pipeline and backbones.

Layer 1: imports only ``peftkit.core`` and torch.
"""
