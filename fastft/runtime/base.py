"""The Predictor base: a model directory behind ``predict`` / ``logits`` / ``predict_proba``.

    pred = fastft.load("runs/teacher-onnx")              # ONNX Runtime, CPU, model.onnx
    pred.predict(["a fine film", "a dull mess"])          # [("positive", 0.97), ("negative", 0.91)]
    pred.logits(texts)                                    # (n, num_labels) float32
    pred.predict_proba(texts)                             # (n, num_labels), rows sum to 1
    pred.labels                                           # ["negative", "positive"]

Texts are tokenized (truncated at the model's max length), sorted by length and run in
batches padded to their longest text; results come back in input order. One Predictor may
be shared by many threads: ORT's ``run`` and torch inference are thread-safe, and each
thread tokenizes with its own tokenizer copy.

The backends: :mod:`fastft.runtime.ort` (ONNX Runtime), :mod:`fastft.runtime.torch_predictor`
(PyTorch); :mod:`fastft.runtime.load` picks one for a model directory.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import numpy as np

from fastft.core.checks import check_int
from fastft.core.errors import FastftError
from fastft.core.numerics import softmax
from fastft.data.text import unicode_problem
from fastft.runtime.encode import Encoder, length_sorted_batches


class InputError(FastftError):
    """The texts given to a Predictor cannot be used (not a list, not strings, empty...)."""


class TruncationWarning(UserWarning):
    """A text was longer than the model's max length and was cut."""


def check_texts(texts) -> list[str]:
    """``texts`` as a list, or InputError naming the first unusable text (by index, from 0).

    Refused: a single string, a non-list, an empty list, a non-string, an empty text, and a
    text that is not valid Unicode (a lone surrogate such as ``"\\ud800"``): fastft never
    replaces characters silently (see :mod:`fastft.data.text`).
    """
    if isinstance(texts, str):
        raise InputError("texts must be a list of strings, not a single string (wrap it: [text])")
    if not isinstance(texts, (list, tuple)):
        raise InputError(f"texts must be a list of strings (got {type(texts).__name__})")
    if len(texts) == 0:
        raise InputError("no texts to predict (the list is empty)")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise InputError(f"text #{i} is not a string ({type(t).__name__})")
        if not t.strip():
            raise InputError(f"text #{i} is empty")
        problem = unicode_problem(t)
        if problem:
            raise InputError(f"text #{i} {problem}")
    return list(texts)


class Predictor:
    """Shared logic: input checks, tokenization, length-sorted batching, labels.

    Subclasses implement :meth:`logits_from_ids` (one padded batch -> logits).
    """

    backend = "?"

    def __init__(
        self,
        path: Path,
        tokenizer,
        labels: list[str],
        max_length: int,
        *,
        device: str = "cpu",
        batch_size: int = 32,
        truncation: bool = True,
    ):
        self.path = Path(path)
        self.labels = list(labels)
        self.max_length = int(max_length)
        self.device = device
        self.batch_size = int(batch_size)
        self.truncation = truncation
        self.tokenizer = tokenizer
        self._encoder = Encoder(tokenizer, self.max_length)
        self._warned = False
        self._warn_lock = threading.Lock()

    # -- public API -------------------------------------------------------------------
    def logits(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        """Raw scores, (n, num_labels) float32, in input order."""
        texts = check_texts(texts)
        try:
            check_int("batch_size", batch_size, lo=1, optional=True)
        except FastftError as exc:
            raise InputError(str(exc)) from None
        return self._logits(texts, batch_size or self.batch_size)

    def _logits(self, texts: list[str], bs: int) -> np.ndarray:
        """Logits of checked texts (evaluation data may hold empty texts: they are scored too)."""
        enc = self._encoder.encode(texts)
        self._check_truncation(enc.truncated)
        out = np.empty((len(texts), len(self.labels)), dtype=np.float32)
        for idx in length_sorted_batches(enc.lengths(), bs):
            feeds = self._encoder.batch(enc, idx, self._int_dtype)
            out[idx] = self.logits_from_ids(**feeds)
        return out

    def predict_proba(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        """Class probabilities, (n, num_labels), rows sum to 1."""
        return softmax(self.logits(texts, batch_size))

    def predict(self, texts: list[str], batch_size: int | None = None) -> list[tuple[str, float]]:
        """(label, probability) of the most likely label of each text."""
        probs = self.predict_proba(texts, batch_size)
        best = probs.argmax(axis=1)
        return [(self.labels[int(j)], float(p[j])) for j, p in zip(best, probs)]

    __call__ = predict

    def logits_from_ids(
        self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None, token_type_ids: np.ndarray | None = None
    ) -> np.ndarray:
        """Logits of one tokenized batch: input_ids (batch, seq) -> (batch, num_labels) float32."""
        raise NotImplementedError

    def info(self) -> dict:
        return {
            "backend": self.backend,
            "path": str(self.path),
            "device": self.device,
            "max_length": self.max_length,
            "labels": self.labels,
        }

    def __repr__(self) -> str:
        extra = ", ".join(f"{k}={v!r}" for k, v in self.info().items() if k not in ("labels",))
        return f"{type(self).__name__}({extra})"

    # -- helpers ----------------------------------------------------------------------
    _int_dtype = np.int64

    def _check_truncation(self, truncated: list[bool]) -> None:
        if not any(truncated):
            return
        i = truncated.index(True)
        if not self.truncation:
            raise InputError(
                f"text #{i} is longer than the model's max length of {self.max_length} tokens "
                "(truncation=False); shorten it or load with truncation=True"
            )
        with self._warn_lock:
            if self._warned:
                return
            self._warned = True
        import warnings

        warnings.warn(
            f"{sum(truncated)} text(s) longer than {self.max_length} tokens were truncated "
            f"(first: text #{i}); shown once per predictor",
            TruncationWarning,
            stacklevel=_caller_level(),
        )

    def _warm_up(self) -> None:
        enc = self._encoder.encode(["warm up the session with a short sentence"] * 2)
        for _ in range(2):
            self.logits_from_ids(**self._encoder.batch(enc, [0, 1], self._int_dtype))


def _caller_level() -> int:
    """warnings stacklevel pointing at the first frame outside fastft.runtime."""
    f, level = sys._getframe(1), 1
    here = os.path.dirname(__file__)
    while f is not None and os.path.dirname(f.f_code.co_filename) == here:
        f, level = f.f_back, level + 1
    return level
