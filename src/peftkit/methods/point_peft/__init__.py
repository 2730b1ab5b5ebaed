"""Point-PEFT (Tang et al., AAAI 2024, arXiv 2310.03059): Point-prior Prompt + Geometry-aware Adapter.

``config.py`` is light (no torch import); the layers and ``apply_point_peft`` import lazily.
"""
