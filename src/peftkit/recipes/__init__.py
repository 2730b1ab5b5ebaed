"""Whole jobs built from the lower layers: Point-MAE pretraining, the P2-Bank builder, data fetchers.

Layer 5: recipes may import train, measure, backbones, methods, data, ops and core; only bench and the CLI sit
above them.
"""
