"""Datasets: text (BBC News, CSV/JSONL, GLUE, SQuAD) and point clouds. Importing registers them."""
