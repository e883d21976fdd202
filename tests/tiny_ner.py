"""A tiny random BertForTokenClassification saved as a fastft token-classification directory.

Random weights, the real minilm-l6 tokenizer: the served path (tokenization, offsets, word
pieces, per-token logits, entity grouping) is the real one, in milliseconds. The classifier
weights are scaled up so that a random model still predicts a mix of tags, entities included.
"""

from __future__ import annotations

from pathlib import Path

NER_LABELS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")

NER_TEXTS = [
    "Angela Merkel visited Paris",
    "EU rejects German call to boycott British lamb .",
    "Peter Blackburn , BRUSSELS 1996-08-22",
    "Nadim Ladki flew from Al-Ain to the United Arab Emirates on Thursday.",
    "Müller  joined   Siemens AG in São Paulo 🤖 yesterday",
    "x",
]


def save_tiny_token_model(
    path: Path,
    labels=NER_LABELS,
    layers: int = 2,
    hidden: int = 32,
    heads: int = 4,
    max_positions: int = 128,
    seed: int = 0,
    meta: bool = True,
) -> Path:
    """Write the model, the minilm-l6 tokenizer and (``meta``) fastft.json with the task and labels."""
    import torch
    from conftest import tiny_bert_config
    from transformers import BertForTokenClassification

    from fastft.models import load_tokenizer, write_meta

    torch.manual_seed(seed)
    model = BertForTokenClassification(tiny_bert_config(labels, layers, hidden, heads, max_positions)).eval()
    with torch.no_grad():  # a random head of std 0.02 scores every tag alike; spread them
        model.classifier.weight.mul_(50.0)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    load_tokenizer("minilm-l6").save_pretrained(path)
    if meta:
        write_meta(
            path,
            {
                "format": 1,
                "task": "token-classification",
                "labels": list(labels),
                "max_length": max_positions,
                "data": {},
                "metrics": {},
            },
        )
    return path


def pipeline_entities(model_dir: Path, texts: list[str]) -> list[list[dict]]:
    """transformers' pipeline("token-classification", aggregation_strategy="simple") on ``model_dir``,
    as fastft's entity dicts (``entity_group`` named ``entity``)."""
    from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline

    model = AutoModelForTokenClassification.from_pretrained(str(model_dir)).eval()
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    nlp = pipeline("token-classification", model=model, tokenizer=tok, aggregation_strategy="simple", device="cpu")

    def row(e: dict) -> dict:
        return {
            "entity": e["entity_group"],
            "score": float(e["score"]),
            "start": e["start"],
            "end": e["end"],
            "word": e["word"],
        }

    return [[row(e) for e in nlp(t)] for t in texts]


def assert_same_entities(got: list[list[dict]], want: list[list[dict]], atol: float = 1e-4) -> None:
    """Same spans, types and words; scores within ``atol``. Fails naming the text and entity."""
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        spans_g = [(e["entity"], e["start"], e["end"], e["word"]) for e in g]
        spans_w = [(e["entity"], e["start"], e["end"], e["word"]) for e in w]
        assert spans_g == spans_w, f"text #{i}: fastft {spans_g} != pipeline {spans_w}"
        for a, b in zip(g, w):
            assert abs(a["score"] - b["score"]) <= atol, f"text #{i} {a} vs {b}"
