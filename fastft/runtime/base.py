"""The Predictor base: a model directory behind ``predict`` / ``logits`` / ``predict_proba``.

    pred = fastft.load("runs/teacher-onnx")              # ONNX Runtime, CPU, model.onnx
    pred.predict(["a fine film", "a dull mess"])          # [("positive", 0.97), ("negative", 0.91)]
    pred.logits(texts)                                    # (n, num_labels) float32
    pred.predict_proba(texts)                             # (n, num_labels), rows sum to 1
    pred.labels                                           # ["negative", "positive"]

A token-classification directory (fastft.json ``"task": "token-classification"``, IOB2 labels)
predicts entities instead, grouped from word pieces like transformers' pipeline with
``aggregation_strategy="simple"`` (:mod:`fastft.runtime.entities`):

    ner = fastft.load("runs/ner-onnx")
    ner.predict(["Angela Merkel visited Paris"])
    # [[{"entity": "PER", "score": 0.99, "start": 0, "end": 13, "word": "Angela Merkel"},
    #   {"entity": "LOC", "score": 0.99, "start": 22, "end": 27, "word": "Paris"}]]
    ner.logits(texts)                                     # per text: (tokens, num_labels) float32

Texts are tokenized (truncated at the model's max length), sorted by length and run in
batches padded to their longest text; results come back in input order. One Predictor may
be shared by many threads: ORT's ``run`` and torch inference are thread-safe, and each
thread tokenizes with its own tokenizer copy.

The backends: :mod:`fastft.runtime.ort` (ONNX Runtime), :mod:`fastft.runtime.torch_predictor`
(PyTorch); :mod:`fastft.runtime.load` picks one for a model directory.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import numpy as np

from fastft.core.checks import check_bool, check_int
from fastft.core.errors import FastftError, ModelError
from fastft.core.numerics import check_finite, softmax
from fastft.core.schema import SEQUENCE_CLASSIFICATION, TOKEN_CLASSIFICATION
from fastft.data.iob import check_decode_for
from fastft.data.text import unicode_problem
from fastft.runtime.encode import NO_TOKENS, Encoded, Encoder, length_sorted_batches
from fastft.runtime.entities import aggregate_simple, token_tags

# texts tokenized at a time by logits / predict: memory stays bounded for any number of texts
ENCODE_CHUNK = 16_384


class InputError(FastftError):
    """The texts given to a Predictor cannot be used (not a list, not strings, empty...)."""


class TruncationWarning(UserWarning):
    """A text was longer than the model's max length and was cut."""


def check_texts(texts) -> list[str]:
    """``texts`` as a list, or InputError naming the first unusable text (by index, from 0).

    Refused: a single string, a non-list, an empty list, a non-string, an empty text, and a
    text that is not valid Unicode (a lone surrogate such as ``"\\ud800"``): fastft never
    replaces characters silently (see :mod:`fastft.data.text`). A text the tokenizer turns into
    nothing is refused once tokenized (:meth:`Predictor.logits`).
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
    _decode = "viterbi"  # token classification: how tags are chosen (fastft.runtime.entities.token_tags)

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
        task: str = SEQUENCE_CLASSIFICATION,
    ):
        self.path = Path(path)
        self.task = task
        self.labels = list(labels)
        self._max_length = int(max_length)
        self.device = device
        self.batch_size = int(batch_size)
        self.truncation = truncation
        self.tokenizer = tokenizer
        self._encoder = Encoder(tokenizer, self.max_length, offsets=self.per_token)
        if self.per_token and getattr(tokenizer, "backend_tokenizer", None) is None:
            raise ModelError(
                f"{self.path}: token classification needs a fast tokenizer (tokenizer.json) for character offsets"
            )
        self._unk_id = getattr(tokenizer, "unk_token_id", None)
        # the graph quantises activations per call (dynamic INT8): a text's scores depend on the
        # texts run beside it, so each text runs alone unless merging was asked for (batch_int8)
        self.batch_dependent = False
        self._batch_int8 = False

    @property
    def max_length(self) -> int:
        """Tokens per text, fixed at load (the tokenizer's cut and the served graph's input)."""
        return self._max_length

    @max_length.setter
    def max_length(self, value) -> None:
        raise FastftError(f"max_length is fixed when the model loads: fastft.load(path, max_length={value!r})")

    @property
    def batch_size(self) -> int:
        """Texts per call when ``predict`` is given none."""
        return self._batch_size

    @batch_size.setter
    def batch_size(self, value) -> None:
        self._batch_size = check_int("batch_size", value, lo=1)

    @property
    def decode(self) -> str:
        """Token classification: ``viterbi`` (the most likely valid IOB2 sequence) or ``argmax``."""
        return self._decode

    @decode.setter
    def decode(self, value) -> None:
        check_decode_for(value, self.per_token)
        self._decode = value

    @property
    def batch_int8(self) -> bool:
        """Merge texts into calls of a dynamically quantised graph (onnxruntime; see ``fastft.load``)."""
        return self._batch_int8

    @batch_int8.setter
    def batch_int8(self, value) -> None:
        check_bool("batch_int8", value)
        if value and "batch_int8" not in self._settable:
            raise FastftError("batch_int8 is for backend='onnxruntime': this Predictor's backend does not read it")
        self._batch_int8 = value

    # the settings that may change after loading, which pickling carries as they are now
    _settable = ("batch_size", "truncation", "decode")
    # fastft.load sets it: load(its absolute path, **the same options), which unpickling calls
    _reload = None

    def __reduce__(self):
        """Pickled as how it was loaded, so ``ProcessPoolExecutor`` workers (and ``copy.deepcopy``)
        load the model again from its directory; sessions and tokenizers never cross processes.
        The settings that may change after loading (batch_size, truncation, decode; batch_int8 on
        onnxruntime) go as they are now."""
        if self._reload is None:
            raise TypeError(f"{type(self).__name__} was not made by fastft.load, so it cannot be pickled")
        now = {name: getattr(self, name) for name in self._settable}
        return (functools.partial(self._reload, **now), ())

    def __copy__(self):
        """A shallow copy shares the loaded model (ORT sessions and torch inference are thread-safe)."""
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        return new

    @property
    def per_token(self) -> bool:
        """Token classification: one row of scores per token, entities from :meth:`predict`."""
        return self.task == TOKEN_CLASSIFICATION

    @property
    def encoder(self) -> Encoder:
        """How texts become token ids here (tokenizer, max length, truncation, word ids and
        character offsets), for callers that need the tokens behind :meth:`logits`' rows."""
        return self._encoder

    # -- public API -------------------------------------------------------------------
    def logits(self, texts: list[str], batch_size: int | None = None):
        """Raw scores, (n, num_labels) float32, in input order.

        Token classification: a list with one (tokens, num_labels) array per text (its special
        tokens included, no padding).

        An InputError names the first text that is unusable: empty, not valid Unicode, or made of
        characters the tokenizer drops only (zero-width, control...), which the model would
        otherwise label from nothing.
        """
        texts, bs = self._checked(texts, batch_size)
        parts = [self._encoded_logits(enc, bs) for _, enc in self._encoded_chunks(texts)]
        return [row for part in parts for row in part] if self.per_token else np.concatenate(parts)

    def truncated(self, texts: list[str]) -> list[bool]:
        """Which of ``texts`` are longer than the max length, so the model sees only their start
        (and a token-classification model finds no entity past the cut)."""
        texts = check_texts(texts)
        starts = range(0, len(texts), ENCODE_CHUNK)  # a chunk at a time, as logits / predict tokenize
        return [cut for s in starts for cut in self._encoder.encode(texts[s : s + ENCODE_CHUNK]).truncated]

    def _checked(self, texts, batch_size) -> tuple[list[str], int]:
        texts = check_texts(texts)
        try:
            check_int("batch_size", batch_size, lo=1, optional=True)
        except FastftError as exc:
            raise InputError(str(exc)) from None
        return texts, batch_size or self.batch_size

    def _encoded_chunks(self, texts: list[str]):
        """(start, Encoded) for each ``ENCODE_CHUNK`` texts from ``start``, tokenized only when
        reached, so a million texts never sit tokenized at once. A text without tokens, or one
        too long with ``truncation=False``, is an InputError naming its index in ``texts``, before
        any text runs; one TruncationWarning for the whole call."""
        starts = range(0, len(texts), ENCODE_CHUNK)
        if len(starts) > 1:  # a long call: every text checked before any is run (tokenizing twice)
            for start in starts:
                self._checked_chunk(texts, start)
        cut = False
        for start in starts:
            enc = self._checked_chunk(texts, start)
            cut = cut or any(enc.truncated)
            yield start, enc
        if cut:
            self._warn_truncated()

    def _checked_chunk(self, texts: list[str], start: int) -> Encoded:
        enc = self._encoder.encode(texts[start : start + ENCODE_CHUNK])
        i = self._encoder.first_tokenless(enc)
        if i is not None:
            raise InputError(f"text #{start + i} {NO_TOKENS}")
        self._check_truncation(enc.truncated, start, warn=False)
        return enc

    def _logits(self, texts: list[str], bs: int) -> np.ndarray:
        """Logits of checked texts (evaluation data may hold empty texts: they are scored too)."""
        enc = self._encoder.encode(texts)
        self._check_truncation(enc.truncated)
        return self._encoded_logits(enc, bs)

    @property
    def isolated(self) -> bool:
        """Each text runs in a call of its own (a dynamically quantised graph without batch_int8)."""
        return self.batch_dependent and not self.batch_int8

    def _encoded_logits(self, enc: Encoded, bs: int):
        if self.isolated:
            bs = 1
        if self.per_token:
            rows: list = [None] * len(enc.ids)
            for idx in length_sorted_batches(enc.lengths(), bs):
                logits = self.logits_from_ids(**self._encoder.batch(enc, idx, self._int_dtype))
                for r, i in enumerate(idx):
                    rows[i] = check_finite(logits[r, : len(enc.ids[i])])
            return rows
        out = np.empty((len(enc.ids), len(self.labels)), dtype=np.float32)
        for idx in length_sorted_batches(enc.lengths(), bs):
            feeds = self._encoder.batch(enc, idx, self._int_dtype)
            out[idx] = self.logits_from_ids(**feeds)
        return check_finite(out)

    def predict_proba(self, texts: list[str], batch_size: int | None = None):
        """Class probabilities, (n, num_labels), rows sum to 1 (token classification: a list of
        (tokens, num_labels) arrays, one per text)."""
        logits = self.logits(texts, batch_size)
        return [softmax(x) for x in logits] if self.per_token else softmax(logits)

    def predict(self, texts: list[str], batch_size: int | None = None) -> list:
        """(label, probability) of the most likely label of each text.

        Token classification: per text, a list of entities ``{"entity", "score", "start", "end",
        "word"}`` (character offsets into the text), in text order.
        """
        if self.per_token:
            texts, bs = self._checked(texts, batch_size)
            out = []
            for start, enc in self._encoded_chunks(texts):
                logits = self._encoded_logits(enc, bs)
                chunk = texts[start : start + len(logits)]
                out += [
                    self.entities(self._encoder, enc, i, t, softmax(x)) for i, (t, x) in enumerate(zip(chunk, logits))
                ]
            return out
        probs = self.predict_proba(texts, batch_size)
        best = probs.argmax(axis=1)
        return [(self.labels[int(j)], float(p[j])) for j, p in zip(best, probs)]

    __call__ = predict

    def logits_from_ids(
        self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None, token_type_ids: np.ndarray | None = None
    ) -> np.ndarray:
        """Logits of one tokenized batch: input_ids (batch, seq) -> (batch, num_labels) float32.

        The backends' hook (each subclass implements it), fed by :meth:`Encoder.batch` with
        arrays it made: they are not checked here. Texts go through :meth:`logits` / :meth:`predict`."""
        raise NotImplementedError

    def entities(self, encoder: Encoder, enc: Encoded, i: int, text: str, probs: np.ndarray) -> list[dict]:
        """Entities of text ``i`` of ``enc`` (encoded with offsets) from its per-token probabilities."""
        word_ids = enc.word_ids[i] if enc.word_ids is not None else None
        return aggregate_simple(
            text,
            probs,
            enc.ids[i],
            enc.offsets[i],
            enc.special[i],
            enc.tokens[i],
            self.labels,
            self._unk_id,
            encoder.decode_tokens,
            token_tags(probs, word_ids, self.labels, self.decode),
            word_ids if self.decode == "viterbi" else None,
        )

    def info(self) -> dict:
        return {
            "task": self.task,
            "backend": self.backend,
            "path": str(self.path),
            "device": self.device,
            "max_length": self.max_length,
            "labels": self.labels,
            **({"batching": "one text per call (dynamic INT8)"} if self.isolated else {}),
            **({"decode": self.decode} if self.per_token else {}),
        }

    def __repr__(self) -> str:
        extra = ", ".join(f"{k}={v!r}" for k, v in self.info().items() if k not in ("labels",))
        return f"{type(self).__name__}({extra})"

    # -- helpers ----------------------------------------------------------------------
    _int_dtype = np.int64

    def _check_truncation(self, truncated: list[bool], start: int = 0, warn: bool = True) -> None:
        """InputError for the first cut text (index ``start`` + its place) with ``truncation=False``,
        else a TruncationWarning (``warn``) when any was cut."""
        if not any(truncated):
            return
        i = start + truncated.index(True)
        if not self.truncation:
            raise InputError(
                f"text #{i} is longer than the model's max length of {self.max_length} tokens "
                "(truncation=False); shorten it or load with truncation=True"
            )
        if warn:
            self._warn_truncated()

    def _warn_truncated(self) -> None:
        import warnings

        # one text for every call, so Python's warning filters decide how often it shows (by
        # default once per calling line; warnings.simplefilter("always") every time)
        warnings.warn(
            f"texts longer than the model's max length of {self.max_length} tokens were truncated, "
            "the model saw only their start; Predictor.truncated(texts) says which",
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
