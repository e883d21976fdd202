"""Small numeric helpers shared by training and serving (numpy only)."""

from __future__ import annotations

import numpy as np

from fastft.core.errors import ModelError


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for large logits."""
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def check_finite(logits: np.ndarray) -> np.ndarray:
    """``logits``, or a ModelError when the model gave NaN or inf: every label's score of a NaN row
    is unusable, and its argmax (label 0) was answered as if chosen."""
    if not np.isfinite(logits).all():
        raise ModelError("the model's scores are not finite (NaN or inf): its weights or its export are broken")
    return logits
