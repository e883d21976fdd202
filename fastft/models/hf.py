"""transformers' public names, taken under one lock.

transformers builds its top-level names lazily, on first access. Several threads reaching one
at once (a server loading models on worker threads, a pool warming several models) can find the
lazy module half set up and fail with ``ImportError: cannot import name 'AutoTokenizer'``, so
fastft takes those names from here.
"""

from __future__ import annotations

import contextlib
import threading

_LOCK = threading.Lock()


def transformers_names(*names: str) -> tuple:
    """``transformers.<name>`` for each of ``names``, looked up one thread at a time."""
    with _LOCK:
        import transformers

        return tuple(getattr(transformers, name) for name in names)


_QUIET_DEPTH = 0
_QUIET_LOCK = threading.Lock()
_SAVED: tuple = ()


@contextlib.contextmanager
def quiet():
    """Within the block, transformers logs errors only and draws no progress bars (its "Loading
    weights" bar on every model load); on leaving, its settings are as the caller had them (a
    library call must not change them for the rest of the process). Nested and concurrent blocks
    share one quiet period: the last to leave restores."""
    global _QUIET_DEPTH, _SAVED
    from transformers.utils import logging as hf_logging

    with _QUIET_LOCK:
        if _QUIET_DEPTH == 0:
            _SAVED = (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled())
            hf_logging.set_verbosity_error()
            hf_logging.disable_progress_bar()
        _QUIET_DEPTH += 1
    try:
        yield
    finally:
        with _QUIET_LOCK:
            _QUIET_DEPTH -= 1
            if _QUIET_DEPTH == 0:
                verbosity, bars = _SAVED
                hf_logging.set_verbosity(verbosity)
                if bars:
                    hf_logging.enable_progress_bar()
