"""``fastft eval`` for token-classification directories: PyTorch weights or the ONNX model.

Entity metrics (seqeval, see :mod:`fastft.train.token_metrics`) of the first word piece's tag of
each word; ONNX Runtime scores the file ``fastft predict`` serves (``model_int8.onnx`` when
fastft.json names it the default), with the same word-piece encoding as training.
"""

from __future__ import annotations

from pathlib import Path

from fastft.core.errors import DataError
from fastft.core.numerics import check_finite
from fastft.data.labels import align_tag_ids


def evaluate_tokens(
    path: Path,
    meta: dict,
    data,
    split: str,
    *,
    backend: str,
    int8: bool | None,
    batch_size: int,
    max_length: int | None,
    columns,
    text_column,
    label_column,
    encoding: str,
    limit: int | None,
    decode: str = "viterbi",
) -> dict:
    """Entity metrics of the token-classification directory ``path`` on a split."""
    from fastft.data import load_data
    from fastft.data.collate import clamp_max_length
    from fastft.data.datasets import check_unchanged
    from fastft.data.loader import recorded_args
    from fastft.models import load_tokenizer
    from fastft.train.token_metrics import encode_rows, ort_token_logits, token_logits, token_scores

    spec = meta.get("data", {})
    data, args, same = recorded_args(
        path,
        spec,
        data,
        task="token-classification",
        text_column=text_column,
        label_column=label_column,
        columns=columns,
    )
    splits = load_data(data, **args, encoding=encoding)
    if same:
        check_unchanged(splits, spec)
    labels = [str(x) for x in meta.get("labels") or []]
    tokenizer = load_tokenizer(path)
    if backend == "onnxruntime":  # the file fastft predict serves, at the graph level fastft.json records
        from fastft.runtime.load import served_onnx
        from fastft.runtime.session import create_session, runtime_level, session_options

        onnx_file, served_labels, length = served_onnx(path, int8, max_length)
        labels = labels or served_labels
        level = runtime_level(meta, onnx_file.name) or "all"
        sess = create_session(onnx_file, session_options(spinning=False, level=level))
        part = align_tag_ids(splits.split(split).subset(limit), splits.labels, labels)
        ids, wids = encode_rows(tokenizer, part.tokens, length)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        logits = ort_token_logits(sess, ids, pad_id, batch_size)
        extra = {"backend": "onnxruntime", "file": onnx_file.name}
    else:
        from fastft.models import load_classifier

        net = load_classifier(path, task="token-classification")
        if not labels:
            labels = [str(net.config.id2label[i]) for i in range(net.config.num_labels)]
        length = clamp_max_length(max_length or meta.get("max_length") or 128, net.config)
        part = align_tag_ids(splits.split(split).subset(limit), splits.labels, labels)
        logits, wids = token_logits(net, tokenizer, part.tokens, length, batch_size)
        extra = {"backend": "torch"}
    if len(part) == 0:
        raise DataError(f"the {split} split of {data!r} is empty")
    return {
        "model": str(path),
        "data": str(data),
        "split": split,
        "task": "token-classification",
        "max_length": length,
        **extra,
        **token_scores([check_finite(x) for x in logits], wids, part.tags, labels, decode, max_length=length),
    }
