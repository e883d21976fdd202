"""Load a fastft / Hugging Face classifier directory with what evaluation and export need."""

from __future__ import annotations

from pathlib import Path

from fastft.core.io import read_json_object
from fastft.core.schema import read_meta, task_of
from fastft.data.collate import clamp_max_length, tokenizer_max_length
from fastft.models.resolve import check_vocab, load_classifier, load_tokenizer, resolve_model
from fastft.models.task import model_task


def load_model_dir(model: str | Path):
    """(model, tokenizer, meta, max_length) of a fastft/Hugging Face directory; a local one's
    tokenizer is checked against its vocabulary (:func:`check_vocab`) before the weights load.
    (Its head's labels: :func:`fastft.models.task.head_labels`, which export and eval check first.)"""
    path = resolve_model(model)
    local = isinstance(path, Path)
    meta = read_meta(path) if local else {}
    config = read_json_object(path / "config.json") if local and (path / "config.json").is_file() else {}
    tokenizer = load_tokenizer(path)
    check_vocab(path, tokenizer, config.get("vocab_size"))
    net = load_classifier(path, task=model_task(path) if local else task_of(meta))
    if not local:  # a hub name: its config came with the weights
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
