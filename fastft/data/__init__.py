"""Datasets: the built-in offline ones and generic csv/tsv/jsonl files.

splits = load_data("movie-snippets")          # DataSplits
splits.labels                                  # ["negative", "positive"]
splits.train.texts, splits.train.labels        # list[str], list[int]
"""

from fastft.data.datasets import BUILTIN_DATASETS, DataSplits, Split, load_data

__all__ = ["BUILTIN_DATASETS", "DataSplits", "Split", "load_data"]
