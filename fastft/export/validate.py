"""Parity checks run after every export.

- fp32: ONNX logits vs PyTorch logits, max abs difference <= ``atol`` (1e-4) at several
  shapes (batch 1 and 3; sequence 7, 64 and the model maximum), with padding in the batch.
- INT8: label agreement with the fp32 graph on real text (the validation split) >= 99% (token
  classification: per-token labels on the non-padding tokens),
  and the accuracy of both against the gold labels.
A failed check raises :class:`fastft.core.errors.FastftError`.
"""

from __future__ import annotations

import os

import numpy as np

from fastft.core.errors import FastftError, first_line

FP32_ATOL = 1e-4
MIN_AGREEMENT = 0.99


def session(path: str | os.PathLike, threads: int | None = None, level: str = "basic"):
    """A CPU InferenceSession on ``path`` (graph already optimised at export: ``basic`` is enough)."""
    import onnxruntime as ort

    from fastft.export.optimize import ort_level

    so = ort.SessionOptions()
    so.graph_optimization_level = ort_level(level)
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise FastftError(f"ONNX Runtime cannot load {path} ({first_line(exc, 200)})") from exc


def parity_shapes(max_length: int) -> list[tuple[int, int]]:
    """(batch, sequence) pairs checked: batch 1 and 3 at sequence 7, 64 and the model maximum."""
    seqs = sorted({s for s in (7, 64, max_length) if s <= max_length})
    return [(b, s) for s in seqs for b in (1, 3)]


def random_inputs(input_names, batch: int, seq: int, vocab: int, seed: int = 0) -> dict:
    """Random token ids; in a batch > 1 the last row is padded to half length."""
    rng = np.random.default_rng(seed + 1000 * batch + seq)
    ids = rng.integers(5, max(6, vocab), size=(batch, seq), dtype=np.int64)
    mask = np.ones_like(ids)
    if batch > 1:
        mask[-1, max(1, seq // 2) :] = 0
    tensors = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    return {n: tensors[n] for n in input_names}


def fp32_parity(net, onnx_path, input_names, max_length: int, atol: float = FP32_ATOL, sess=None) -> dict:
    """Max abs logit difference ONNX vs PyTorch per shape; raises FastftError above ``atol``."""
    import torch

    sess = sess or session(onnx_path)
    vocab = int(getattr(net.config, "vocab_size", 1000))
    net.eval()
    results, worst = [], 0.0
    for batch, seq in parity_shapes(max_length):
        feeds = random_inputs(input_names, batch, seq, vocab)
        with torch.inference_mode():
            ref = net(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits.float().numpy()
        got = sess.run(["logits"], feeds)[0]
        if got.shape != ref.shape:
            raise FastftError(f"ONNX logits have shape {got.shape}, PyTorch {ref.shape} at batch {batch}, seq {seq}")
        diff = float(np.abs(got - ref).max())
        results.append({"batch": batch, "seq": seq, "max_abs_diff": diff})
        worst = max(worst, diff)
        if not np.isfinite(diff) or diff > atol:
            raise FastftError(
                f"fp32 parity failed: ONNX logits differ from PyTorch by {diff:.3g} (> {atol:g}) "
                f"at batch {batch}, sequence {seq}"
            )
    return {"atol": atol, "max_abs_diff": worst, "shapes": results, "passed": True}


def onnx_logits(sess, tokenizer, texts: list[str], input_names, max_length: int, batch_size: int = 32) -> np.ndarray:
    """Logits of ``texts`` from an ORT session, batched by length, in input order."""
    return batched_logits(
        lambda feeds: sess.run(["logits"], feeds)[0], tokenizer, texts, input_names, max_length, batch_size
    )


def batched_logits(run, tokenizer, texts: list[str], input_names, max_length: int, batch_size: int = 32) -> np.ndarray:
    """Logits of ``texts`` from ``run(feeds)`` (feeds: ``input_names`` -> int64 arrays, an input the
    tokenizer does not give as zeros), batched by length, padded per batch, in input order."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = None
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        enc = tokenizer(
            [texts[i] for i in idx], padding=True, truncation=True, max_length=max_length, return_tensors="np"
        )
        zeros = np.zeros_like(enc["input_ids"], dtype=np.int64)
        feeds = {n: enc[n].astype(np.int64) if n in enc else zeros for n in input_names}
        logits = np.asarray(run(feeds))
        if out is None:
            out = np.zeros((len(texts), logits.shape[1]), dtype=np.float32)
        out[idx] = logits
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


def int8_agreement(
    fp32_sess,
    int8_sess,
    tokenizer,
    texts: list[str],
    labels: list[int] | None,
    input_names,
    max_length: int,
    split: str = "validation",
) -> dict:
    """Label agreement INT8 vs fp32 on ``texts`` and the accuracy of both (what passes is
    :func:`fastft.export.export`'s decision, against its ``min_agreement``)."""
    if not texts:
        raise FastftError("no texts to check INT8 agreement on")
    a = onnx_logits(fp32_sess, tokenizer, texts, input_names, max_length).argmax(1)
    b = onnx_logits(int8_sess, tokenizer, texts, input_names, max_length).argmax(1)
    agreement = float((a == b).mean())
    out = {"split": split, "n": len(texts), "label_agreement": agreement}
    if labels is not None and len(labels) == len(texts):
        y = np.asarray(labels)
        out["fp32_accuracy"] = float((a == y).mean())
        out["int8_accuracy"] = float((b == y).mean())
        out["accuracy_change"] = out["int8_accuracy"] - out["fp32_accuracy"]
    return out


def token_onnx_logits(sess, tokenizer, words: list[list[str]], max_length: int, batch_size: int = 32):
    """(per-sentence logits (tokens, labels) of the non-padding tokens, per-sentence word ids) of
    pre-split sentences from an ORT session, in input order; encoded as in training
    (:func:`fastft.data.collate.encode_words`)."""
    from fastft.data.collate import encode_words

    names = [i.name for i in sess.get_inputs()]
    order = sorted(range(len(words)), key=lambda i: len(words[i]))
    logits: list = [None] * len(words)
    wids: list = [None] * len(words)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        enc = encode_words(tokenizer, [words[i] for i in idx], max_length, padding=True)
        x = enc["input_ids"].numpy().astype(np.int64)
        feeds = {"input_ids": x, "attention_mask": enc["attention_mask"].numpy().astype(np.int64)}
        feeds["token_type_ids"] = np.zeros_like(x)
        out = sess.run(["logits"], {k: feeds[k] for k in names})[0]
        for r, i in enumerate(idx):
            n = int(feeds["attention_mask"][r].sum())
            logits[i], wids[i] = out[r, :n], enc.word_ids(r)[:n]
    return logits, wids


def int8_token_agreement(
    fp32_sess,
    int8_sess,
    tokenizer,
    words: list[list[str]],
    tags: list[list[int]] | None,
    max_length: int,
    split: str = "validation",
) -> dict:
    """Token classification: per-token label agreement INT8 vs fp32 on the non-padding tokens of
    ``words`` (sentences as word lists, encoded as in training), and the tag accuracy of both at
    each word's first sub-token (``tags``: gold tag ids in the model's label order)."""
    if not words:
        raise FastftError("no sentences to check INT8 agreement on")
    a, word_ids = token_onnx_logits(fp32_sess, tokenizer, words, max_length)
    b, _ = token_onnx_logits(int8_sess, tokenizer, words, max_length)
    same = total = 0
    hits = {"fp32": 0, "int8": 0}
    scored = 0
    for k, (la, wids, lb) in enumerate(zip(a, word_ids, b)):
        pa, pb = la.argmax(-1), lb.argmax(-1)
        same += int((pa == pb).sum())
        total += len(pa)
        if tags is not None:
            seen = set()
            for t, w in enumerate(wids):
                if w is None or w in seen or w >= len(tags[k]):
                    continue
                seen.add(w)
                scored += 1
                hits["fp32"] += int(pa[t] == tags[k][w])
                hits["int8"] += int(pb[t] == tags[k][w])
    agreement = same / total if total else 1.0
    out = {
        "split": split,
        "n": len(words),
        "tokens": total,
        "unit": "token (non-padding)",
        "label_agreement": agreement,
    }
    if tags is not None and scored:
        out["fp32_accuracy"] = hits["fp32"] / scored
        out["int8_accuracy"] = hits["int8"] / scored
        out["accuracy_change"] = out["int8_accuracy"] - out["fp32_accuracy"]
        out["accuracy_unit"] = "tag accuracy at each word's first sub-token"
    return out
