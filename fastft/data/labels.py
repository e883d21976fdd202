"""Label ids of a data split re-mapped to a model's label order (evaluation, export checks, compress)."""

from __future__ import annotations

from fastft.core.errors import DataError
from fastft.data.datasets import Split


def align_labels(split: Split, data_labels: list[str], model_labels_: list[str]) -> Split:
    """Re-map a split's label ids from the data's label names to the model's label ids."""
    mapping = {}
    unseen = [n for n in data_labels if n not in model_labels_]
    used = {data_labels[i] for i in set(split.labels)}
    missing = sorted(used & set(unseen))
    if missing:
        raise DataError(
            f"evaluation labels {', '.join(map(repr, missing))} were not seen in training "
            f"(the model knows {', '.join(map(repr, model_labels_))})"
        )
    for i, n in enumerate(data_labels):
        if n in model_labels_:
            mapping[i] = model_labels_.index(n)
    return Split(split.texts, [mapping[y] for y in split.labels])


def align_tag_ids(split, data_labels: list[str], model_labels_: list[str]):
    """Token classification: re-map a TokenSplit's tag ids from the data's tag names to the model's."""
    from fastft.data.tokens import TokenSplit

    used = {data_labels[i] for tags in split.tags for i in tags}
    missing = sorted(used - set(model_labels_))
    if missing:
        raise DataError(
            f"evaluation tags {', '.join(map(repr, missing))} were not seen in training "
            f"(the model knows {', '.join(map(repr, model_labels_))})"
        )
    mapping = {i: model_labels_.index(n) for i, n in enumerate(data_labels) if n in model_labels_}
    return TokenSplit(split.tokens, [[mapping[t] for t in tags] for tags in split.tags])


def relabel_splits(splits, model_labels: list[str]):
    """``splits`` (a DataSplits) with its label ids re-mapped to ``model_labels``, a list holding
    every label of the data, in the order of a head the model already has (training goes on
    with that head instead of refusing it for another order, or for a label the data lacks)."""
    from dataclasses import replace

    from fastft.core.schema import TOKEN_CLASSIFICATION
    from fastft.data.datasets import SPLIT_NAMES

    align = align_tag_ids if splits.task == TOKEN_CLASSIFICATION else align_labels
    parts = {s: align(splits.split(s), splits.labels, model_labels) for s in SPLIT_NAMES}
    return replace(splits, labels=list(model_labels), **parts)


def warn_lacking(data_labels: list[str], model_labels_: list[str], data_name: str, model_name: str, effect: str):
    """Warn (once, naming up to five) about the labels ``model_labels_`` has and the data has no row of."""
    lacking = [name for name in model_labels_ if name not in data_labels]
    if lacking:
        import warnings

        shown = ", ".join(map(repr, lacking[:5])) + (" ..." if len(lacking) > 5 else "")
        warnings.warn(f"{data_name} has no row of {shown}, which {model_name} knows: {effect}", stacklevel=3)
