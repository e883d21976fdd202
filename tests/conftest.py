"""Shared fixtures: a tiny random BERT classifier saved as a fastft model directory.

Tiny random configs keep the default run fast on 2 CPU cores; the real minilm-l6 is
used only by the end-to-end test.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

POSITIVE = [
    "a wonderful, moving film",
    "brilliant acting and a great story",
    "i loved every minute",
    "funny, warm and smart",
    "a delight from start to finish",
    "superb direction, great cast",
]
NEGATIVE = [
    "a dull, lifeless mess",
    "boring and far too long",
    "i hated the ending",
    "weak script and bad acting",
    "a tedious waste of time",
    "clumsy, loud and stupid",
]


def make_rows(n: int = 60, seed: int = 0) -> list[dict]:
    """``n`` labelled rows, positive and negative alternating, with some variety in length."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        pool, label = (POSITIVE, "positive") if i % 2 == 0 else (NEGATIVE, "negative")
        words = " ".join(rng.choice(pool) for _ in range(rng.randint(1, 4)))
        rows.append({"text": words, "label": label})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def tiny_data_file(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "tiny.jsonl", make_rows())


def tiny_bert_config(labels, layers: int = 2, hidden: int = 32, heads: int = 4, max_positions: int = 128):
    """A tiny BERT config with the full minilm-l6 vocabulary and ``labels`` as its head."""
    from transformers import BertConfig

    return BertConfig(
        vocab_size=30522,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=hidden * 2,
        max_position_embeddings=max_positions,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)},
    )


def save_tiny_model(
    path: Path,
    data_file: Path | None = None,
    labels=("negative", "positive"),
    layers: int = 2,
    hidden: int = 32,
    heads: int = 4,
    max_positions: int = 128,
    seed: int = 0,
    answer: str | None = None,
) -> Path:
    """A tiny random BertForSequenceClassification + the minilm-l6 tokenizer + fastft.json;
    ``answer``: a label the model gives every text (its classifier's weights 0, that label's bias 1)."""
    import torch
    from transformers import BertForSequenceClassification

    from fastft.models import load_tokenizer, write_meta

    torch.manual_seed(seed)
    model = BertForSequenceClassification(tiny_bert_config(labels, layers, hidden, heads, max_positions)).eval()
    if answer is not None:
        with torch.no_grad():
            model.classifier.weight.zero_()
            model.classifier.bias.copy_(torch.tensor([float(name == answer) for name in labels]))
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    load_tokenizer("minilm-l6").save_pretrained(path)
    spec = (
        {"data": str(data_file), "path": str(data_file), "seed": 42, "text_column": "text", "label_column": "label"}
        if data_file
        else {}
    )
    write_meta(
        path,
        {
            "format": 1,
            "task": "sequence-classification",
            "labels": list(labels),
            "max_length": max_positions,
            "data": spec,
            "metrics": {},
        },
    )
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_data_file) -> Path:
    """Read-only: copy it (shutil.copytree) before changing anything in it."""
    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny-bert", tiny_data_file)


# -- tests that need transformers' AttentionInterface (5.x) ---------------------------------------------
_DISPATCH: tuple[bool, str] | None = None


@contextlib.contextmanager
def read_only(*dirs: Path):
    """``dirs`` made immutable (chattr +i: root ignores modes) for the block; skips the test
    where the filesystem has no such flag."""
    done = []
    try:
        for d in dirs:
            chattr = shutil.which("chattr")
            if not chattr or subprocess.run([chattr, "+i", str(d)], capture_output=True).returncode:
                pytest.skip("cannot make a directory read-only here (no chattr +i)")
            done.append(d)
        yield
    finally:
        for d in done:
            subprocess.run(["chattr", "-i", str(d)], capture_output=True)


def attention_dispatch() -> tuple[bool, str]:
    """fastft.swap.check_dispatch on a tiny BERT: (True, "") where attention dispatches through
    transformers' AttentionInterface (5.x), else (False, why). Probed once per session."""
    global _DISPATCH
    if _DISPATCH is None:
        import torch
        import transformers as tf

        from fastft.swap import check_dispatch

        torch.manual_seed(0)
        model = tf.BertModel(
            tf.BertConfig(
                hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, vocab_size=50
            )
        ).eval()
        _DISPATCH = check_dispatch(model)
    return _DISPATCH


def pytest_collection_modifyitems(config, items):
    marked = [item for item in items if item.get_closest_marker("attention_interface")]
    if not marked:
        return
    ok, why = attention_dispatch()
    if not ok:
        import transformers

        skip = pytest.mark.skip(
            reason=f"needs transformers >= 5: transformers {transformers.__version__} hard-codes the attention of {why}"
        )
        for item in marked:
            item.add_marker(skip)
