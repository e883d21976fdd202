"""Entities from per-token scores: word pieces grouped into spans with character offsets.

    chosen = token_tags(probs, word_ids, labels)          # IOB2 tag and probability per token
    aggregate_simple(text, probs, ids, offsets, special, tokens, labels, unk_id, decode, chosen)
    # [{"entity": "PER", "score": 0.98, "start": 0, "end": 13, "word": "Angela Merkel"}]

The grouping is the ``"simple"`` aggregation of transformers' token-classification pipeline,
so a user gets the same spans from fastft as from ``pipeline("token-classification",
aggregation_strategy="simple")`` on the same model:

1. every non-special token takes its most likely label (IOB2 tag) and that label's probability
   (``decode="argmax"``, the pipeline's choice); the default, ``decode="viterbi"``, instead takes
   the most likely *valid* IOB2 sequence of the words' first-piece scores
   (:func:`fastft.data.iob.decode_tags`, the decoding fastft's entity F1 is measured with) and
   gives a word's later pieces its tag (``B-X`` continues as ``I-X``) and its probability;
2. consecutive tokens form one group while the tag's type stays the same and the tag is not a
   ``B-`` (a label without a ``B-``/``I-`` prefix, such as ``O``, continues a group of its own
   type); a group's type is its first label after the first ``-`` (``B-PER`` -> ``PER``);
3. a group's score is the mean of its tokens' scores, its span runs from the first token's start
   to the last token's end, its word is the tokens joined back by the tokenizer's decoder
   (an unknown token contributes the text it covers);
4. groups of type ``O`` are dropped.
"""

from __future__ import annotations

import unicodedata

import numpy as np

from fastft.data.collate import first_pieces
from fastft.data.iob import check_decode, decode_tags, inside_tags

OUTSIDE = "O"


def token_tags(
    probs: np.ndarray, word_ids: list[int | None] | None, labels: list[str], decode: str = "viterbi"
) -> tuple[np.ndarray, np.ndarray]:
    """(label id, its probability) of every token of one text: probs (tokens, num_labels).

    ``argmax``: each token on its own. ``viterbi`` (IOB2 labels and word ids; otherwise argmax):
    the best valid tag sequence of the words' first pieces, each later piece of a word taking
    the word's tag (``B-X`` as ``I-X``) and probability; tokens of no word keep their argmax.
    """
    check_decode(decode, ValueError)
    probs = np.asarray(probs)
    best = probs.argmax(axis=-1)
    score = probs[np.arange(len(probs)), best]
    inside = inside_tags(labels) if decode == "viterbi" else None
    if inside is None or word_ids is None or len(probs) == 0:
        return best, score
    first = first_pieces(word_ids[: len(probs)])
    if not first:
        return best, score
    words = sorted(first)
    heads = np.fromiter((first[w] for w in words), dtype=np.int64, count=len(words))
    rows = probs[heads].astype(np.float64)
    path = decode_tags(np.log(np.maximum(rows, np.finfo(np.float64).tiny)), labels)
    tag_of = dict(zip(words, path.tolist()))
    for pos, w in enumerate(word_ids[: len(probs)]):
        if w is None:
            continue
        tag = tag_of[w]
        best[pos] = tag if pos == first[w] else inside[tag]
        score[pos] = probs[first[w], tag]
    return best, score


def _mark_end(text: str, end: int) -> int:
    """``end`` moved past the combining marks right after it ("Cafe\u0301": the tokenizer's offsets
    stop before an accent it strips), so a span never ends inside a character as written."""
    while end < len(text) and unicodedata.category(text[end]).startswith("M"):
        end += 1
    return end


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
    chosen: tuple[np.ndarray, np.ndarray] | None = None,
    word_ids: list[int | None] | None = None,
) -> list[dict]:
    """Entities of one text.

    probs: (tokens, num_labels) label probabilities of the text's tokens (special tokens included,
    padding excluded); ids, offsets, special, tokens: the tokenizer's encoding of ``text``, one
    entry per row of ``probs``; decode(list of tokens) -> str joins word pieces back into text;
    chosen: (label id, probability) per token from :func:`token_tags` [each token's argmax];
    word_ids: the word of each token, when given a later piece of a word stays in the word's
    entity whatever its tag (a ``B-X`` piece of a type without ``I-X``).
    """
    n = min(len(ids), len(probs))
    best, best_p = chosen if chosen is not None else token_tags(probs[:n], None, labels, "argmax")
    groups: list[list[tuple[str, float, int, int, str]]] = []
    last_type = last_word = None
    for i in range(n):
        if special[i]:
            continue
        word_id = word_ids[i] if word_ids is not None and i < len(word_ids) else None
        same_word = word_id is not None and word_id == last_word
        last_word = word_id
        start, end = offsets[i]
        label = labels[int(best[i])]
        word = text[start:end] if unk_id is not None and ids[i] == unk_id else tokens[i]
        bi, kind = _tag(label)
        item = (label, float(best_p[i]), int(start), int(end), word)
        if groups and kind == last_type and (bi != "B" or same_word):
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
                "end": _mark_end(text, g[-1][3]),
                "word": decode([x[4] for x in g]),
            }
        )
    return out
