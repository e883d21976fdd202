"""Entities from per-token scores: word pieces grouped into spans with character offsets.

    aggregate_simple(text, probs, ids, offsets, special, tokens, labels, unk_id, decode)
    # [{"entity": "PER", "score": 0.98, "start": 0, "end": 13, "word": "Angela Merkel"}]

The grouping is the ``"simple"`` aggregation of transformers' token-classification pipeline,
so a user gets the same spans from fastft as from ``pipeline("token-classification",
aggregation_strategy="simple")`` on the same model:

1. every non-special token takes its most likely label (IOB2 tag) and that label's probability;
2. consecutive tokens form one group while the tag's type stays the same and the tag is not a
   ``B-`` (a label without a ``B-``/``I-`` prefix, such as ``O``, continues a group of its own
   type); a group's type is its first label after the first ``-`` (``B-PER`` -> ``PER``);
3. a group's score is the mean of its tokens' scores, its span runs from the first token's start
   to the last token's end, its word is the tokens joined back by the tokenizer's decoder
   (an unknown token contributes the text it covers);
4. groups of type ``O`` are dropped.
"""

from __future__ import annotations

import numpy as np

OUTSIDE = "O"


def _tag(label: str) -> tuple[str, str]:
    """(``B`` | ``I``, entity type) of an IOB2 label; a label without a prefix continues (``I``)."""
    if label.startswith("B-"):
        return "B", label[2:]
    if label.startswith("I-"):
        return "I", label[2:]
    return "I", label


def aggregate_simple(
    text: str,
    probs: np.ndarray,
    ids: list[int],
    offsets: list[tuple[int, int]],
    special: list[int],
    tokens: list[str],
    labels: list[str],
    unk_id: int | None,
    decode,
) -> list[dict]:
    """Entities of one text.

    probs: (tokens, num_labels) label probabilities of the text's tokens (special tokens included,
    padding excluded); ids, offsets, special, tokens: the tokenizer's encoding of ``text``, one
    entry per row of ``probs``; decode(list of tokens) -> str joins word pieces back into text.
    """
    n = min(len(ids), len(probs))
    best = probs[:n].argmax(axis=-1)
    groups: list[list[tuple[str, float, int, int, str]]] = []
    last_type = None
    for i in range(n):
        if special[i]:
            continue
        start, end = offsets[i]
        label = labels[int(best[i])]
        word = text[start:end] if unk_id is not None and ids[i] == unk_id else tokens[i]
        bi, kind = _tag(label)
        item = (label, float(probs[i, best[i]]), int(start), int(end), word)
        if groups and kind == last_type and bi != "B":
            groups[-1].append(item)
        else:
            groups.append([item])
        last_type = kind
    out = []
    for g in groups:
        kind = g[0][0].split("-", 1)[-1]  # the group's type: its first label without the B-/I- prefix
        if kind == OUTSIDE:
            continue
        out.append(
            {
                "entity": kind,
                "score": float(np.mean([x[1] for x in g], dtype=np.float32)),
                "start": g[0][2],
                "end": g[-1][3],
                "word": decode([x[4] for x in g]),
            }
        )
    return out
