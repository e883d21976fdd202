"""Augmented distillation data: perturbed copies of the training texts for the teacher to label.

    texts_aug = augment_texts(train_texts, copies=2, seed=42, mask_token="[MASK]")

Each copy of a text gets one operation, drawn in turn from the EDA family (Wei & Zou 2019) plus
span masking, at a rate of about 10% of its words (at least one):

* ``insert``: random words from the training vocabulary inserted at random places;
* ``delete``: each word dropped with the rate's probability (never all of them);
* ``replace``: words replaced by random words from the training vocabulary;
* ``swap``: pairs of words swapped;
* ``mask``: one contiguous span of words replaced by the tokenizer's mask token.

No synonym lexicon ships offline, so insertion and replacement draw from the training split's own
words (weighted by frequency): the copies stay in the domain's vocabulary while moving the
student off the exact training sentences. The teacher labels every copy (soft targets, cached
once with the originals, :func:`fastft.compress.distill.cache_teacher`); the hard label of a copy
is its original's. Everything is seeded: the same texts, copies and seed give the same copies.

Also here: :func:`shift_split`, a distribution shift built from the built-in data (the test texts
whose words are rarest in the training split, and the longest ones) used by the compress report.
"""

from __future__ import annotations

import random
import re
from collections import Counter

OPS = ("insert", "delete", "replace", "swap", "mask")
RATE = 0.1

_WORD = re.compile(r"\w+(?:'\w+)?", re.UNICODE)


def words(text: str) -> list[str]:
    return text.split()


def vocabulary(texts: list[str]) -> tuple[list[str], list[int]]:
    """(words, counts) of the whitespace-split training texts (alphabetic words only)."""
    c = Counter(w for t in texts for w in words(t) if any(ch.isalpha() for ch in w))
    items = sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))
    return [w for w, _ in items], [n for _, n in items]


def augment_one(text: str, op: str, rng: random.Random, vocab, mask_token: str, rate: float = RATE) -> str:
    """``text`` with one operation ``op`` applied (see the module docstring)."""
    ws = words(text)
    n = len(ws)
    if n == 0:
        return text
    k = max(1, round(rate * n))
    if op == "insert":
        for w in rng.choices(vocab[0], weights=vocab[1], k=k) if vocab[0] else []:
            ws.insert(rng.randint(0, len(ws)), w)
    elif op == "delete":
        if n > 1:
            kept = [w for w in ws if rng.random() >= rate]
            if len(kept) == n:  # drop at least one word
                del ws[rng.randrange(n)]
            else:
                ws = kept or [rng.choice(ws)]
    elif op == "replace":
        if vocab[0]:
            for i, w in zip(rng.sample(range(n), min(k, n)), rng.choices(vocab[0], weights=vocab[1], k=k)):
                ws[i] = w
    elif op == "swap":
        if n > 1:
            for _ in range(k):
                i, j = rng.sample(range(n), 2)
                ws[i], ws[j] = ws[j], ws[i]
    elif op == "mask":
        span = min(n, max(1, k))
        s = rng.randint(0, n - span)
        ws[s : s + span] = [mask_token] * span
    else:
        raise ValueError(f"unknown augmentation {op!r} (one of {', '.join(OPS)})")
    return " ".join(ws)


def augment_texts(
    texts: list[str], copies: int, seed: int, mask_token: str = "[MASK]", ops=OPS, rate: float = RATE
) -> tuple[list[str], list[int], list[str]]:
    """``copies`` perturbed versions of every text.

    Returns (augmented texts, index of the original of each, operation of each); copy ``c`` of
    text ``i`` uses ``ops[(i + c) % len(ops)]``, so every operation is used about equally.
    """
    rng = random.Random(seed)
    vocab = vocabulary(texts)
    out, src, which = [], [], []
    for c in range(copies):
        for i, t in enumerate(texts):
            op = ops[(i + c) % len(ops)]
            out.append(augment_one(t, op, rng, vocab, mask_token, rate))
            src.append(i)
            which.append(op)
    return out, src, which


def shift_split(train_texts: list[str], test_texts: list[str], fraction: float = 0.25) -> dict[str, list[int]]:
    """Test-row indices of two shifted subsets built from the built-in data.

    ``rare``: the ``fraction`` of test texts whose words are rarest in the training split (mean of
    ``log(1 + training count)`` over the text's words, lowest first; unseen words count 0);
    ``long``: the ``fraction`` of longest test texts (in words). Ties keep test order.
    """
    import math

    c = Counter(w.lower() for t in train_texts for w in _WORD.findall(t))

    def familiarity(t: str) -> float:
        ws = [w.lower() for w in _WORD.findall(t)]
        return sum(math.log1p(c.get(w, 0)) for w in ws) / len(ws) if ws else 0.0

    k = max(1, round(fraction * len(test_texts))) if test_texts else 0
    rare = sorted(range(len(test_texts)), key=lambda i: (familiarity(test_texts[i]), i))[:k]
    long = sorted(range(len(test_texts)), key=lambda i: (-len(test_texts[i].split()), i))[:k]
    return {"rare": sorted(rare), "long": sorted(long)}
