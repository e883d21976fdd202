"""Augmented distillation data and the shifted test splits."""

from __future__ import annotations

import random

import pytest

from fastft.compress.augment import OPS, augment_one, augment_texts, shift_split, vocabulary

TEXTS = [
    "a gripping , beautifully acted film",
    "dull and far too long",
    "the best thing about it is the score",
    "ok",
    "",
]


def test_augment_is_seeded_and_covers_every_operation():
    a = augment_texts(TEXTS, copies=3, seed=7)
    b = augment_texts(TEXTS, copies=3, seed=7)
    c = augment_texts(TEXTS, copies=3, seed=8)
    assert a == b and a[0] != c[0]
    texts, src, ops = a
    assert len(texts) == 3 * len(TEXTS) and src[: len(TEXTS)] == list(range(len(TEXTS)))
    assert set(ops) == set(OPS)
    # most copies differ from their original (one-word texts can only be masked / grow)
    changed = sum(t != TEXTS[i] for t, i in zip(texts, src) if TEXTS[i])
    assert changed >= 0.75 * sum(1 for i in src if TEXTS[i])


@pytest.mark.parametrize("op", OPS)
def test_each_operation(op):
    rng = random.Random(0)
    vocab = vocabulary(TEXTS)
    text = "the best thing about it is the score of the film"
    n = len(text.split())
    out = augment_one(text, op, rng, vocab, "[MASK]", rate=0.2)
    words = out.split()
    if op == "insert":
        from collections import Counter

        added = Counter(words) - Counter(text.split())
        assert len(words) == n + 2 and all(w in vocab[0] for w in added)
    elif op == "delete":
        assert 0 < len(words) < n
    elif op == "replace":
        assert len(words) == n and out != text
    elif op == "swap":
        assert sorted(words) == sorted(text.split()) and out != text
    elif op == "mask":
        assert len(words) == n and words.count("[MASK]") == 2
        i = words.index("[MASK]")
        assert words[i + 1] == "[MASK]"  # one contiguous span


def test_unknown_operation_and_empty_text():
    rng = random.Random(0)
    assert augment_one("", "delete", rng, ([], []), "[MASK]") == ""
    with pytest.raises(ValueError, match="unknown augmentation"):
        augment_one("a b", "paraphrase", rng, ([], []), "[MASK]")


def test_shift_split_rare_and_long():
    train = ["good film", "bad film", "good acting", "film film good"]
    test = ["good film", "zyzzyva quixotic", "a very long review of a good film indeed", "bad"]
    s = shift_split(train, test, fraction=0.5)
    assert s["rare"][0] == 1 or 1 in s["rare"]  # unseen words are the rarest
    assert 2 in s["long"] and len(s["long"]) == 2
    assert 0 not in s["rare"]


def test_report_rows_carry_shifted_retention(tmp_path):
    import numpy as np

    from fastft.compress.report import agreement, build_rows, shift_accuracy

    shift = {"rare": [0, 1], "long": [2, 3]}
    y = [0, 1, 0, 1]
    t = shift_accuracy(shift, np.array([[1, 0], [0, 1], [1, 0], [0, 1.0]]), y)  # teacher: all right
    s = shift_accuracy(shift, np.array([[1, 0], [1, 0], [1, 0], [0, 1.0]]), y)  # student: one rare miss
    assert t == {"accuracy_rare": 1.0, "accuracy_long": 1.0} and s["accuracy_rare"] == 0.5
    f = tmp_path / "m.onnx"
    f.write_bytes(b"x")
    stages = [
        {"name": "teacher", "parameters": 1, "file": f, "flops_128": 1, "accuracy": 1.0, **t},
        {"name": "quantized", "parameters": 1, "file": f, "flops_128": 1, "accuracy": 0.75, **s},
    ]
    rows = build_rows(stages, None)
    assert rows[1]["retained_rare"] == 0.5 and rows[1]["retained_long"] == 1.0
    assert agreement(np.eye(2), np.eye(2)[::-1]) == 0.0


@pytest.mark.parametrize("labels", ["original", "teacher"])
def test_augmented_rows_carry_the_original_label_or_none(labels):
    """--augment-labels: the copies after the training rows keep their original text's label, or
    carry NO_LABEL so that only the teacher's soft targets teach them (the originals keep theirs)."""
    import importlib
    from types import SimpleNamespace

    import torch

    from fastft.compress.config import CompressConfig
    from fastft.compress.stages import augment_info, train_rows

    dis = importlib.import_module("fastft.compress.distill")  # (fastft.compress.distill is also a function)
    cfg = CompressConfig(augment=2, augment_labels=labels, seed=7)
    cfg.validate()
    ctx = SimpleNamespace(
        cfg=cfg,
        ids={"train": [[1, 5, 2], [1, 6, 2]]},
        y={"train": [0, 1]},
        texts={"train": ["good", "bad"]},
        transfer=None,
        # made once per (copies, seed): copy c of row i at c * n + i, its original's label in "y"
        augmented={"copies": 2, "seed": 7, "ids": [[1, 5], [1, 6], [5, 2], [6, 2]], "y": [0, 1, 0, 1]},
    )
    ids, y = train_rows(ctx)
    assert ids[:2] == ctx.ids["train"] and len(ids) == 6 and y[:2] == [0, 1]
    want = [0, 1, 0, 1] if labels == "original" else [dis.NO_LABEL] * 4
    assert y[2:] == want
    assert ("original" in augment_info(ctx)["hard_labels"]) == (labels == "original")
    # a batch of copies alone has no label term: the loss is the teacher's KL (and is finite)
    out = SimpleNamespace(logits=torch.tensor([[0.3, -0.2], [1.0, 0.5]]))
    t = torch.tensor([[0.0, 1.0], [2.0, -1.0]])
    loss, parts = dis.distill_loss(out, torch.tensor(y[4:]), t, None, None, 2.0, 0.5, 0.0)
    if labels == "teacher":
        assert parts["ce"] == 0.0 and loss.item() == pytest.approx(0.5 * parts["kd"])
    else:
        assert parts["ce"] > 0 and loss.item() == pytest.approx(0.5 * parts["kd"] + 0.5 * parts["ce"])


def test_augment_labels_refuses_unknown_values():
    from fastft.compress.config import CompressConfig
    from fastft.core.errors import FastftError

    with pytest.raises(FastftError, match="augment_labels \\(--augment-labels\\) must be one of original, teacher"):
        CompressConfig(augment_labels="gold").validate()
    # a token-classification teacher resolves --augment to 0: no copies to label
    with pytest.raises(
        FastftError, match=r"augment_labels \(--augment-labels\) 'teacher' sets the label .* makes none"
    ):
        CompressConfig(augment_labels="teacher").resolved(text=False).validate()
    CompressConfig(augment_labels="teacher").resolved(text=True).validate()  # the text recipe makes copies


def test_deletion_never_empties_a_text():
    """Even when every word draws deletion (rate 1), one word of the text is kept."""
    vocab = vocabulary(["a b c"])
    for seed in range(5):
        out = augment_one("a b c", "delete", random.Random(seed), vocab, "[MASK]", rate=1.0)
        assert len(out.split()) == 1 and out in ("a", "b", "c")


def test_span_masking_can_cover_the_end_of_the_text():
    """Every start position of the masked span is possible, the last word's included."""
    vocab = vocabulary(["a b c d e"])
    outs = {augment_one("a b c d e", "mask", random.Random(s), vocab, "[MASK]", rate=0.2) for s in range(60)}
    assert "a b c d [MASK]" in outs and "[MASK] b c d e" in outs


def test_each_copy_cycles_to_the_next_operation():
    """Copy c of text i uses ops[(i + c) % len(ops)]."""
    texts = ["one two three", "four five six", "seven eight nine"]
    _, src, which = augment_texts(texts, 2, seed=0)
    assert src == [0, 1, 2, 0, 1, 2]
    assert which == [OPS[0], OPS[1], OPS[2], OPS[1], OPS[2], OPS[3]]
