"""MEFT (reversible): Liao, Tan, Monz, "Make Pre-trained Model Reversible", NeurIPS 2023, arXiv 2306.00477."""
