"""``fastft.json``: what a model directory is and what was done to it.

Keys written by the trainer: ``task``, ``labels``, ``data`` (the data spec, split seed),
``metrics`` (per split), ``training`` (arguments), ``versions``, ``history`` (one entry per
stage: train, export, compress...). Later stages add their own keys (``onnx``, ``compress``).

``task`` is one of :data:`TASKS`: ``sequence-classification`` (one label per text; also what a
directory without ``task`` is, for directories written before the key existed) or
``token-classification`` (one label per word: ``labels`` are the IOB2 tags in id order, e.g.
``O``, ``B-PER``, ``I-PER``; the weights are an ``AutoModelForTokenClassification`` and the
ONNX output ``logits`` is per token, (batch, sequence, labels)). Read it with :func:`task_of`.
"""

from __future__ import annotations

from pathlib import Path

from fastft.core.checks import MIN_MAX_LENGTH
from fastft.core.errors import ModelError
from fastft.core.io import read_json_object, write_json

META_FILE = "fastft.json"

SEQUENCE_CLASSIFICATION = "sequence-classification"
TOKEN_CLASSIFICATION = "token-classification"
TASKS = (SEQUENCE_CLASSIFICATION, TOKEN_CLASSIFICATION)


def read_meta(model_dir: str | Path, required: bool = False) -> dict:
    """The directory's fastft.json ({} when it has none), its serving keys checked (:func:`check_meta`)."""
    path = Path(model_dir) / META_FILE
    if not path.is_file():
        if required:
            raise ModelError(f"{model_dir} is not a fastft model directory (no {META_FILE})")
        return {}
    return check_meta(read_json_object(path), path)


def check_meta(meta: dict, path: str | Path) -> dict:
    """``meta`` unchanged if the keys that loading and serving read have the types fastft writes:
    ``labels`` a list of names, ``max_length`` an integer >= :data:`MIN_MAX_LENGTH`, ``onnx.default`` a
    file name in the directory itself. A hand-edited or foreign file gets one ModelError naming the key."""

    def bad(key: str, want: str, got) -> ModelError:
        return ModelError(f"{path}: {key} must be {want} (got {got!r:.80})")

    labels = meta.get("labels")
    if labels is not None and not (
        isinstance(labels, list) and all(isinstance(x, (str, int)) and not isinstance(x, bool) for x in labels)
    ):
        raise bad("labels", "a list of label names", labels)
    length = meta.get("max_length")
    if length is not None and (not isinstance(length, int) or isinstance(length, bool) or length < MIN_MAX_LENGTH):
        raise bad("max_length", f"an integer >= {MIN_MAX_LENGTH}", length)
    onnx = meta.get("onnx")
    if onnx is not None and not isinstance(onnx, dict):
        raise bad("onnx", "an object", onnx)
    default = (onnx or {}).get("default")
    if default is not None and (
        not isinstance(default, str) or Path(default).name != default or default in (".", "..") or "\\" in default
    ):
        raise bad("onnx.default", "the name of an ONNX file in the model directory", default)
    return meta


def write_meta(model_dir: str | Path, meta: dict) -> None:
    write_json(Path(model_dir) / META_FILE, meta)


def task_of(meta: dict) -> str:
    """The task of a model directory's metadata; no ``task`` key means sequence classification.

    An unknown task is a ModelError (a directory from a newer fastft, or edited by hand).
    """
    task = meta.get("task") or SEQUENCE_CLASSIFICATION
    if task not in TASKS:
        raise ModelError(f"{META_FILE} names the task {task!r}; this fastft knows {', '.join(TASKS)}")
    return task


def set_task(meta: dict, task: str) -> dict:
    """``meta`` with ``task`` set (checked against :data:`TASKS`); returns ``meta``."""
    if task not in TASKS:
        raise ModelError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    meta["task"] = task
    return meta
