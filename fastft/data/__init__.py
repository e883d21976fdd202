"""Datasets: the built-in offline ones and generic csv/tsv/jsonl files; token classification
(conll2003, CoNLL-style and JSONL files) in :mod:`fastft.data.tokens`.

splits = load_data("movie-snippets")          # DataSplits
splits.labels                                  # ["negative", "positive"]
splits.train.texts, splits.train.labels        # list[str], list[int]
"""

from fastft.data.datasets import BUILTIN_DATASETS, DataSplits, Split
from fastft.data.loader import load_data

__all__ = ["BUILTIN_DATASETS", "DataSplits", "Split", "load_data"]
