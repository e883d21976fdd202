"""Load a fastft / Hugging Face classifier directory with what evaluation and export need."""

from __future__ import annotations

from pathlib import Path

from fastft.core.io import read_json_object
from fastft.core.schema import read_meta, task_of
from fastft.data.collate import clamp_max_length, tokenizer_max_length
from fastft.models.resolve import check_vocab, load_classifier, load_tokenizer, resolve_model
from fastft.models.task import head_labels, model_task


def load_model_dir(model: str | Path):
    """(model, tokenizer, meta, max_length) of a fastft/Hugging Face directory."""
    path = resolve_model(model)
    meta = read_meta(path) if isinstance(path, Path) else {}
    if isinstance(path, Path) and (path / "config.json").is_file():  # the labels it serves, checked first
        head_labels(path, meta, read_json_object(path / "config.json"))
    net = load_classifier(path, task=model_task(path) if isinstance(path, Path) else task_of(meta))
    tokenizer = load_tokenizer(path)
    check_vocab(path, tokenizer, getattr(net.config, "vocab_size", None))
    max_length = meta.get("max_length")
    if max_length is None:
        max_length = tokenizer_max_length(tokenizer, net.config)
    max_length = clamp_max_length(max_length, net.config)
    return net, tokenizer, meta, max_length


def model_labels(net) -> list[str]:
    """The label names of a classifier, in its id order (config.id2label)."""
    id2label = net.config.id2label or {}
    return [str(id2label.get(i, id2label.get(str(i), i))) for i in range(net.config.num_labels)]
