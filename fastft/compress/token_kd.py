"""Token classification in ``fastft compress``: word-aligned data, token-level distillation targets
and entity-F1 scoring of a stage (PyTorch or ONNX Runtime).

Distillation loss per batch, on the labelled positions only (each word's first word piece; the
-100 positions of :func:`fastft.data.collate.align_tags` are ignored): the sequence loss of
:func:`fastft.compress.distill.distill_loss` with every labelled token as one sample (KL of the
temperature-softened teacher and student tag distributions + cross-entropy with the gold tag),
plus the hidden-state MSE over every real token. The teacher's per-token logits are cached once,
flat ``(total_tokens, labels)`` beside its hidden states.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from fastft.data.collate import IGNORE_INDEX, align_tags, first_pieces
from fastft.train.token_metrics import encode_rows, ort_token_logits, token_scores, torch_token_logits


class TokenRows:
    """A split encoded for distillation: token ids, aligned labels, word ids and word tags per sentence."""

    def __init__(self, tokenizer, split, max_length: int):
        self.ids, self.word_ids = encode_rows(tokenizer, split.tokens, max_length)
        self.labels = [align_tags(w, t) for w, t in zip(self.word_ids, split.tags)]
        self.tags = [list(t) for t in split.tags]
        self.max_length = max_length


def padded_labels(labels: list[list[int]], rows: list[int], seq: int):
    """(batch, seq) labels of ``rows``, -100 on padding."""
    import torch

    out = torch.full((len(rows), seq), IGNORE_INDEX, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(labels[r])] = torch.tensor(labels[r], dtype=torch.long)
    return out


def teacher_logits_batch(cache, rows: list[int], seq: int):
    """(batch, seq, labels) teacher logits from the flat per-token cache, zeros on padding."""
    import torch

    flat = cache.logits
    out = torch.zeros((len(rows), seq, flat.shape[1]), dtype=torch.float32)
    for i, r in enumerate(rows):
        a, b = int(cache.offsets[r]), int(cache.offsets[r + 1])
        out[i, : b - a] = flat[a:b]
    return out


def loss_inputs(cache, labels: list[list[int]]):
    """``train_student``'s hook: (student outputs, gold tags, teacher logits) on labelled positions."""

    def select(out, rows: list[int], seq: int):
        y = padded_labels(labels, rows, seq)
        keep = y != IGNORE_INDEX
        t = teacher_logits_batch(cache, rows, seq)
        hidden = getattr(out, "hidden_states", None)
        return SimpleNamespace(logits=out.logits[keep], hidden_states=hidden), y[keep], t[keep]

    return select


def torch_entity_f1(net, ctx, split: str = "validation") -> float:
    """Entity F1 (seqeval default mode) of a PyTorch token classifier on a prepared split."""
    rows = ctx.rows[split]
    return entity_f1_of_logits(torch_token_logits(net, rows.ids, ctx.pad_id), rows, ctx.labels)["f1"]


def ort_entity_metrics(sess, ctx, split: str) -> dict:
    """Entity metrics of an ONNX token classifier (ONNX Runtime session) on a prepared split."""
    rows = ctx.rows[split]
    return entity_f1_of_logits(ort_token_logits(sess, rows.ids, ctx.pad_id), rows, ctx.labels)


def int8_scoring(ctx) -> dict:
    """``accuracy_aware_int8``'s token hooks: validation entity F1 as the score, and the labelled
    tokens' logits (fp32 vs INT8) for the sensitivity ranking."""
    rows = ctx.rows["validation"]

    def logits_fn(sess, ids, pad_id):
        sub = rows if len(ids) == len(rows.ids) else _head(rows, len(ids))
        return flat_labelled(ort_token_logits(sess, ids, pad_id), sub)

    def score_fn(sess) -> float:
        return ort_entity_metrics(sess, ctx, "validation")["f1"]

    return {"logits_fn": logits_fn, "score_fn": score_fn, "metric": "entity F1"}


def _head(rows: TokenRows, n: int) -> TokenRows:
    out = TokenRows.__new__(TokenRows)
    out.ids, out.word_ids, out.labels, out.tags = rows.ids[:n], rows.word_ids[:n], rows.labels[:n], rows.tags[:n]
    out.max_length = rows.max_length
    return out


def entity_f1_of_logits(logits_rows, rows: TokenRows, labels: list[str]) -> dict:
    """Entity metrics of per-sentence logits (seq_i, labels) on encoded rows."""
    return token_scores(logits_rows, rows.word_ids, rows.tags, labels, max_length=rows.max_length)


def flat_labelled(logits_rows, rows: TokenRows) -> np.ndarray:
    """(labelled tokens, labels): the rows of each sentence's first word pieces, concatenated
    (what INT8 sensitivity compares between fp32 and quantized graphs)."""
    parts = [lg[sorted(first_pieces(w).values())] for lg, w in zip(logits_rows, rows.word_ids)]
    return np.concatenate(parts, axis=0) if parts else np.zeros((0, 1), dtype=np.float32)
