"""INT8 label agreement for ``fastft bench``: each INT8 backend against its own fp32, on real text.

A speed ratio between two INT8 graphs means little without what each gives up: the issue's
target is fastft's INT8 faster than the peer's *with label agreement at least the peer's*. The
random-token feeds of the timing loop say nothing about that, so every INT8 backend whose fp32
counterpart also ran labels the same held-out texts as it (the validation split of the data the
model's fastft.json records, else the built-in movie-snippets), padded per batch of similar
lengths, truncated at the model's serving length. Sequence classification only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# (INT8 backend, the fp32 backend of the same pipeline)
INT8_PAIRS = (("peer-int8", "peer-fp32"), ("fastft-int8", "fastft-fp32"))
DEFAULT_TEXTS = "movie-snippets"
FEEDS = ("input_ids", "attention_mask", "token_type_ids")  # every runner's prepare() keeps what it takes


def agreement_texts(model_dir: Path, limit: int) -> tuple[list[str], str]:
    """(up to ``limit`` validation texts, where from): the model's recorded data, else the built-in set."""
    from fastft.core.errors import FastftError
    from fastft.data import load_data
    from fastft.export.checks import data_for
    from fastft.models import read_meta

    splits, source = None, None
    try:
        splits, source = data_for(read_meta(model_dir), None)
    except FastftError:  # recorded data that is not on this machine: the built-in set instead
        splits = None
    if splits is None:
        splits, source = load_data(DEFAULT_TEXTS), DEFAULT_TEXTS
    return list(splits.validation.texts[:limit]), f"{source} (held-out validation split)"


def labels_of(runner, tokenizer, texts: list[str], max_length: int) -> np.ndarray:
    """The argmax label of each text from one bench runner, batched by length, in input order."""
    from fastft.export.validate import batched_logits

    def run(feeds):
        return runner.run(runner.prepare(feeds))

    return batched_logits(run, tokenizer, texts, FEEDS, max_length).argmax(1)


def int8_agreements(runners: dict, tokenizer, texts: list[str], source: str, max_length: int) -> dict:
    """{INT8 backend: {reference, label_agreement, n, texts, max_length}} for each pair that ran."""
    pairs = [(q, f) for q, f in INT8_PAIRS if q in runners and f in runners]
    labels = {n: labels_of(runners[n], tokenizer, texts, max_length) for n in {n for p in pairs for n in p}}
    return {
        q: {
            "reference": f,
            "label_agreement": round(float((labels[q] == labels[f]).mean()), 4),
            "n": len(texts),
            "texts": source,
            "max_length": max_length,
        }
        for q, f in pairs
    }
