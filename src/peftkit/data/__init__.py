"""Datasets: text (BBC News, CSV/JSONL, GLUE, SQuAD) and point clouds. Importing registers them."""

from peftkit.data import drugreview, glue, text, text_file  # noqa: F401,E402  (text datasets; transformers lazily)
from peftkit.data.points import dataset as _points  # noqa: F401,E402  (point-cloud datasets)
