"""Model resolution (built-in aliases, local directories, hub names) and fastft.json."""

from fastft.core.schema import META_FILE, read_meta, write_meta
from fastft.models.builtin import BUILTIN_MODELS, cache_dir
from fastft.models.resolve import load_classifier, load_tokenizer, resolve_model

__all__ = [
    "BUILTIN_MODELS",
    "META_FILE",
    "cache_dir",
    "load_classifier",
    "load_tokenizer",
    "read_meta",
    "resolve_model",
    "write_meta",
]
