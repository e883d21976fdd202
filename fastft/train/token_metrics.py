"""Token classification: word-level predictions from per-token logits, and entity metrics (seqeval).

Entity-level precision/recall/F1, overall (micro) and per entity type, come from ``seqeval``
in its default mode (conlleval-compatible, the mode the published CoNLL-2003 figures use);
the strict IOB2 mode's figures are recorded beside them (``*_strict``). A word's tag is decoded
from its first word piece's scores, by default as the most likely valid IOB2 sequence of the
sentence (:mod:`fastft.data.iob`; ``fastft predict`` decodes the same way).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fastft.data.collate import IGNORE_INDEX, encode_words, first_pieces, pad_rows, sorted_batches
from fastft.data.iob import check_decode, decode_tags, to_iob2

TOKEN_METRIC_NAMES = ("f1", "precision", "recall", "accuracy", "f1_strict", "loss")


def entity_metrics(true_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]]) -> dict:
    """Entity-level metrics of predicted tag names against the true ones (IOB2), per sentence.

    Returns precision, recall, f1 (seqeval default mode, micro over entities), their strict
    IOB2 counterparts, word-level ``accuracy``, ``per_type`` {TYPE: precision, recall, f1,
    support} and ``n`` (sentences).
    """
    from seqeval.metrics import classification_report
    from seqeval.scheme import IOB2

    y_true = [list(map(str, s)) for s in true_tags]
    y_pred = [list(map(str, s)) for s in pred_tags]
    for i, (t, p) in enumerate(zip(y_true, y_pred)):
        if len(t) != len(p):
            raise ValueError(f"sentence {i}: {len(t)} true tags but {len(p)} predicted")
    words = sum(len(t) for t in y_true)
    correct = sum(a == b for t, p in zip(y_true, y_pred) for a, b in zip(t, p))
    out = {"accuracy": correct / words if words else 0.0, "n": len(y_true)}
    if not any(t != "O" for s in y_true for t in s) and not any(t != "O" for s in y_pred for t in s):
        return {**out, "precision": 0.0, "recall": 0.0, "f1": 0.0, "per_type": {}}
    for suffix, kwargs in (("", {}), ("_strict", {"mode": "strict", "scheme": IOB2})):
        report = classification_report(y_true, y_pred, output_dict=True, zero_division=0, **kwargs)
        micro = report["micro avg"]
        out[f"precision{suffix}"] = float(micro["precision"])
        out[f"recall{suffix}"] = float(micro["recall"])
        out[f"f1{suffix}"] = float(micro["f1-score"])
        if not suffix:
            out["per_type"] = {
                k: {
                    "precision": float(v["precision"]),
                    "recall": float(v["recall"]),
                    "f1": float(v["f1-score"]),
                    "support": int(v["support"]),
                }
                for k, v in sorted(report.items())
                if not k.endswith(" avg")
            }
    return out


def tags_of(ids: Sequence[int], labels: list[str]) -> list[str]:
    """Tag names of word tag ids; -1 (a word truncated away or without a word piece) is ``O``."""
    return [labels[i] if i >= 0 else "O" for i in ids]


def token_scores(
    logits_rows,
    word_ids_rows,
    tags: Sequence[Sequence[int]],
    labels: list[str],
    decode: str = "viterbi",
    max_length: int | None = None,
) -> dict:
    """Entity metrics and mean token cross-entropy of per-sentence logits.

    logits_rows[i]: (seq_i, labels) logits of sentence i (no padding); word_ids_rows[i]: its
    word ids; tags[i]: its true tag ids per word. Words the tokenizer truncated away count as
    ``O`` (``cut``: the sentences, words and true entities past the cut); words it reads as no
    token at all (a zero-width or control character standing as a word) are left out of the
    sentence, their tag with them (``tokenless_words``), so an entity around one still matches.
    max_length: the length the rows were cut at, which tells a tokenless word at a sentence's end
    from a cut one (without it, every missing word at the end counts as cut).
    decode: ``viterbi`` (the most likely valid IOB2 sequence of the words' first-piece scores,
    :func:`fastft.data.iob.decode_tags`) or ``argmax`` (each word's most likely tag on its own);
    with ``viterbi`` the argmax figures are recorded beside (``f1_argmax``, ``precision_argmax``,
    ``recall_argmax``).
    """
    check_decode(decode, ValueError)
    true, preds, argmax_preds, nll, count = [], [], [], 0.0, 0
    cut = {"sentences": 0, "words": 0, "entities": 0}
    tokenless = 0
    for lg, wids, t in zip(logits_rows, word_ids_rows, tags):
        lg = np.asarray(lg, dtype=np.float64)
        pos = first_pieces(wids)
        words = sorted(pos)
        seen = words[-1] + 1 if words else 0  # words past the last one with a piece: cut, or tokenless
        end = seen if max_length is None or len(wids) >= max_length else len(t)
        kept = [w for w in range(len(t)) if w in pos or w >= end]
        tokenless += len(t) - len(kept)
        if end < len(t):
            names = to_iob2(tags_of(t, labels))  # every entity opens with B- (an I- after O or another type too)
            cut["sentences"] += 1
            cut["words"] += len(t) - end
            cut["entities"] += sum(1 for i, tag in enumerate(names) if tag[:2] == "B-" and _entity_end(names, i) > end)
        logp = np.zeros((0, len(labels)))
        if words:
            rows = lg[[pos[w] for w in words]]
            shifted = rows - rows.max(axis=1, keepdims=True)
            logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
            nll -= float(logp[np.arange(len(rows)), [t[w] for w in words]].sum())
            count += len(rows)
        best = dict(zip(words, logp.argmax(axis=1).tolist()))
        true.append(tags_of([t[w] for w in kept], labels))
        argmax_preds.append([best.get(w, -1) for w in kept])
        if decode == "viterbi":
            path = dict(zip(words, decode_tags(logp, labels).tolist()))
            preds.append([path.get(w, -1) for w in kept])
        else:
            preds.append(argmax_preds[-1])
    out = entity_metrics(true, [tags_of(p, labels) for p in preds])
    out["decode"] = decode
    if decode == "viterbi":
        plain = entity_metrics(true, [tags_of(p, labels) for p in argmax_preds])
        out.update({f"{k}_argmax": plain[k] for k in ("f1", "precision", "recall")})
    out["loss"] = nll / count if count else 0.0
    out["cut"] = cut
    out["tokenless_words"] = tokenless
    return out


def _entity_end(names: list[str], start: int) -> int:
    """One past the last word of the entity starting at ``start``."""
    end = start + 1
    while end < len(names) and names[end] == "I-" + names[start][2:]:
        end += 1
    return end


def encode_rows(tokenizer, sentences, max_length: int) -> tuple[list[list[int]], list[list[int | None]]]:
    """(word-piece ids, word ids) of each sentence, truncated to ``max_length``, unpadded."""
    enc = encode_words(tokenizer, sentences, max_length)
    ids = [list(x) for x in enc["input_ids"]]
    return ids, [enc.word_ids(i) for i in range(len(ids))]


def _batched(ids: list[list[int]], pad_id: int, batch_size: int, run, progress: bool = False) -> list:
    """Per-sentence logits (seq_i, labels), input order: ``run(input_ids, mask)`` -> (batch, seq, labels)
    over length-sorted batches (less padding)."""
    out: list = [None] * len(ids)
    for rows in sorted_batches([len(x) for x in ids], batch_size, desc="evaluating", progress=progress):
        x, m = pad_rows(ids, rows, pad_id)
        y = run(x, m)
        if y.ndim != 3:
            raise ValueError(f"token classification needs logits (batch, sequence, labels); got shape {y.shape}")
        for i, r in enumerate(rows):
            out[r] = y[i, : len(ids[r])]
    return out


def torch_token_logits(net, ids: list[list[int]], pad_id: int, batch_size: int = 64, progress: bool = False) -> list:
    """Per-sentence logits (seq_i, labels) of a PyTorch token classifier over pre-tokenized rows."""
    import torch

    def run(x, m):
        with torch.inference_mode():
            return net(input_ids=torch.from_numpy(x), attention_mask=torch.from_numpy(m)).logits.float().numpy()

    net.eval()
    return _batched(ids, pad_id, batch_size, run, progress)


def ort_token_logits(sess, ids: list[list[int]], pad_id: int, batch_size: int = 64) -> list:
    """Per-sentence logits (seq_i, labels) of an ONNX token classifier (an ONNX Runtime session whose
    output ``logits`` is (batch, sequence, labels)) over pre-tokenized rows."""
    names = [i.name for i in sess.get_inputs()]

    def run(x, m):
        feeds = {"input_ids": x, "attention_mask": m, "token_type_ids": np.zeros_like(x)}
        return sess.run(["logits"], {k: feeds[k] for k in names})[0].astype(np.float32)

    return _batched(ids, pad_id, batch_size, run)


def token_logits(net, tokenizer, sentences, max_length: int, batch_size: int = 64, progress: bool = False):
    """(per-sentence logits (seq_i, labels) without padding, per-sentence word ids), input order."""
    ids, wids = encode_rows(tokenizer, sentences, max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return torch_token_logits(net, ids, pad_id, batch_size, progress), wids


def run_token_eval(net, tokenizer, split, labels: list[str], max_length: int, batch_size: int = 64, progress=False):
    """Entity metrics and loss of ``net`` on a :class:`fastft.data.tokens.TokenSplit`."""
    logits, wids = token_logits(net, tokenizer, split.tokens, max_length, batch_size, progress)
    return token_scores(logits, wids, split.tags, labels, max_length=max_length)


__all__ = [
    "IGNORE_INDEX",
    "TOKEN_METRIC_NAMES",
    "encode_rows",
    "entity_metrics",
    "ort_token_logits",
    "run_token_eval",
    "tags_of",
    "token_logits",
    "token_scores",
    "torch_token_logits",
]
