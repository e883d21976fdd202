"""Evaluation (PyTorch weights or the served ONNX model) and PyTorch prediction of a fastft directory."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fastft.core.checks import setting
from fastft.core.errors import DataError, FastftError
from fastft.core.io import read_json_object
from fastft.core.numerics import check_finite
from fastft.core.schema import SEQUENCE_CLASSIFICATION
from fastft.data.collate import sorted_batches
from fastft.data.labels import align_labels
from fastft.models.model_dir import load_model_dir, model_labels
from fastft.models.task import head_labels

_ORT_BACKEND = setting(("backend='onnxruntime'", "--backend onnxruntime"))


def run_eval(
    net, tokenizer, split, max_length: int, batch_size: int = 64, progress: bool = True, finite: bool = False
) -> dict:
    """Metrics and mean cross-entropy loss of ``net`` on a :class:`fastft.data.Split`. ``finite``:
    NaN or inf scores are a ModelError (evaluating a saved model), not a NaN loss (training, where
    a diverged run is said as such)."""
    logits = batched_logits(net, tokenizer, split.texts, max_length, batch_size, progress)
    return scores(check_finite(logits) if finite else logits, split.labels)


def scores(logits: np.ndarray, labels: list[int]) -> dict:
    """Metrics and mean cross-entropy loss of (n, num_labels) ``logits`` against label ids."""
    from fastft.train.metrics import classification_metrics

    labels = np.asarray(labels)
    shifted = logits - logits.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    probs = np.exp(logp)
    out = classification_metrics(labels, probs, logits.shape[1])
    out["loss"] = float(-logp[np.arange(len(labels)), labels].mean()) if len(labels) else 0.0
    return out


def batched_logits(
    net, tokenizer, texts: list[str], max_length: int, batch_size: int = 64, progress: bool = False
) -> np.ndarray:
    """Logits for ``texts``, batched by length (less padding), returned in input order."""
    import torch

    out = np.zeros((len(texts), net.config.num_labels), dtype=np.float32)
    net.eval()
    with torch.inference_mode():
        for idx in sorted_batches([len(t) for t in texts], batch_size, desc="evaluating", progress=progress):
            enc = tokenizer(
                [texts[i] for i in idx], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            )
            out[idx] = net(**enc).logits.float().numpy()
    return out


BACKENDS = ("auto", "onnxruntime", "torch")


def evaluate(
    model: str | Path,
    data: str | None = None,
    split: str = "test",
    *,
    batch_size: int = 64,
    max_length: int | None = None,
    text_column: str | None = None,
    label_column: str | None = None,
    encoding: str = "utf-8",
    limit: int | None = None,
    progress: bool = True,
    backend: str = "auto",
    int8: bool | None = None,
    columns=None,
    decode: str = "viterbi",
) -> dict:
    """Metrics of a model directory on a data split (default: the data it was trained on).

    backend: ``auto`` scores what ``fastft predict`` / ``fastft.load`` serve: the ONNX model
    with ONNX Runtime when the directory has one (``model_int8.onnx`` when fastft.json names it
    the default), else the PyTorch weights; ``onnxruntime`` or ``torch`` choose. int8: score
    ``model_int8.onnx`` (True) or ``model.onnx`` (False) with ONNX Runtime. A missing or corrupt
    ONNX file is a ModelError. limit: score at most this many rows of the split.
    A token-classification directory is scored with entity metrics (seqeval; see
    :mod:`fastft.train.token_eval`); columns: a CoNLL file's word and tag columns; decode:
    ``viterbi`` (the best valid IOB2 sequence, what ``fastft predict`` serves) or ``argmax``.
    """
    from fastft.core.checks import arg, check_bool, check_int, check_max_length, check_path

    check_path("model", model)
    check_path("data", data, "a dataset name or a data file", optional=True)
    check_int(arg("batch_size"), batch_size, lo=1)
    check_max_length(arg("max_length"), max_length)
    check_int(arg("limit"), limit, lo=1, optional=True)
    if backend not in BACKENDS:
        raise FastftError(f"backend must be one of {', '.join(BACKENDS)} (got {backend!r})")
    from fastft.data.iob import check_decode, check_decode_for

    check_decode(decode)
    check_bool("int8", int8, optional=True)
    check_bool("progress", progress)
    from fastft.runtime.load import served_backend

    backend = served_backend(model, backend, int8)
    from fastft.core.schema import TOKEN_CLASSIFICATION, task_of
    from fastft.models import read_meta, resolve_model

    path = resolve_model(model)
    meta = read_meta(path) if isinstance(path, Path) else {}
    check_decode_for(decode, task_of(meta) == TOKEN_CLASSIFICATION)
    if task_of(meta) != TOKEN_CLASSIFICATION:  # a text classifier's: it was ignored
        if columns is not None:
            raise FastftError(
                "columns (--columns) picks the word and tag columns of token data: this model classifies whole texts"
            )
    if task_of(meta) == TOKEN_CLASSIFICATION:
        from fastft.train.token_eval import evaluate_tokens

        res = evaluate_tokens(
            path,
            meta,
            data,
            split,
            backend=backend,
            int8=int8,
            batch_size=batch_size,
            max_length=max_length,
            columns=columns,
            text_column=text_column,
            label_column=label_column,
            encoding=encoding,
            limit=limit,
            decode=decode,
        )
        return {**res, "model": str(model)}
    if backend == "onnxruntime":
        return _evaluate_ort(
            model,
            data,
            split,
            batch_size=batch_size,
            max_length=max_length,
            text_column=text_column,
            label_column=label_column,
            encoding=encoding,
            limit=limit,
            int8=int8,
        )
    from fastft.data.collate import clamp_max_length

    local = isinstance(path, Path) and (path / "config.json").is_file()
    loaded = None if local else load_model_dir(model)  # a hub name: its labels come with its weights
    labels = head_labels(path, meta, read_json_object(path / "config.json")) if local else model_labels(loaded[0])
    # the data first: a split refused before a local model's weights load
    part, data = _eval_split(model, meta, data, split, text_column, label_column, encoding, limit, labels)
    net, tokenizer, meta, default_len = loaded or load_model_dir(model)
    length = clamp_max_length(max_length, net.config) if max_length else default_len
    metrics = run_eval(net, tokenizer, part, length, batch_size, progress, finite=True)
    return {"model": str(model), "data": str(data), "split": split, "max_length": length, "backend": "torch", **metrics}


def _evaluate_ort(
    model, data, split, *, batch_size, max_length, text_column, label_column, encoding, limit, int8
) -> dict:
    """evaluate() with the ONNX model that ONNX Runtime serves."""
    import warnings

    from fastft.models import read_meta, resolve_model
    from fastft.runtime import TruncationWarning, load

    path = resolve_model(model)
    if not isinstance(path, Path):
        raise FastftError(f"model {model!r} is not a local directory; {_ORT_BACKEND} needs a model directory")
    meta = read_meta(path)
    pred = load(path, backend="onnxruntime", int8=int8, max_length=max_length, batch_size=batch_size, warm_up=False)
    part, data = _eval_split(model, meta, data, split, text_column, label_column, encoding, limit, pred.labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncationWarning)  # eval truncates like training did
        logits = pred._logits(part.texts, batch_size)
    return {
        "model": str(model),
        "data": str(data),
        "split": split,
        "max_length": pred.max_length,
        "backend": "onnxruntime",
        "file": pred.onnx_file.name,
        **scores(logits, part.labels),
    }


def _eval_split(
    model, meta: dict, data, split: str, text_column, label_column, encoding: str, limit, labels: list[str]
):
    """(split with label ids of ``labels``, data name) for evaluation."""
    from fastft.data import load_data
    from fastft.data.datasets import check_unchanged
    from fastft.data.loader import recorded_args

    spec = meta.get("data", {})
    data, args, same = recorded_args(
        model, spec, data, task=SEQUENCE_CLASSIFICATION, text_column=text_column, label_column=label_column
    )
    splits = load_data(data, **args, encoding=encoding, min_classes=1)  # one class is still a test set
    if same:
        check_unchanged(splits, spec)
    part = align_labels(splits.split(split).subset(limit), splits.labels, labels)
    if len(part) == 0:
        raise DataError(f"the {split} split of {data!r} is empty")
    return part, data


def predict(model: str | Path, texts: list[str], batch_size: int = 64) -> list[dict]:
    """Each text's label, score and class probabilities from the model's PyTorch weights, as
    ``fastft.load(model, backend="torch")`` serves them: one ``{text, label, score,
    probabilities}`` row per text; a token-classification model gives ``{text, entities}`` rows
    (character spans, as its ``predict``).

    The texts are checked as :func:`fastft.load`'s ``predict`` checks them: an empty text, one
    with no tokens or one that is not valid Unicode (e.g. a lone surrogate) is an error naming
    its index (from 0); nothing is replaced silently (see :mod:`fastft.data.text`).
    """
    from fastft.core.checks import check_path
    from fastft.runtime import load
    from fastft.runtime.base import check_texts

    check_path("model", model, "a model directory")
    texts = check_texts(texts)  # before the weights load
    pred = load(model, backend="torch", batch_size=batch_size)
    if pred.per_token:
        return [{"text": t, "entities": e} for t, e in zip(texts, pred.predict(texts))]
    return prediction_rows(texts, pred.predict_proba(texts), pred.labels)


def prediction_rows(texts: list[str], probs: np.ndarray, labels: list[str]) -> list[dict]:
    """One {text, label, score, probabilities} row per text from class probabilities."""
    return [
        {
            "text": t,
            "label": labels[int(p.argmax())],
            "score": float(p.max()),
            "probabilities": {labels[j]: float(p[j]) for j in range(len(labels))},
        }
        for t, p in zip(texts, probs)
    ]
