"""``fastft.json``: what a model directory is and what was done to it.

Keys written by the trainer: ``task``, ``labels``, ``data`` (the data spec, split seed),
``metrics`` (per split), ``training`` (arguments), ``versions``, ``history`` (one entry per
stage: train, export, compress...). Later stages add their own keys (``onnx``, ``compress``).
"""

from __future__ import annotations

from pathlib import Path

from fastft.core.errors import ModelError
from fastft.core.io import read_json_object, write_json

META_FILE = "fastft.json"


def read_meta(model_dir: str | Path, required: bool = False) -> dict:
    path = Path(model_dir) / META_FILE
    if not path.is_file():
        if required:
            raise ModelError(f"{model_dir} is not a fastft model directory (no {META_FILE})")
        return {}
    return read_json_object(path)


def write_meta(model_dir: str | Path, meta: dict) -> None:
    write_json(Path(model_dir) / META_FILE, meta)
