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
