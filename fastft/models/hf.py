"""transformers' public names, taken under one lock.

transformers builds its top-level names lazily, on first access. Several threads reaching one
at once (a server loading models on worker threads, a pool warming several models) can find the
lazy module half set up and fail with ``ImportError: cannot import name 'AutoTokenizer'``, so
fastft takes those names from here.
"""

from __future__ import annotations

import threading

_LOCK = threading.Lock()


def transformers_names(*names: str) -> tuple:
    """``transformers.<name>`` for each of ``names``, looked up one thread at a time."""
    with _LOCK:
        import transformers

        return tuple(getattr(transformers, name) for name in names)
