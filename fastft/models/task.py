"""The task of a model directory: fastft.json's ``task``, else what its config's head says.

A directory written by fastft names its task in fastft.json (:func:`fastft.core.schema.task_of`).
One written by transformers or Optimum has no fastft.json: its ``config.json`` architectures
(``BertForTokenClassification``...) say whether it tags tokens, so it is never loaded with the
wrong head.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastft.core.errors import ModelError
from fastft.core.io import read_json_object
from fastft.core.schema import TOKEN_CLASSIFICATION, read_meta, task_of


def task_from(meta: dict, config: dict) -> str:
    """The task given fastft.json's ``meta`` and config.json's ``config`` (either may be empty)."""
    if "task" not in meta:
        archs = config.get("architectures") or []
        if any(str(a).endswith("ForTokenClassification") for a in archs):
            return TOKEN_CLASSIFICATION
    return task_of(meta)


def model_task(path: str | os.PathLike) -> str:
    """The task of the model directory ``path``; ModelError if it is not a directory."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise ModelError(f"model directory {p} does not exist" if not p.exists() else f"{p} is not a directory")
    cfg = p / "config.json"
    return task_from(read_meta(p), read_json_object(cfg) if cfg.is_file() else {})


def check_head(path, meta: dict, config: dict) -> list[str]:
    """:func:`head_labels` of a directory that has a trained head for its task (config.json's
    architectures name a ``*ForSequenceClassification`` or ``*ForTokenClassification``, or list
    none while fastft.json names the labels), else a one-line ModelError: a base encoder would get a
    head of random weights."""
    archs = [str(a) for a in config.get("architectures") or []]
    task = task_from(meta, config)
    head = "ForTokenClassification" if task == TOKEN_CLASSIFICATION else "ForSequenceClassification"
    if not any(a.endswith(head) for a in archs) and (archs or not meta.get("labels")):
        raise ModelError(
            f"{path} has no {task} head (architectures: {', '.join(archs) or 'none'}; a base encoder?); "
            f"fine-tune it first: fastft train --model {path} --output DIR"
        )
    return head_labels(path, meta, config)


def generic_labels(names: list[str]) -> bool:
    """transformers' placeholder names ``LABEL_0``, ``LABEL_1``...: a head whose labels nobody named."""
    return names == [f"LABEL_{i}" for i in range(len(names))]


_NOT_SERVED = {"regression": "a regression score", "multi_label_classification": "several labels per text (sigmoid)"}


def head_labels(path, meta: dict, config: dict) -> list[str]:
    """The label names of the classifier at ``path``, logit by logit, checked (ModelError, one line)
    so that no label can be served under another's name: config.json's ``id2label`` keys are
    0..n-1; where fastft.json names labels too, both lists agree, order included (label i is logit
    i; an ``id2label`` left at transformers' ``LABEL_i`` names none); names are unique; the head
    is single-label classification (fastft serves a softmax over it); a token classifier's tags
    are IOB2 (``O``, ``B-TYPE``, ``I-TYPE``) with an ``O``."""
    task = task_from(meta, config)
    kind = config.get("problem_type")
    if kind in _NOT_SERVED:
        raise ModelError(
            f"{path} is a {kind} model ({_NOT_SERVED[kind]}); fastft serves single-label classifiers, "
            "one softmax over the labels"
        )
    id2label = config.get("id2label")
    named: list[str] | None = None
    if isinstance(id2label, dict) and id2label:
        try:
            keys = sorted(int(k) for k in id2label)
        except (TypeError, ValueError):
            raise ModelError(
                f"{path}: config.json id2label keys must be the label ids 0, 1, ... (got {list(id2label)[:4]})"
            ) from None
        if keys != list(range(len(keys))):
            raise ModelError(f"{path}: config.json id2label keys must be 0..{len(keys) - 1} (got {keys[:6]})")
        by_id = {int(k): str(v) for k, v in id2label.items()}
        named = [by_id[i] for i in keys]
    n_head = config.get("num_labels")
    if not isinstance(n_head, int) or isinstance(n_head, bool) or n_head < 1:  # config.json rarely holds it
        n_head = len(named) if named else None
    labels = meta.get("labels")
    if isinstance(labels, list) and labels:
        labels = [str(x) for x in labels]
        if isinstance(n_head, int) and n_head != len(labels):
            raise ModelError(
                f"{path}: fastft.json names {len(labels)} labels ({', '.join(labels)[:80]}) but the head in "
                f"config.json has {n_head} outputs"
            )
        if named is not None and named != labels and not generic_labels(named):
            raise ModelError(
                f"{path}: fastft.json names the labels {labels} and config.json's id2label {named}"[:300]
                + "; label i is the head's output i, so they must agree, order included"
            )
    else:
        labels = named or [f"LABEL_{i}" for i in range(int(n_head or 2))]
    if len(labels) == 1 and task != TOKEN_CLASSIFICATION:
        raise ModelError(f"{path} has a head with one output (a regression score?); fastft serves classifiers")
    dup = [x for i, x in enumerate(labels) if x in labels[:i]]
    if dup:
        raise ModelError(f"{path}: the label {dup[0]!r} appears twice; each output of the head needs its own name")
    if task == TOKEN_CLASSIFICATION:
        from fastft.data.iob import is_iob_tag

        if not all(map(is_iob_tag, labels)) or "O" not in labels:
            raise ModelError(
                f"{path}: the tags {', '.join(labels)}"[:200]
                + " are not IOB2 with an O (O, B-TYPE, I-TYPE): fastft decodes entities from those"
            )
    return labels
