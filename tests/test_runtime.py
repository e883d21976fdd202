"""fastft.load / Predictor on a tiny random BERT: parity with PyTorch, batching, threads, errors."""

from __future__ import annotations

import shutil
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest

TEXTS = [
    "a fine film",
    "a dull, boring mess of a movie that goes on and on and on",
    "ok",
    "brilliant acting and a great story, i loved every minute of it",
    "meh",
    "funny, warm and smart",
    "clumsy, loud and stupid",
    "superb",
]


def _export(src: Path, out: Path) -> Path:
    """The tiny model exported with fastft export (model.onnx + model_int8.onnx)."""
    from fastft.export import export

    export(src, out, int8=True, overwrite=True, progress=False, validate=False)  # parity is checked here
    return out


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models: one thread is fastest and immune to OpenMP stalls on a busy machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def onnx_dir(tiny_model_dir, tmp_path_factory) -> Path:
    return _export(tiny_model_dir, tmp_path_factory.mktemp("rt") / "tiny-onnx")


@pytest.fixture(scope="module")
def torch_ref(tiny_model_dir):
    """Per-text (unpadded) PyTorch logits: the reference every backend must match."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    net = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)

    def ref(texts):
        with torch.inference_mode():
            return np.concatenate(
                [net(**tok([t], truncation=True, max_length=128, return_tensors="pt")).logits.numpy() for t in texts]
            )

    return ref


@pytest.fixture(scope="module")
def pred(onnx_dir):
    import fastft

    return fastft.load(onnx_dir, threads=1)


def assert_close(actual, expected, atol, what=""):
    diff = np.abs(np.asarray(actual) - np.asarray(expected))
    if diff.max() > atol:
        i = np.unravel_index(diff.argmax(), diff.shape)
        raise AssertionError(f"{what}: max |diff| {diff.max():.3g} > {atol} at {i}: {actual[i]} vs {expected[i]}")


def test_logits_proba_predict_match_torch(pred, torch_ref):
    ref = torch_ref(TEXTS)
    logits = pred.logits(TEXTS)
    assert logits.shape == (len(TEXTS), 2) and logits.dtype == np.float32
    assert_close(logits, ref, 1e-4, "ORT vs torch logits")
    proba = pred.predict_proba(TEXTS)
    assert_close(proba.sum(axis=1), np.ones(len(TEXTS)), 1e-6, "rows sum to 1")
    out = pred.predict(TEXTS)
    assert [label for label, _ in out] == [pred.labels[j] for j in ref.argmax(axis=1)]
    assert all(abs(s - p.max()) < 1e-6 for (_, s), p in zip(out, proba))
    assert pred.labels == ["negative", "positive"]
    assert pred.level == "basic"  # fastft.json says the fusions are baked in: no expensive pass at load


def test_batching_keeps_input_order(pred, torch_ref):
    texts = [TEXTS[i % len(TEXTS)] * (1 + i % 3) for i in range(13)]  # mixed lengths, odd count
    ref = torch_ref(texts)
    for bs in (1, 3, 64):
        assert_close(pred.logits(texts, batch_size=bs), ref, 1e-4, f"batch_size={bs}")


def test_torch_backend_matches(tiny_model_dir, torch_ref):
    import fastft

    tp = fastft.load(tiny_model_dir, backend="torch")
    assert_close(tp.logits(TEXTS, batch_size=3), torch_ref(TEXTS), 1e-4, "torch backend")
    assert tp.info()["attention"]


@pytest.mark.attention_interface
def test_torch_backend_fused_attention(tiny_model_dir, torch_ref):
    import fastft

    tp = fastft.load(tiny_model_dir, backend="torch", fused_attention=True)
    assert tp.info()["attention"] == "fastft-fused"
    assert_close(tp.logits(TEXTS, batch_size=3), torch_ref(TEXTS), 1e-4, "torch backend, fused attention")


def test_int8_file_and_close(onnx_dir, pred, torch_ref):
    import fastft

    q = fastft.load(onnx_dir, int8=True, threads=1)
    assert q.onnx_file.name == "model_int8.onnx" and pred.onnx_file.name == "model.onnx"
    assert q.logits(TEXTS).shape == (len(TEXTS), 2)
    assert_close(q.logits(TEXTS), torch_ref(TEXTS), 0.1, "int8 vs torch")


def test_threads_give_serial_answers(pred):
    texts = [TEXTS[i % len(TEXTS)] * (1 + i % 4) for i in range(24)]
    serial = [pred.logits(texts[k : k + 5 + k % 3], batch_size=2) for k in range(8)]
    results, errors = {}, []

    def worker(t):
        try:
            for m in range(4):
                k = (t + m) % 8
                results[(t, m)] = (k, pred.logits(texts[k : k + 5 + k % 3], batch_size=2))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    assert len(results) == 32
    for k, got in results.values():
        np.testing.assert_array_equal(got, serial[k])


def test_optimum_style_dir_without_fastft_json(onnx_dir, tmp_path, torch_ref):
    import fastft

    d = tmp_path / "optimum"
    shutil.copytree(onnx_dir, d)
    for f in ("fastft.json", "model_int8.onnx", "model.safetensors"):
        (d / f).unlink(missing_ok=True)
    p = fastft.load(d, threads=1)
    assert p.labels == ["negative", "positive"]  # from config.json id2label
    assert p.max_length == 128
    assert p.level == "all"  # nothing recorded: ORT's full optimisation at load
    assert_close(p.logits(TEXTS), torch_ref(TEXTS), 1e-4, "optimum-style dir")


@pytest.mark.parametrize(
    "texts, match",
    [
        ([], "empty"),
        ("a single string", "not a single string"),
        (["fine", 3], "#1 is not a string"),
        (["fine", ""], "#1 is empty"),
        (["fine", "   "], "#1 is empty"),
        (None, "must be a list"),
        (["fine", "\u200b\u200c"], "#1 has no tokens"),  # zero-width characters only
        (["\x00\x01", "fine"], "#0 has no tokens"),  # control characters only
        (["fine", "\u0301"], "#1 has no tokens"),  # a lone combining accent
    ],
)
def test_bad_texts(pred, texts, match):
    from fastft.runtime import InputError

    with pytest.raises(InputError, match=match):
        pred.predict(texts)


def test_long_text_truncated_with_a_warning_each_call_python_filters_decide(onnx_dir, pred):
    import fastft
    from fastft.runtime import InputError, TruncationWarning

    long = "word " * 5000
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        p = fastft.load(onnx_dir, threads=1)
        a = p.logits([long, "short"])
        b = p.logits([long])
        p.logits(["short"])
    hits = [w for w in caught if issubclass(w.category, TruncationWarning)]
    assert len(hits) == 2 and all("truncated" in str(w.message) for w in hits)  # every call that cuts
    assert hits[0].filename == __file__  # points at the caller, not the library
    np.testing.assert_allclose(a[:1], b, atol=1e-5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # Python's default: once per calling line
        for _ in range(3):
            p.logits([long])
    assert sum(issubclass(w.category, TruncationWarning) for w in caught) == 1
    assert p.truncated(["short", long]) == [False, True]
    strict = fastft.load(onnx_dir, threads=1, truncation=False)
    with pytest.raises(InputError, match="longer than the model's max length of 128"):
        strict.predict(["short", long])


def test_missing_and_corrupt_onnx(tiny_model_dir, tmp_path):
    import fastft
    from fastft.core.errors import ModelError

    with pytest.raises(ModelError, match="no model.onnx"):
        fastft.load(tiny_model_dir)
    with pytest.raises(ModelError, match="does not exist"):
        fastft.load(tmp_path / "nowhere")
    d = tmp_path / "corrupt"
    shutil.copytree(tiny_model_dir, d)
    (d / "model.onnx").write_bytes(b"this is not a protobuf" * 10)
    with pytest.raises(ModelError, match="not a loadable ONNX model"):
        fastft.load(d)
    with pytest.raises(ModelError, match="no model_int8.onnx"):
        fastft.load(tiny_model_dir, int8=True)


def test_bad_options(onnx_dir):
    import fastft
    from fastft.core.errors import FastftError

    with pytest.raises(FastftError, match="backend must be"):
        fastft.load(onnx_dir, backend="tensorflow")
    with pytest.raises(FastftError, match="device must be"):
        fastft.load(onnx_dir, device="tpu")
    with pytest.raises(FastftError, match="threads must be"):
        fastft.load(onnx_dir, threads=0)


def test_an_option_of_the_other_backend_is_refused_not_ignored(onnx_dir):
    """load() ignored fused_attention on ONNX Runtime, and the ONNX Runtime options on torch."""
    import fastft
    from fastft.core.errors import FastftError

    with pytest.raises(FastftError, match=r"fused_attention .*backend='torch'"):
        fastft.load(onnx_dir, fused_attention=True)
    # None is "where available": ONNX Runtime has no such swap, so it is not given
    assert fastft.load(onnx_dir, fused_attention=None, warm_up=False).backend == "onnxruntime"
    ort_only = (("spinning", True), ("optimization_level", "all"), ("ort_attention", "fastft"), ("batch_int8", True))
    for name, value in ort_only:
        with pytest.raises(FastftError, match=rf"{name} .*backend='onnxruntime'"):
            fastft.load(onnx_dir, backend="torch", **{name: value})
    # the defaults of the other backend's options are still fine
    assert fastft.load(onnx_dir, backend="torch", fused_attention=None, warm_up=False).backend == "torch"
    assert fastft.load(onnx_dir, threads=1, ort_attention="auto", warm_up=False).backend == "onnxruntime"


def test_cuda_without_gpu_is_a_clear_error(onnx_dir, tiny_model_dir):
    import onnxruntime as ort
    import torch

    import fastft
    from fastft.runtime import DeviceError

    if "CUDAExecutionProvider" in ort.get_available_providers() or torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(DeviceError, match="GPU"):
        fastft.load(onnx_dir, device="cuda")
    with pytest.raises(DeviceError, match="CUDA GPU"):
        fastft.load(tiny_model_dir, backend="torch", device="cuda")


def test_cli_predict_uses_runtime(onnx_dir, capsys, torch_ref):
    import json

    from fastft.cli import main

    assert main(["predict", "--model", str(onnx_dir), "--json", "a fine film", "ok"]) == 0
    rows = json.loads(capsys.readouterr().out)
    ref = torch_ref(["a fine film", "ok"])
    assert [r["label"] for r in rows] == [["negative", "positive"][j] for j in ref.argmax(axis=1)]


def test_dynamic_int8_runs_each_text_alone_unless_batch_int8(onnx_dir):
    """model_int8.onnx quantises activations with scales from the whole call: in one call of several
    texts each text's scores would move with the others'. So each text runs alone there, and the
    same text gets the same scores in any company; batch_int8=True merges (and they move)."""
    import fastft

    q = fastft.load(onnx_dir, int8=True, threads=1)
    assert q.batch_dependent and q.isolated and q.info()["batching"].startswith("one text per call")
    texts = TEXTS + [t + " " + u for t, u in zip(TEXTS, reversed(TEXTS))]
    alone = np.stack([q.logits([t])[0] for t in texts])
    assert np.array_equal(q.logits(texts), alone)
    assert np.array_equal(q.logits(texts[::-1], batch_size=64)[::-1], alone)
    merged = fastft.load(onnx_dir, int8=True, threads=1, batch_int8=True)
    assert merged.batch_dependent and not merged.isolated
    assert not np.array_equal(merged.logits(texts, batch_size=len(texts)), alone)  # the scales span the call
    assert not fastft.load(onnx_dir, int8=False, threads=1).batch_dependent  # fp32: nothing to isolate
    from fastft.compress.quantize import scoring_batch

    # compress scores each graph as it is served: the INT8 one a text per call
    assert scoring_batch(onnx_dir / "model_int8.onnx") == 1 and scoring_batch(onnx_dir / "model.onnx") == 64
    with pytest.raises(fastft.FastftError, match="batch_int8 must be True or False"):
        fastft.load(onnx_dir, batch_int8="yes")


def test_a_huge_text_costs_what_the_model_sees_of_it(pred):
    """Texts are cut to CHARS_PER_TOKEN characters per token of max length before tokenizing (a 4 MB
    text would otherwise take seconds and gigabytes to tokenize for 64 tokens): what the model
    sees is unchanged, and a cut text reads as truncated."""
    from fastft.runtime.encode import CHARS_PER_TOKEN

    enc = pred.encoder
    budget = CHARS_PER_TOKEN * enc.max_length
    words = " ".join(TEXTS * 4000)
    assert len(words) > 4 * budget
    cut, was_cut, _ = enc.cut([words, "short"])
    assert was_cut == [True, False] and len(cut[0].replace(" ", "")) <= budget and cut[0] == words[: len(cut[0])]
    assert words[len(cut[0])] == " "  # cut at a space, not inside a word
    full = enc._rust().encode_batch([words])[0]  # the whole text, tokenized as before
    got = enc.encode([words, "a,b," * 2_000_000])
    assert got.ids[0] == full.ids and got.truncated == [True, True]
    assert len(got.ids[1]) == enc.max_length
    # what makes no token does not count: words behind 10,000 spaces, newlines or zero-width spaces stay
    for blank in (" ", "\n", "\u200b"):
        padded = blank * 10_000 + "clumsy, loud and stupid"
        assert enc.cut([padded])[1] == [False]
        assert enc.encode([padded]).ids == enc.encode(["clumsy, loud and stupid"]).ids


def test_a_cut_text_is_never_called_tokenless(onnx_dir):
    """With the least max length (3) a text is cut to its first token: labelled (and flagged as
    truncated), not refused as a text without tokens; 10,000 spaces before the words keep them."""
    import fastft

    p = fastft.load(onnx_dir, threads=1, max_length=3)
    with pytest.warns(fastft.runtime.TruncationWarning):
        assert len(p.predict(["hello world"])) == 1
    short = fastft.load(onnx_dir, threads=1, max_length=16)
    assert short.encoder.encode([" " * 10_000 + "hello world"]).ids == short.encoder.encode(["hello world"]).ids


def test_a_flood_of_characters_that_make_no_token_is_cut_too(pred):
    """Characters the budget does not count (zero-width...) are still capped, at
    RAW_BUDGET_FACTOR times the budget: 10 million of them cost milliseconds, not gigabytes."""
    from fastft.runtime import InputError
    from fastft.runtime.encode import CHARS_PER_TOKEN, RAW_BUDGET_FACTOR, RAW_BUDGET_MIN

    enc = pred.encoder
    cap = max(RAW_BUDGET_FACTOR * CHARS_PER_TOKEN * enc.max_length, RAW_BUDGET_MIN)
    flood = "fine " + "\u200b" * 10_000_000
    cut, was_cut, starts = enc.cut([flood])
    assert len(cut[0]) == cap and starts == [0]
    assert was_cut == [False] and pred.truncated([flood, "fine", flood + "bad"]) == [False, False, True]  # a word lost
    # words behind more than the raw budget of such characters: the kept part starts at them (it once
    # held only the flood, and the text was labelled from nothing: 0.629 "negative", whatever it said)
    for lead in (" " * 70_000, "\u200b" * 10_000_000):
        assert pred.predict([lead + "fine"]) == pred.predict(["fine"]) and pred.truncated([lead + "fine"]) == [False]
    with pytest.raises(InputError, match="has no tokens"):  # nothing but such characters: no text to label
        pred.predict(["\u200b" * 100_000])


def test_foreign_onnx_inputs_and_vocabularies_are_refused_at_load(onnx_dir, tmp_path):
    """An ONNX file from another exporter with an input fastft does not feed, or fixed input
    dimensions, and a tokenizer bigger than the model's vocabulary: a ModelError at load,
    not an ONNX Runtime error on the first (or some later) text."""
    import json
    import shutil

    import onnx

    import fastft
    from fastft.core.errors import ModelError

    def copy(name: str) -> Path:
        d = tmp_path / name
        shutil.copytree(onnx_dir, d)
        return d

    renamed = copy("renamed")
    m = onnx.load(str(renamed / "model.onnx"))
    old = m.graph.input[1].name
    m.graph.input[1].name = "mask"
    for node in m.graph.node:
        node.input[:] = ["mask" if x == old else x for x in node.input]
    onnx.save(m, str(renamed / "model.onnx"))
    with pytest.raises(ModelError, match="input\\(s\\) 'mask' that fastft does not feed"):
        fastft.load(renamed, threads=1)

    static = copy("static")
    m = onnx.load(str(static / "model.onnx"))
    for inp in m.graph.input:
        for d, v in zip(inp.type.tensor_type.shape.dim, (1, 64)):
            d.ClearField("dim_param")
            d.dim_value = v
    onnx.save(m, str(static / "model.onnx"))
    with pytest.raises(ModelError, match="fixed shape \\[1, 64\\].*dynamic axes"):
        fastft.load(static, threads=1)

    small = copy("small-vocab")
    cfg = json.loads((small / "config.json").read_text())
    cfg["vocab_size"] = 1000
    (small / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="more than the model's vocabulary of 1000"):
        fastft.load(small, threads=1)


def test_a_predictor_pickles_as_how_it_was_loaded(onnx_dir, pred):
    """Pickling (a process pool's workers) or deep-copying loads the model again with the same
    options; a shallow copy shares it."""
    import copy
    import pickle

    import fastft

    p = fastft.load(onnx_dir, threads=1, batch_size=4, max_length=32)
    again = pickle.loads(pickle.dumps(p))
    assert again is not p and again.session is not p.session
    assert (again.batch_size, again.max_length, again.path) == (4, 32, p.path)
    np.testing.assert_allclose(again.logits(TEXTS), p.logits(TEXTS), atol=1e-6)
    assert copy.deepcopy(p).session is not p.session
    assert copy.copy(p).session is p.session


def test_a_predictor_pickles_with_the_settings_changed_after_load(onnx_dir):
    """Pickling reloaded with load()'s options: batch_size / truncation set on the Predictor afterwards were lost."""
    import pickle

    import fastft

    p = fastft.load(onnx_dir, threads=1, batch_size=4, warm_up=False)
    p.batch_size, p.truncation = 3, False
    again = pickle.loads(pickle.dumps(p))
    assert (again.batch_size, again.truncation) == (3, False)
    q = fastft.load(onnx_dir, int8=True, threads=1, warm_up=False)
    q.batch_int8 = True  # merging a dynamic INT8 graph's texts, asked for after load, was lost
    again = pickle.loads(pickle.dumps(q))
    assert again.batch_int8 and not again.isolated
    with pytest.raises(fastft.FastftError, match="batch_int8 must be True or False"):
        q.batch_int8 = "no"
    t = fastft.load(onnx_dir, backend="torch", threads=1)
    with pytest.raises(fastft.FastftError, match="batch_int8 is for backend='onnxruntime'"):
        t.batch_int8 = True  # torch would ignore it, and its pickle would not load
    assert not pickle.loads(pickle.dumps(t)).batch_int8


def test_first_loads_on_many_threads_at_once_all_succeed(onnx_dir):
    """transformers builds its names lazily; loads racing to be a process's first used to fail
    with "cannot import name 'AutoTokenizer'" in most threads. Run in a fresh interpreter."""
    import subprocess
    import sys

    code = f"""
import threading, fastft
errors = []
def work():
    try:
        fastft.load({str(onnx_dir)!r}, threads=1, warm_up=False)
    except Exception as exc:
        errors.append(repr(exc))
threads = [threading.Thread(target=work) for _ in range(4)]
[t.start() for t in threads]
[t.join() for t in threads]
print(errors)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr[-2000:]


def test_a_torch_load_draws_no_bar_and_leaves_transformers_settings_alone(tiny_model_dir, capfd):
    """transformers draws a "Loading weights" bar on every model load; fastft.load is quiet, and
    transformers' verbosity and bars are as the caller set them afterwards (they once stayed at
    "errors only" for the rest of the process)."""
    from transformers.utils import logging as hf_logging

    import fastft

    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_info()
    hf_logging.enable_progress_bar()
    try:
        capfd.readouterr()
        fastft.load(tiny_model_dir, backend="torch", warm_up=False)
        assert "Loading weights" not in capfd.readouterr().err
        assert hf_logging.get_verbosity() == hf_logging.INFO and hf_logging.is_progress_bar_enabled()
    finally:
        hf_logging.set_verbosity(before)


def test_a_torch_predictor_runs_in_a_forked_child(tiny_model_dir):
    """OpenMP's threads do not survive fork(): torch's first parallel call in the child waited
    for them for ever. A torch Predictor's child runs torch on one thread. Fresh interpreter."""
    import subprocess
    import sys

    code = f"""
import os, sys, time, torch, fastft
p = fastft.load({str(tiny_model_dir)!r}, backend="torch", threads=2)
a = torch.randn(400, 400)
_ = a @ a  # the parent's OpenMP pool is up
want = p.predict(["a fine film"])
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q = fastft.load({str(tiny_model_dir)!r}, backend="torch", threads=2)  # kept to one thread: a warning
    said = any("fork()ed child" in str(x.message) for x in caught)
    os.write(w, repr((p.predict(["a fine film"]), q.predict(["a fine film"]), torch.get_num_threads(), said)).encode())
    os._exit(0)
deadline = time.monotonic() + 60
while os.waitpid(pid, os.WNOHANG) == (0, 0):
    if time.monotonic() > deadline:
        os.kill(pid, 9)
        sys.exit("the child hung")
    time.sleep(0.05)
print(os.read(r, 1000).decode() == repr((want, want, 1, True)))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "True", out.stdout + out.stderr[-2000:]


def test_many_texts_are_tokenized_a_chunk_at_a_time(pred, monkeypatch):
    """A call of many texts is tokenized ENCODE_CHUNK texts at a time (100,000 NER texts held
    1.1 GB of tokens before the first ran): the same answers, every text checked before any runs,
    errors naming the index in the whole list, one truncation warning for the call."""
    import fastft.runtime.base as base
    from fastft.runtime import InputError, TruncationWarning

    texts = [TEXTS[i % len(TEXTS)] for i in range(11)]
    whole = pred.logits(texts)
    monkeypatch.setattr(base, "ENCODE_CHUNK", 3)
    np.testing.assert_allclose(pred.logits(texts), whole, atol=1e-6)
    assert pred.predict(texts) == [pred.predict([t])[0] for t in texts]
    calls = []
    run = pred.logits_from_ids
    monkeypatch.setattr(pred, "logits_from_ids", lambda **f: calls.append(1) or run(**f))
    with pytest.raises(InputError, match="text #9 has no tokens"):
        pred.predict([*texts[:9], "\u200b", "fine"])
    assert calls == []  # refused before any text ran
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pred.predict(["word " * 5000, *texts[:5], "word " * 5000])
    assert sum(issubclass(w.category, TruncationWarning) for w in caught) == 1


def test_a_model_onnx_that_is_a_directory_is_named(onnx_dir, tmp_path):
    """It was "has no model.onnx (ONNX files: model.onnx, ...)": the glob listed directories."""
    import shutil

    import fastft
    from fastft.core.errors import ModelError

    d = tmp_path / "m"
    shutil.copytree(onnx_dir, d)
    (d / "model.onnx").unlink()
    (d / "model.onnx").mkdir()
    with pytest.raises(ModelError, match=r"model\.onnx is not a file"):
        fastft.load(d, int8=False, threads=1)


def test_a_model_giving_nan_scores_is_an_error_not_label_0(tiny_model_dir, tmp_path):
    """A NaN row's argmax is label 0: a broken model answered "negative" (a tagger "no entities")
    with exit 0; now every text path says the scores are not finite."""
    import torch
    from safetensors.torch import load_file, save_file
    from tiny_ner import save_tiny_token_model

    import fastft
    from fastft.core.errors import ModelError

    text_dir = tmp_path / "text"
    shutil.copytree(tiny_model_dir, text_dir)
    token_dir = save_tiny_token_model(tmp_path / "token")
    for d in (text_dir, Path(token_dir)):
        sd = load_file(d / "model.safetensors")
        sd["classifier.bias"] = torch.full_like(sd["classifier.bias"], float("nan"))
        save_file(sd, d / "model.safetensors", metadata={"format": "pt"})
        pred = fastft.load(d, backend="torch")
        for call in (pred.predict, pred.logits, pred.predict_proba):
            with pytest.raises(ModelError, match="scores are not finite"):
                call(["Angela Merkel visited Paris"])


def test_each_input_is_fed_in_its_own_integer_type(onnx_dir, tmp_path, torch_ref):
    """A graph fastft did not write may take int64 ids beside an int32 mask: every input was fed
    in input_ids' type (ONNX Runtime's INVALID_ARGUMENT traceback at load, exit 1); a float input
    is one line."""
    import onnx
    from onnx import TensorProto, helper

    import fastft
    from fastft.core.errors import ModelError

    src = onnx.load(str(onnx_dir / "model.onnx"))
    for elem, name in ((TensorProto.INT32, "int32-mask"), (TensorProto.FLOAT, "float-mask")):
        m = onnx.ModelProto()
        m.CopyFrom(src)
        next(i for i in m.graph.input if i.name == "attention_mask").type.tensor_type.elem_type = elem
        for node in m.graph.node:
            node.input[:] = ["attention_mask_i64" if x == "attention_mask" else x for x in node.input]
        m.graph.node.insert(
            0, helper.make_node("Cast", ["attention_mask"], ["attention_mask_i64"], to=TensorProto.INT64)
        )
        d = tmp_path / name
        shutil.copytree(onnx_dir, d)
        (d / "model_int8.onnx").unlink()
        onnx.save(m, str(d / "model.onnx"))
        if elem == TensorProto.FLOAT:
            with pytest.raises(ModelError, match="input 'attention_mask' is a tensor\\(float\\); fastft feeds"):
                fastft.load(d, int8=False, ort_attention="onnxruntime")
            continue
        got = fastft.load(d, int8=False, ort_attention="onnxruntime").logits(TEXTS)
        assert_close(got, torch_ref(TEXTS), 1e-4, name)


def test_a_long_call_names_the_cut_text_by_its_index_in_the_whole_call(onnx_dir, monkeypatch):
    """truncation=False in a call tokenized chunk by chunk: the error names the cut text's index
    in the texts passed, not its place in its chunk."""
    import fastft
    import fastft.runtime.base as base
    from fastft.runtime import InputError

    monkeypatch.setattr(base, "ENCODE_CHUNK", 2)
    strict = fastft.load(onnx_dir, threads=1, truncation=False)
    with pytest.raises(InputError, match=r"^text #3 is longer than the model's max length of 128"):
        strict.predict(["short", "superb", "fine", "word " * 500])


def test_the_logits_output_is_read_when_another_output_comes_first(onnx_dir, pred, tmp_path):
    """An ONNX graph with several outputs: the one named ``logits`` is read, wherever it stands."""
    import onnx
    from onnx import helper

    import fastft

    d = tmp_path / "two-outputs"
    shutil.copytree(onnx_dir, d)
    m = onnx.load(str(d / "model.onnx"))
    logits = next(o for o in m.graph.output if o.name == "logits")
    m.graph.node.append(helper.make_node("Neg", ["logits"], ["negated"]))
    extra = onnx.ValueInfoProto()
    extra.CopyFrom(logits)
    extra.name = "negated"
    m.graph.output.insert(0, extra)
    onnx.save(m, str(d / "model.onnx"))
    two = fastft.load(d, threads=1)
    assert [o.name for o in two.session.get_outputs()] == ["negated", "logits"]
    np.testing.assert_allclose(two.logits(TEXTS), pred.logits(TEXTS), atol=1e-6)


def test_threads_asked_for_are_the_sessions_and_a_recorded_level_number_maps_to_its_name():
    """``threads=N`` sets the session's intra-op threads (none: the physical cores); an ORT level
    recorded as a number names its level, 99 (ORT_ENABLE_ALL) and above 3 meaning "all"."""
    from fastft.runtime.session import physical_cores, runtime_level, session_options

    assert session_options(threads=1).intra_op_num_threads == 1
    assert session_options(threads=3).intra_op_num_threads == 3
    assert session_options().intra_op_num_threads == physical_cores()
    level = lambda v: runtime_level({"onnx": {"runtime_graph_optimization_level": v}}, "model.onnx")  # noqa: E731
    assert [level(v) for v in (0, 1, 2, 3, 99)] == ["disable", "basic", "extended", "all", "all"]


def test_encoder_truncation_flags_offsets_and_padded_batches_are_exact():
    """Encoder: a text cut at the character budget is truncated though its tokens fit, a cut leaving
    out only spaces is not; offsets past a skipped run are moved, a special token's (0, 0) is not;
    a batch pads with the pad id and masks only each text's own tokens."""
    from fastft.models import load_tokenizer
    from fastft.runtime.encode import Encoder

    tok = load_tokenizer("minilm-l6")
    enc = Encoder(tok, 3).encode(["b" * 200, "b" * 192 + " " * 100])  # budget: 64 * 3 = 192 characters
    assert enc.ids[0] == enc.ids[1] and len(enc.ids[0]) == 3  # [CLS] [UNK] [SEP]: fits max_length
    assert enc.truncated == [True, False]
    enc = Encoder(tok, 8, offsets=True).encode([" " * 70_000 + "Paris", "ok"])
    assert enc.offsets == [[(0, 0), (70_000, 70_005), (0, 0)], [(0, 0), (0, 2), (0, 0)]]
    encoder = Encoder(tok, 16)
    enc = encoder.encode(["a fine film", "ok"])
    feeds = encoder.batch(enc, [1, 0])
    assert feeds["input_ids"].tolist() == [enc.ids[1] + [encoder.pad_id] * 2, enc.ids[0]]
    assert feeds["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1] * 5]
