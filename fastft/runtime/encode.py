"""Thread-safe tokenization into length-sorted, dynamically padded numpy batches.

A Hugging Face *fast* tokenizer re-configures its Rust tokenizer (padding, truncation)
on every call, so two threads calling it at once can race ("Already borrowed") or see
each other's settings. The :class:`Encoder` instead keeps one private Rust tokenizer per
thread, configured once (truncation at ``max_length``, no padding), and pads in numpy.
A slow (Python) tokenizer falls back to a lock.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

import numpy as np

# Texts are cut to this many characters per token of max_length before tokenizing: ordinary text
# has ~4 characters per token, so the model still sees all it would have, while a 4 MB text
# costs the tokenizer milliseconds and kilobytes instead of seconds and gigabytes.
CHARS_PER_TOKEN = 64
# what the budget counts: characters that can make a token (not whitespace, control or zero-width
# characters, nor combining marks, which tokenizers drop), so a text that opens with 10,000 spaces
# keeps its words
# and whatever a text holds, at most this many times the budget in characters of any kind (and at
# least RAW_BUDGET_MIN), so a text of millions of zero-width characters costs no more than one of
# letters, while 10,000 spaces before the words still leave the words at any max length
RAW_BUDGET_FACTOR = 8
RAW_BUDGET_MIN = 65_536
_COUNTED = re.compile(r"[^\s\x00-\x1f\x7f-\x9f\u00ad\u0300-\u036f\u200b-\u200f\u2028-\u202e\u2060-\u2064\ufeff]")


@dataclass
class Encoded:
    """Token ids of a list of texts, unpadded, in input order.

    With ``Encoder(..., offsets=True)`` (token classification) also each token's character span,
    whether it is a special token, its string and its word's index (what
    :mod:`fastft.runtime.entities` decodes and groups).
    """

    ids: list[list[int]]
    type_ids: list[list[int]]
    truncated: list[bool]
    offsets: list[list[tuple[int, int]]] | None = None
    special: list[list[int]] | None = None
    tokens: list[list[str]] | None = None
    word_ids: list[list[int | None]] | None = None

    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.ids), dtype=np.int64, count=len(self.ids))


class Encoder:
    """Tokenize texts with truncation at ``max_length``; build padded batches."""

    def __init__(self, tokenizer, max_length: int, offsets: bool = False):
        self.max_length = int(max_length)
        self.offsets = bool(offsets)
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._json = backend.to_str() if backend is not None else None
        self._slow = tokenizer if backend is None else None
        self._lock = threading.Lock()
        self._local = threading.local()
        self._bare: int | None = None  # tokens of an empty text: the special tokens alone

    def _rust(self):
        tok = getattr(self._local, "tok", None)
        if tok is None:
            from tokenizers import Tokenizer

            tok = Tokenizer.from_str(self._json)
            tok.no_padding()
            tok.enable_truncation(self.max_length)
            self._local.tok = tok
        return tok

    def cut(self, texts: list[str]) -> tuple[list[str], list[bool], list[int]]:
        """``texts`` cut after ``CHARS_PER_TOKEN * max_length`` characters that can make a token
        (at a space in the last tenth where there is one), or after ``RAW_BUDGET_FACTOR`` times
        that many characters of any kind (at least ``RAW_BUDGET_MIN``); which were cut (a cut text
        counts as truncated); and where each kept part starts. A text the raw cut would leave
        without a token-making character (70,000 spaces before its words: labelled from nothing)
        keeps its part from its first such character instead."""
        budget = CHARS_PER_TOKEN * self.max_length
        raw = max(RAW_BUDGET_FACTOR * budget, RAW_BUDGET_MIN)
        out, was_cut, starts = [], [], []
        for t in texts:
            start, tokenless = 0, False
            end = _cut_point(t, budget) if len(t) > budget else None
            if end is None and len(t) > raw:  # mostly uncounted characters
                first = _COUNTED.search(t, 0, raw)
                if first is None:  # nothing the tokenizer keeps in the raw budget: start at the words
                    later = _COUNTED.search(t, raw)
                    start = later.start() if later is not None else 0
                    tokenless = later is None  # (the tail just scanned: not again below)
                end = start + raw
            # cut: a character that makes a token was left out (a tail of spaces is no loss, and a text
            # of nothing but such characters stays one the caller refuses as tokenless)
            was_cut.append(end is not None and not tokenless and _COUNTED.search(t, end) is not None)
            out.append(t[start:end])
            starts.append(start)
        return out, was_cut, starts

    def encode(self, texts: list[str]) -> Encoded:
        texts, was_cut, starts = self.cut(texts)
        if self._json is not None:
            encs = self._rust().encode_batch(texts, add_special_tokens=True)
            truncated = [bool(e.overflowing) or c for e, c in zip(encs, was_cut)]
            out = Encoded([e.ids for e in encs], [e.type_ids for e in encs], truncated)
            if self.offsets:  # in the text as given: past a skipped run of characters without tokens
                out.offsets = [
                    e.offsets if not s else [(a + s, b + s) if b else (a, b) for a, b in e.offsets]
                    for e, s in zip(encs, starts)
                ]
                out.special = [e.special_tokens_mask for e in encs]
                out.tokens = [e.tokens for e in encs]
                out.word_ids = [e.word_ids for e in encs]
            return out
        with self._lock:  # slow tokenizer: not re-entrant-safe with per-call settings
            full = self._slow(texts, truncation=False, padding=False, add_special_tokens=True)["input_ids"]
            out = self._slow(
                texts, truncation=True, max_length=self.max_length, padding=False, return_token_type_ids=True
            )
        types = out.get("token_type_ids") or [[0] * len(x) for x in out["input_ids"]]
        return Encoded(out["input_ids"], types, [len(f) > self.max_length or c for f, c in zip(full, was_cut)])

    def first_tokenless(self, enc: Encoded) -> int | None:
        """The index of the first text of ``enc`` that became only the special tokens an empty
        text gets (all its characters are ones the tokenizer drops), or None. The model would
        still label it, from nothing."""
        if self._bare is None:
            self._bare = len(self.encode([""]).ids[0])
        return next(
            (i for i, ids in enumerate(enc.ids) if len(ids) <= self._bare and not enc.truncated[i]),
            None,  # a cut text had tokens: the cut (max length 2, say) left none of them
        )

    def decode_tokens(self, tokens: list[str]) -> str:
        """Word pieces joined back into text by the tokenizer's decoder (``convert_tokens_to_string``)."""
        decoder = self._rust().decoder if self._json is not None else None
        if decoder is not None:
            return decoder.decode(tokens)
        return self._slow.convert_tokens_to_string(tokens) if self._slow is not None else " ".join(tokens)

    def batch(self, enc: Encoded, idx, int_dtype=np.int64) -> dict[str, np.ndarray]:
        """input_ids / attention_mask / token_type_ids for the texts ``idx``, padded to the longest."""
        width = max(len(enc.ids[i]) for i in idx)
        n = len(idx)
        ids = np.full((n, width), self.pad_id, dtype=int_dtype)
        mask = np.zeros((n, width), dtype=int_dtype)
        types = np.zeros((n, width), dtype=int_dtype)
        for row, i in enumerate(idx):
            k = len(enc.ids[i])
            ids[row, :k] = enc.ids[i]
            mask[row, :k] = 1
            types[row, :k] = enc.type_ids[i]
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


# why first_tokenless refuses a text, after "text #i"
NO_TOKENS = (
    "has no tokens: the tokenizer drops every character of it (control, zero-width or lone combining characters)"
)


def _cut_point(text: str, budget: int) -> int | None:
    """Where to cut ``text`` after ``budget`` counted characters, or None when it has fewer."""
    n = 0
    for m in _COUNTED.finditer(text):
        n += 1
        if n == budget:
            end = m.end()
            space = text.rfind(" ", max(0, end - budget // 10), end)
            return space if space > 0 else end
    return None


def length_sorted_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Indices grouped into batches of similar length (longest first), so padding is small."""
    order = np.argsort(-lengths, kind="stable")
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
