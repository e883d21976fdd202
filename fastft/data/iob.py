"""IOB2 tags: which tag may follow which, and the most likely *valid* tag sequence.

A token classifier scores every word on its own, so its per-word argmax can spell tag
sequences no annotator wrote: ``O I-PER`` (an inside tag with no beginning) or
``B-ORG I-LOC`` (an entity that changes type midway). Constrained decoding keeps the
model's scores and only forbids those transitions: the Viterbi path over the words'
log-probabilities where an ``I-X`` may follow only ``B-X`` or ``I-X`` (and never starts a
sentence). It is the decoding step of a CRF tagger with the transition scores fixed at
0 (allowed) or minus infinity (forbidden), so it needs no training.

    decode_tags(log_probs, labels)     # (words, num_labels) -> best valid tag id per word
    to_iob2(["I-PER", "I-PER", "O"])   # IOB1 -> IOB2: ["B-PER", "I-PER", "O"]
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from fastft.core.errors import FastftError

DECODINGS = ("viterbi", "argmax")


def check_decode(decode, error: type[Exception] = FastftError) -> None:
    """Raise ``error`` unless ``decode`` names a decoding (:data:`DECODINGS`)."""
    if decode not in DECODINGS:
        raise error(f"decode must be one of {', '.join(DECODINGS)} (got {decode!r})")


def check_decode_for(decode, per_token: bool) -> None:
    """FastftError when a decoding other than the default is asked of a model that classifies whole
    texts (it was ignored)."""
    check_decode(decode)
    if decode != DECODINGS[0] and not per_token:
        raise FastftError("decode (--decode) chooses token tags: this model classifies whole texts")


def is_iob_tag(tag: str) -> bool:
    """``O``, ``B-TYPE`` or ``I-TYPE`` (a type of at least one character)."""
    return tag == "O" or (tag[:2] in ("B-", "I-") and len(tag) > 2)


def is_iob2_labels(labels: Sequence[str]) -> bool:
    """Whether the label set is IOB2-shaped: ``O`` and ``B-X``/``I-X`` tags, every ``I-X`` with its ``B-X``."""
    tags = [str(t) for t in labels]
    if not any(t.startswith("I-") for t in tags):
        return False
    return all(is_iob_tag(t) for t in tags) and all("B-" + t[2:] in tags for t in tags if t.startswith("I-"))


def transitions(labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(may_start (L,), may_follow (L, L)) of IOB2 tags: ``may_follow[a, b]`` is True when tag ``b``
    may come right after tag ``a``; an ``I-X`` may start nothing and follow only ``B-X`` or ``I-X``."""
    tags = [str(t) for t in labels]
    n = len(tags)
    start = np.ones(n, dtype=bool)
    follow = np.ones((n, n), dtype=bool)
    for b, tag in enumerate(tags):
        if tag.startswith("I-"):
            start[b] = False
            for a, prev in enumerate(tags):
                follow[a, b] = prev in ("B-" + tag[2:], tag)
    return start, follow


@lru_cache(maxsize=64)
def _plan(labels: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(start penalty (L,), transition penalty (L, L), the ``I-`` tag of each tag (L,)) of an IOB2
    label set, 0 where allowed and -inf where not; None when the set is not IOB2-shaped."""
    if not is_iob2_labels(labels):
        return None
    start, follow = transitions(labels)
    # a type with no I- tag (every entity of it one word long in the training data): its later
    # word pieces keep the B- tag, and the entities step joins a word's pieces
    inside = np.array(
        [
            labels.index("I-" + t[2:]) if t.startswith("B-") and "I-" + t[2:] in labels else i
            for i, t in enumerate(labels)
        ],
        dtype=np.int64,
    )
    return np.where(start, 0.0, -np.inf), np.where(follow, 0.0, -np.inf), inside


def inside_tags(labels: Sequence[str]) -> np.ndarray | None:
    """For each tag id, the tag a later word piece of the same word takes (``B-X`` -> ``I-X``, else
    itself, ``B-X`` too where the set has no ``I-X``); None when the label set is not IOB2-shaped."""
    plan = _plan(tuple(str(t) for t in labels))
    return None if plan is None else plan[2]


def decode_tags(log_probs: np.ndarray, labels: Sequence[str]) -> np.ndarray:
    """The most likely valid IOB2 tag sequence (Viterbi): (words, L) log-probabilities -> (words,) tag ids.

    A label set that is not IOB2-shaped (:func:`is_iob2_labels`) is decoded by argmax.
    """
    lp = np.asarray(log_probs, dtype=np.float64)
    if lp.ndim != 2 or lp.shape[1] != len(labels):
        raise ValueError(f"log_probs must be (words, {len(labels)}); got shape {lp.shape}")
    plan = _plan(tuple(str(t) for t in labels))
    if len(lp) == 0 or plan is None:
        return lp.argmax(axis=1) if len(lp) else np.zeros(0, dtype=np.int64)
    start, penalty, _ = plan
    best = lp.argmax(axis=1)
    if np.isfinite(start[best[0]]) and np.isfinite(penalty[best[:-1], best[1:]]).all():
        return best  # the unconstrained best is valid, so it is the best valid sequence (most sentences)
    cols = np.arange(lp.shape[1])
    score = lp[0] + start
    back = np.zeros(lp.shape, dtype=np.int64)
    for t in range(1, len(lp)):
        cand = score[:, None] + penalty  # (previous, next)
        prev = cand.argmax(axis=0)
        back[t] = prev
        score = cand[prev, cols] + lp[t]
    path = np.empty(len(lp), dtype=np.int64)
    path[-1] = int(score.argmax())
    for t in range(len(lp) - 1, 0, -1):
        path[t - 1] = back[t, path[t]]
    return path


def to_iob2(tags: Sequence[str]) -> list[str]:
    """IOB1 (an entity may begin with ``I-``) spelled as IOB2 (every entity begins with ``B-``);
    IOB2 input comes back unchanged."""
    out: list[str] = []
    prev = "O"
    for t in tags:
        if t.startswith("I-") and prev[2:] != t[2:]:
            t = "B-" + t[2:]
        out.append(t)
        prev = t
    return out
