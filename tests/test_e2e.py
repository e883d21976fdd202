"""End to end on the real built-in model: fine-tune minilm-l6 for a few steps on sms-spam,
then reload the result with plain transformers (no fastft) and check it predicts the same."""

from __future__ import annotations

import numpy as np
import torch

import fastft


def test_minilm_l6_fine_tunes_and_reloads_with_plain_transformers(tmp_path):
    out = tmp_path / "spam"
    meta = fastft.train(
        model="minilm-l6",
        data="sms-spam",
        output=str(out),
        limit=200,
        max_steps=12,
        batch_size=16,
        max_length=48,
        lr=1e-4,
        progress=False,
    )
    assert meta["labels"] == ["ham", "spam"]
    assert meta["data"]["sizes"] == {"train": 200, "validation": 200, "test": 200}
    assert meta["training"]["steps"] == 12
    assert meta["metrics"]["test"]["n"] == 200

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.id2label == {0: "ham", 1: "spam"}
    assert model.config.num_hidden_layers == 6 and model.config.hidden_size == 384
    texts = ["WINNER!! Claim your free prize now, call 09061701461", "ok see you at lunch then"]
    with torch.inference_mode():
        logits = model(**tok(texts, padding=True, return_tensors="pt")).logits.numpy()
    ours = fastft.predict(str(out), texts)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    for row, p in zip(ours, probs):
        assert row["label"] == model.config.id2label[int(p.argmax())]
        assert abs(row["score"] - float(p.max())) < 1e-5
