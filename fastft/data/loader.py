"""``fastft.data.load_data``: text-classification or token-classification data, by task.

The task is ``task`` when given, else detected from the data (:func:`fastft.data.tokens.detect_task`):
``conll2003``, CoNLL-style files and JSONL with a ``tokens`` list are token classification.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastft.core.checks import MAX_SEED, check_int
from fastft.core.errors import DataError, FastftError
from fastft.data import datasets, tokens
from fastft.data.datasets import DataSplits


def load_data(
    data: str,
    *,
    text_column: str = "text",
    label_column: str = "label",
    split_column: str = "split",
    seed: int = 42,
    encoding: str = "utf-8",
    limit: int | None = None,
    task: str | None = None,
    columns=None,
    min_classes: int = 2,
    grouped: bool = True,
) -> DataSplits:
    """Load a built-in dataset by name, or a data file, as :class:`DataSplits` (``.task`` says which).

    Args:
        data: ``movie-snippets``, ``sms-spam``, ``conll2003`` or a path (.csv/.tsv/.jsonl,
            .conll/.iob/.bio or any CoNLL-style file with ``task="token-classification"``).
        text_column, label_column: a file's columns; for token JSONL the keys of the words and
            tags [``tokens``, ``tags``].
        split_column: a file's split column (train/validation/test), used when present.
        seed: the seed of the split when the data has none.
        limit: keep at most this many rows (sentences) per split, for quick runs.
        task: ``sequence-classification``, ``token-classification`` or None (detected).
        columns: word and tag columns of a CoNLL-style file, e.g. ``"0,3"`` [first, last].
        min_classes: labels a text-classification file must hold (2 to train, 1 to evaluate).
        grouped: (text classification) copies of a text stay in one split; False for the per-row
            split of models trained before (:func:`recorded_args` chooses).
    """
    check_args(data, text_column, label_column, split_column, seed, encoding, limit, min_classes)
    data = os.fspath(data)  # a pathlib.Path is recorded (fastft.json) as the same string
    tokens.check_task(task)
    builtin = data in datasets.BUILTIN_DATASETS or data in tokens.TOKEN_DATASETS
    if builtin and (text_column, label_column) != ("text", "label"):  # once ignored, and recorded as used
        flag = "text_column (--text-column)" if text_column != "text" else "label_column (--label-column)"
        raise DataError(f"{flag} names a column of a data file; the built-in {data!r} has its own")
    resolved = task or tokens.detect_task(data)
    if columns is not None and resolved != tokens.TOKEN_CLASSIFICATION:
        raise DataError(
            f"columns (--columns) names the word and tag columns of token data; {data!r} is read as text classification"
        )
    if task == tokens.TOKEN_CLASSIFICATION and data in datasets.BUILTIN_DATASETS:
        raise DataError(
            f"{data!r} is a text-classification dataset; a token-classification model needs token data "
            f"({', '.join(tokens.TOKEN_DATASETS)}, a CoNLL-style file or JSONL with a tokens list)"
        )
    conll = resolved == tokens.TOKEN_CLASSIFICATION and datasets.file_kind(Path(data)) != ".jsonl"
    if conll and not builtin and (text_column, label_column) != ("text", "label"):  # ignored, recorded as used
        flag = "text_column (--text-column)" if text_column != "text" else "label_column (--label-column)"
        raise DataError(f"{flag} names a key of JSONL data; {data!r} is CoNLL-style: pick its columns with --columns")
    if resolved == tokens.TOKEN_CLASSIFICATION:
        return tokens.load_token_data(
            data,
            columns=columns,
            tokens_key=text_column if text_column != "text" else "tokens",
            tags_key=label_column if label_column != "label" else "tags",
            seed=seed,
            encoding=encoding,
            limit=limit,
        )
    try:
        return datasets.load_data(
            data,
            text_column=text_column,
            label_column=label_column,
            split_column=split_column,
            seed=seed,
            encoding=encoding,
            limit=limit,
            min_classes=min_classes,
            grouped=grouped,
        )
    except DataError:
        # asked for texts (a text classifier's data): token data is named as such, not as a file
        # that lacks a column; a JSONL with texts and labels beside its tokens loads as texts
        if tokens.detect_task(data) == tokens.TOKEN_CLASSIFICATION:
            raise DataError(
                f"{data!r} is token-classification data (words and their tags); a text classifier needs "
                "texts with one label each"
            ) from None
        raise


def check_args(data, text_column, label_column, split_column, seed, encoding, limit, min_classes) -> None:
    """load_data's arguments, each a one-line DataError naming it (the CLI checks its own flags)."""
    if isinstance(data, os.PathLike):
        data = os.fspath(data)
    if not isinstance(data, str) or not data.strip():
        raise DataError(f"data must be a dataset name or a file path (got {data!r})")
    for name, value in (
        ("text_column", text_column),
        ("label_column", label_column),
        ("split_column", split_column),
        ("encoding", encoding),
    ):
        if not isinstance(value, str) or not value:
            raise DataError(f"{name} must be a non-empty string (got {value!r})")
    if text_column == label_column:
        raise DataError(
            f"the text and the label column are the same ({text_column!r}): a model would learn its answers "
            "from its input; pass the text column with --text-column and the label column with --label-column"
        )
    try:
        check_int("seed", seed, lo=0, hi=MAX_SEED)
        check_int("limit", limit, lo=1, optional=True)
        check_int("min_classes", min_classes, lo=1)
    except FastftError as exc:  # data arguments are DataErrors
        raise DataError(str(exc)) from None


def recorded_args(
    model,
    spec: dict,
    data,
    *,
    task: str,
    seed: int = 42,
    text_column: str | None = None,
    label_column: str | None = None,
    columns=None,
) -> tuple[str, dict, bool]:
    """(data, load_data arguments, same) to read ``data`` (None: the training data fastft.json's
    ``spec`` records for ``model``; DataError if none) as the model's training run read it when it
    is that data (``same``: :func:`fastft.data.datasets.same_data`): its seed, columns (a token
    file's keys or CoNLL columns) and split rule; otherwise ``seed`` and the default columns.
    Arguments given win over recorded ones."""
    if data is None:
        data = spec.get("path") or spec.get("data")
        if data is None:
            raise DataError(f"{model} records no training data; pass data= (--data)")
    same = datasets.same_data(data, spec)
    token = task == tokens.TOKEN_CLASSIFICATION
    text_key, label_key = ("tokens_key", "tags_key") if token else ("text_column", "label_column")
    args = {
        "task": task,
        "seed": spec.get("seed", 42) if same else seed,
        "text_column": text_column or (spec.get(text_key, "text") if same else "text"),
        "label_column": label_column or (spec.get(label_key, "label") if same else "label"),
    }
    if token:
        recorded = ",".join(map(str, spec["columns"])) if same and spec.get("columns") else None
        args["columns"] = columns if columns is not None else recorded
    elif same and spec.get("splits") == datasets.SPLIT_BY_ROW:
        args["grouped"] = False  # trained before copies of a text were kept together: split as it was
    return data, args, same
