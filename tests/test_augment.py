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
