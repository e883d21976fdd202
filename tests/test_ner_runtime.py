"""Token classification downstream: export (parity, fused attention, INT8), the runtime's entities
(the same spans as transformers' "simple" pipeline, ORT and torch, across threads), ``fastft
predict``. A tiny random BertForTokenClassification with the real minilm-l6 tokenizer."""

from __future__ import annotations

import json
import shutil
import threading

import numpy as np
import pytest
from tiny_ner import NER_LABELS, NER_TEXTS, assert_same_entities, pipeline_entities, save_tiny_token_model


@pytest.fixture(scope="module")
def ner_dir(tmp_path_factory):
    """Read-only tiny token classifier (fastft.json task token-classification)."""
    return save_tiny_token_model(tmp_path_factory.mktemp("ner") / "tiny-ner")


@pytest.fixture(scope="module")
def ner_onnx(ner_dir, tmp_path_factory):
    """``fastft export`` of the tiny token classifier: fp32 with fused attention and parity, plus INT8."""
    from fastft.export import export

    out = tmp_path_factory.mktemp("ner-onnx") / "tiny-ner-onnx"
    export(ner_dir, out, progress=False)
    export(ner_dir, out, int8=True, validate=False, overwrite=True, progress=False)  # parity checked by the first
    return out


@pytest.fixture(scope="module")
def reference(ner_dir):
    return pipeline_entities(ner_dir, NER_TEXTS)


def test_export_writes_per_token_logits_with_dynamic_axes_and_passes_parity(ner_dir, tmp_path):
    import onnx

    from fastft.core.schema import read_meta
    from fastft.export import export

    out = tmp_path / "onnx"
    info = export(ner_dir, out, progress=False)
    parity = info["parity"]["fp32"]
    assert parity["passed"] and parity["max_abs_diff"] <= 1e-4
    assert {(s["batch"], s["seq"]) for s in parity["shapes"]} == {(1, 7), (3, 7), (1, 64), (3, 64), (1, 128), (3, 128)}
    from conftest import attention_dispatch

    if attention_dispatch()[0]:  # transformers 5: the fused-attention swap applies to the token head too
        assert info["export"]["attention"]["nodes"] == 2
    else:  # transformers 4.x hard-codes BERT's attention: the plain graph, and why
        assert "hard-codes" in info["export"]["fused_attention_fallback"]
    graph = onnx.load(str(out / "model.onnx")).graph
    (logits,) = [o for o in graph.output if o.name == "logits"]
    dims = [d.dim_param or d.dim_value for d in logits.type.tensor_type.shape.dim]
    assert dims == ["batch_size", "sequence_length", len(NER_LABELS)]
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    meta = read_meta(out)
    assert meta["task"] == "token-classification" and meta["labels"] == list(NER_LABELS)


def test_ort_entities_match_the_pipeline(ner_onnx, reference):
    import fastft

    for int8 in (False, True):
        pred = fastft.load(ner_onnx, int8=int8, threads=1, decode="argmax")
        assert pred.per_token and pred.info()["task"] == "token-classification"
        got = pred.predict(NER_TEXTS)
        if not int8:
            assert_same_entities(got, reference)
        for text, ents in zip(NER_TEXTS, got):  # INT8: well-formed spans into the text
            for e in ents:
                assert set(e) == {"entity", "score", "start", "end", "word"}
                assert 0 <= e["start"] < e["end"] <= len(text) and 0 < e["score"] <= 1
                assert e["entity"] in {"PER", "ORG", "LOC", "MISC"}
    # words behind 70,000 spaces (more than the raw cut keeps): the same entities, at offsets in the text as given
    lead = " " * 70_000
    pred = fastft.load(ner_onnx, int8=False, threads=1, decode="argmax")
    shifted = pred.predict([lead + t for t in NER_TEXTS])
    for ents, plain in zip(shifted, pred.predict(NER_TEXTS)):
        assert [(e["entity"], e["start"] - len(lead), e["end"] - len(lead)) for e in ents] == [
            (e["entity"], e["start"], e["end"]) for e in plain
        ]
    assert sum(map(len, reference)) >= 10  # the random model does tag entities (the check is not vacuous)
    assert any(
        e["word"].startswith("##") or " " in e["word"] for ents in reference for e in ents
    )  # word pieces grouped


def test_decode_set_after_load_is_checked_and_survives_pickling(ner_onnx):
    """pred.decode = "bogus" failed only at predict (a ValueError), and pickling went back to viterbi."""
    import pickle

    import fastft
    from fastft.core.errors import FastftError

    pred = fastft.load(ner_onnx, int8=False, threads=1, warm_up=False)
    pred.decode = "argmax"
    again = pickle.loads(pickle.dumps(pred))
    assert again.decode == "argmax" and again.predict(NER_TEXTS) == pred.predict(NER_TEXTS)
    with pytest.raises(FastftError, match="decode must be one of"):
        pred.decode = "bogus"
    assert pred.decode == "argmax"


def test_torch_entities_match_the_pipeline(ner_dir, reference):
    import fastft

    pred = fastft.load(ner_dir, backend="torch", threads=1, decode="argmax")
    assert_same_entities(pred.predict(NER_TEXTS), reference, atol=1e-5)


def test_logits_and_probabilities_per_token(ner_onnx):
    import fastft

    pred = fastft.load(ner_onnx, threads=1)
    logits = pred.logits(NER_TEXTS[:3], batch_size=2)
    probs = pred.predict_proba(NER_TEXTS[:3])
    for t, lg, p in zip(NER_TEXTS, logits, probs):
        n = len(pred.tokenizer(t)["input_ids"])
        assert lg.shape == (n, len(NER_LABELS)) and p.shape == lg.shape
        np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)
    # batching and padding do not change a text's scores
    alone = pred.logits([NER_TEXTS[1]])[0]
    np.testing.assert_allclose(logits[1], alone, atol=1e-5)


def test_threads_get_the_serial_entities(ner_onnx):
    import fastft

    pred = fastft.load(ner_onnx, threads=1)
    texts = [NER_TEXTS[i % len(NER_TEXTS)] * (1 + i % 3) for i in range(18)]
    serial = {k: pred.predict(texts[k : k + 4], batch_size=2) for k in range(6)}
    results, errors = [], []

    def worker(t):
        try:
            for m in range(4):
                k = (t + m) % 6
                results.append((k, pred.predict(texts[k : k + 4], batch_size=2)))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    assert len(results) == 24
    for k, got in results:
        assert got == serial[k]


def test_dir_without_fastft_json_is_token_classification_by_its_config(ner_onnx, tmp_path, reference):
    """An Optimum-style directory (config says BertForTokenClassification, no fastft.json)."""
    import fastft

    d = tmp_path / "optimum"
    shutil.copytree(ner_onnx, d)
    for f in ("fastft.json", "model_int8.onnx", "model.safetensors"):
        (d / f).unlink()
    pred = fastft.load(d, threads=1, decode="argmax")
    assert pred.per_token and pred.labels == list(NER_LABELS)
    assert_same_entities(pred.predict(NER_TEXTS), reference)


def test_transformers_dir_without_fastft_json_exports_as_token_classifier(tmp_path):
    """A token classifier saved by transformers alone (no fastft.json) exports with its token head."""
    import fastft
    from fastft.core.schema import read_meta
    from fastft.export import export

    src = save_tiny_token_model(tmp_path / "hf", meta=False, seed=1)
    out = tmp_path / "onnx"
    export(src, out, progress=False)
    assert read_meta(out)["task"] == "token-classification"
    got = fastft.load(out, threads=1, decode="argmax").predict(NER_TEXTS)
    assert_same_entities(got, pipeline_entities(src, NER_TEXTS))


def test_sequence_model_onnx_refused_as_token_model(tiny_model_dir, tmp_path):
    """A fastft.json that says token classification over a sequence classifier's ONNX: a clear error
    (its labels are no IOB2 tags, found before the graph's output shape)."""
    import fastft
    from fastft.core.errors import ModelError
    from fastft.core.schema import read_meta, write_meta
    from fastft.export import export

    out = tmp_path / "seq"
    export(tiny_model_dir, out, progress=False, validate=False, fused_attention=False)
    meta = read_meta(out)
    meta["task"] = "token-classification"
    write_meta(out, meta)
    with pytest.raises(ModelError, match=r"the tags negative, positive are not IOB2 with an O"):
        fastft.load(out, threads=1)


def test_int8_token_agreement_counts_non_padding_tokens(ner_onnx):
    from fastft.export import validate as fv
    from fastft.models import load_tokenizer

    tok = load_tokenizer(ner_onnx)
    fp32, int8 = fv.session(ner_onnx / "model.onnx"), fv.session(ner_onnx / "model_int8.onnx")
    words = [t.split() for t in NER_TEXTS]
    n_tokens = sum(len(tok(w, is_split_into_words=True)["input_ids"]) for w in words)
    tags = [[0] * len(w) for w in words]
    same = fv.int8_token_agreement(fp32, fp32, tok, words, tags, 128)
    assert same["label_agreement"] == 1.0 and same["tokens"] == n_tokens  # padding is not counted
    assert same["n"] == len(words) and same["accuracy_change"] == 0.0
    q = fv.int8_token_agreement(int8, fp32, tok, words, tags, 128)
    assert 0.0 <= q["label_agreement"] <= 1.0 and q["tokens"] == n_tokens
    # against a session whose label moves on every token of one word piece: exactly those disagree
    piece = tok(words[0], is_split_into_words=True)["input_ids"][1]
    moved = sum(tok(w, is_split_into_words=True)["input_ids"].count(piece) for w in words)

    class Moved:
        def get_inputs(self):
            return fp32.get_inputs()

        def run(self, names, feeds):
            logits = fp32.run(names, feeds)[0].copy()
            at = feeds["input_ids"] == piece
            logits[at] = np.roll(logits[at], 1, axis=-1)
            return [logits]

    plain = fv.token_onnx_logits(fp32, tok, words, 128)[0]
    assert all(len(set(row.tolist())) == row.size for x in plain for row in x)  # no ties: a roll moves the argmax
    q = fv.int8_token_agreement(fp32, Moved(), tok, words, tags, 128)
    assert 0 < moved < n_tokens and q["label_agreement"] == pytest.approx(1 - moved / n_tokens)


def test_export_int8_checks_per_token_agreement_on_conll_data(ner_dir, tmp_path, capsys):
    """``fastft export --int8 --calib-data FILE.conll``: the accuracy-aware INT8 check runs on the
    validation sentences' non-padding tokens (static calibration on the training sentences)."""
    from test_ner import big_conll

    from fastft.cli import main
    from fastft.core.schema import read_meta

    data = big_conll(tmp_path / "ner.conll")
    out = tmp_path / "int8"
    args = ["export", "--model", str(ner_dir), "--output", str(out), "--int8", "--calib-data", str(data)]
    assert main([*args, "--static", "--calib-size", "8", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    agree = info["parity"]["int8"]
    assert agree["unit"] == "token (non-padding)" and agree["tokens"] > agree["n"] > 0
    assert agree["passed"] == (agree["label_agreement"] >= agree["min_agreement"])
    assert "fp32_accuracy" in agree and "int8_accuracy" in agree
    assert info["int8"]["recipe"] and (out / "model_int8.onnx").is_file()
    assert read_meta(out)["onnx"]["parity"]["int8"]["tokens"] == agree["tokens"]


def test_cli_predict_prints_entities_table_and_json(ner_onnx, capsys):
    from fastft.cli import main

    text = "Angela Merkel visited Paris"
    assert main(["predict", "--model", str(ner_onnx), text]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == text and "entity" in lines[1] and "score" in lines[1]
    import fastft

    ents = fastft.load(ner_onnx, threads=1).predict([text])[0]
    assert len(lines) == 2 + len(ents)
    for e, line in zip(ents, lines[2:]):
        cols = line.split()
        assert cols[0] == e["entity"] and cols[2] == f"{e['start']}-{e['end']}"
        assert line.endswith(text[e["start"] : e["end"]])
    assert main(["predict", "--model", str(ner_onnx), "--json", text, "x"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["text"] for r in rows] == [text, "x"] and rows[0]["entities"] == ents
    assert main(["predict", "--model", str(ner_onnx), "--backend", "torch", "--json", text]) == 0
    torch_rows = json.loads(capsys.readouterr().out)
    assert [(e["entity"], e["start"], e["end"]) for e in torch_rows[0]["entities"]] == [
        (e["entity"], e["start"], e["end"]) for e in ents
    ]


def test_bench_runs_every_kind_of_backend_on_a_token_model(ner_dir, tmp_path, capsys):
    """``fastft bench`` on a token classifier: HF eager (AutoModelForTokenClassification), the peer
    pipeline and fastft's ONNX models, per-token logits compared with HF's."""
    from fastft.cli import main

    out = tmp_path / "bench.json"
    args = ["bench", "--model", str(ner_dir), "--seq", "16", "--repeats", "3", "--warmup", "0", "--threads", "1"]
    args += ["--backends", "hf-eager,peer-fp32,fastft-fp32,fastft-int8", "--workdir", str(tmp_path / "w")]
    assert main([*args, "--json", str(out), "--no-memory", "--no-progress"]) == 0
    assert "fastft-int8" in capsys.readouterr().out
    d = json.loads(out.read_text())
    assert d["task"] == "token-classification"
    assert d["backends"]["hf-eager"]["class"] == "BertForTokenClassification"
    rows = {r["backend"]: r for r in d["results"]}
    assert set(rows) == {"hf-eager", "peer-fp32", "fastft-fp32", "fastft-int8"}
    for name in ("peer-fp32", "fastft-fp32"):
        assert rows[name]["max_abs_logit_diff_vs_hf_eager"] < 1e-4 and rows[name]["label_agreement_vs_hf_eager"] == 1.0
    assert rows["fastft-int8"]["p50_ms"] > 0 and "speedup_vs_hf_eager" in rows["fastft-int8"]


def test_long_text_is_truncated_with_a_warning_and_bad_input_is_one_line(ner_onnx, capsys):
    import fastft
    from fastft.cli import main
    from fastft.runtime import InputError, TruncationWarning

    pred = fastft.load(ner_onnx, threads=1)
    text = " ".join(["Angela Merkel visited Paris ."] * 60)  # ~360 tokens > 128
    with pytest.warns(TruncationWarning):
        (ents,) = pred.predict([text])
    cut = pred.tokenizer(text, truncation=True, max_length=128, return_offsets_mapping=True)["offset_mapping"]
    assert ents and max(e["end"] for e in ents) <= max(end for _, end in cut)
    for bad in ("Angela", [""], [1], []):
        with pytest.raises(InputError):
            pred.predict(bad)
    assert main(["predict", "--model", str(ner_onnx), ""]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastft: error:") and len(err.strip().splitlines()) == 1


def test_top_level_predict_gives_entity_rows(ner_dir):
    """``fastft.predict`` on a token-classification directory: {text, entities} rows, the entities
    ``fastft.load(dir, backend="torch")`` gives (it broadcast per-token scores into a table of
    labels and crashed)."""
    import fastft

    rows = fastft.predict(str(ner_dir), NER_TEXTS)
    assert [r["text"] for r in rows] == NER_TEXTS and all(set(r) == {"text", "entities"} for r in rows)
    want = fastft.load(ner_dir, backend="torch", threads=1).predict(NER_TEXTS)
    assert_same_entities([r["entities"] for r in rows], want)


def test_each_call_that_truncates_warns_and_says_which(ner_onnx):
    """Entities past the cut are lost: every call that cuts warns (as Python's filters allow),
    not only a predictor's first, and ``truncated`` says which texts were cut."""
    import warnings

    import fastft
    from fastft.runtime import TruncationWarning

    pred = fastft.load(ner_onnx, threads=1)
    long = "filler words here . " * 100 + "Angela Merkel visited Paris ."
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            pred.predict([long])
    assert sum(issubclass(w.category, TruncationWarning) for w in caught) == 2
    assert pred.truncated(["Angela Merkel visited Paris .", long]) == [False, True]


def test_entities_are_the_same_a_chunk_at_a_time(ner_onnx, monkeypatch):
    import fastft
    import fastft.runtime.base as base

    pred = fastft.load(ner_onnx, threads=1)
    whole = pred.predict(NER_TEXTS)
    monkeypatch.setattr(base, "ENCODE_CHUNK", 2)
    assert_same_entities(pred.predict(NER_TEXTS), whole, atol=1e-6)
    assert [len(x) for x in pred.logits(NER_TEXTS)] == [len(x) for x in pred.logits(NER_TEXTS[:1])] + [
        len(x) for x in pred.logits(NER_TEXTS[1:])
    ]
