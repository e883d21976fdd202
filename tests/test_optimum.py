"""Optimum round trip, both ways (slow; needs the ``optimum`` extra: optimum + optimum-onnx).

* a fastft-trained model directory exports with ``optimum-cli export onnx``; fastft.load
  serves that directory and predicts the labels the torch model predicts;
* a ``fastft export`` directory (model.onnx and model_int8.onnx) loads in
  ``optimum.onnxruntime.ORTModelForSequenceClassification``, logits within 1e-4 of fastft's.

Run with ``pytest -m slow tests/test_optimum.py`` (bench/compat.py runs it in its
transformers 4.57 + optimum-onnx environment).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

TEXTS = [
    "a wonderful, moving film",
    "boring and far too long",
    "i loved every minute of it",
    "weak script and bad acting, a tedious waste of time",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir, tiny_data_file):
    """A fastft-trained directory: the tiny BERT fine-tuned for a few steps on the tiny data."""
    import fastft

    out = tmp_path_factory.mktemp("optimum") / "trained"
    fastft.train(
        model=str(tiny_model_dir),
        data=str(tiny_data_file),
        output=str(out),
        epochs=1,
        max_length=32,
        batch_size=8,
        progress=False,
    )
    return out


def _optimum_cli() -> list[str]:
    pytest.importorskip("optimum.exporters.onnx", reason="needs optimum-onnx (pip install '.[optimum]')")
    cli = Path(sys.executable).with_name("optimum-cli")
    return [str(cli)] if cli.exists() else [sys.executable, "-m", "optimum.commands.optimum_cli"]


def test_optimum_cli_export_serves_in_fastft(trained, tmp_path):
    import fastft

    out = tmp_path / "optimum-onnx"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    res = subprocess.run(
        [*_optimum_cli(), "export", "onnx", "--model", str(trained), "--task", "text-classification", str(out)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert (out / "model.onnx").is_file()
    served = fastft.load(out)  # Optimum's layout: model.onnx + config.json (id2label) + tokenizer, no fastft.json
    assert served.labels == ["negative", "positive"]
    ref = fastft.load(trained, backend="torch")
    assert [lab for lab, _ in served.predict(TEXTS)] == [lab for lab, _ in ref.predict(TEXTS)]
    np.testing.assert_allclose(served.logits(TEXTS), ref.logits(TEXTS), atol=1e-4, rtol=0)


@pytest.mark.parametrize("int8", [False, True], ids=["fp32", "int8"])
def test_fastft_export_loads_in_optimum(trained, tmp_path_factory, int8):
    pytest.importorskip("optimum.onnxruntime", reason="needs optimum-onnx (pip install '.[optimum]')")
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoTokenizer

    import fastft

    out = tmp_path_factory.getbasetemp() / "optimum-fastft-export"
    if not (out / "model_int8.onnx").is_file():
        fastft.export(trained, out, int8=True, progress=False)
    name = "model_int8.onnx" if int8 else "model.onnx"
    ort_model = ORTModelForSequenceClassification.from_pretrained(out, file_name=name)
    tokenizer = AutoTokenizer.from_pretrained(out)
    ours = fastft.load(out, int8=int8)
    assert ours.onnx_file.name == name
    for text in TEXTS:  # one text at a time: no padding differences between the two batchings
        enc = tokenizer([text], return_tensors="np", truncation=True, max_length=ours.max_length)
        theirs = ort_model(**enc).logits
        np.testing.assert_allclose(np.asarray(theirs), ours.logits([text]), atol=1e-4, rtol=0)
    assert ort_model.config.id2label[int(np.argmax(theirs))] == ours.predict([TEXTS[-1]])[0][0]


@pytest.mark.parametrize("int8", [False, True], ids=["fp32", "int8"])
def test_fastft_token_export_loads_in_optimum(tmp_path_factory, int8):
    """A token-classification ``fastft export`` directory loads in ORTModelForTokenClassification;
    its per-token logits match fastft's within 1e-4."""
    pytest.importorskip("optimum.onnxruntime", reason="needs optimum-onnx (pip install '.[optimum]')")
    from optimum.onnxruntime import ORTModelForTokenClassification
    from tiny_ner import NER_TEXTS, save_tiny_token_model
    from transformers import AutoTokenizer

    import fastft

    base = tmp_path_factory.getbasetemp()
    out = base / "optimum-fastft-token-export"
    if not (out / "model_int8.onnx").is_file():
        src = save_tiny_token_model(base / "optimum-token-model")
        fastft.export(src, out, int8=True, validate=False, progress=False)
        fastft.export(src, base / "optimum-token-parity", progress=False)  # fp32 parity at 6 shapes
    name = "model_int8.onnx" if int8 else "model.onnx"
    ort_model = ORTModelForTokenClassification.from_pretrained(out, file_name=name)
    tokenizer = AutoTokenizer.from_pretrained(out)
    ours = fastft.load(out, int8=int8)
    assert ours.per_token and ours.onnx_file.name == name
    for text in NER_TEXTS:
        enc = tokenizer([text], return_tensors="np", truncation=True, max_length=ours.max_length)
        theirs = np.asarray(ort_model(**enc).logits)[0]
        mine = ours.logits([text])[0]
        assert theirs.shape == mine.shape
        np.testing.assert_allclose(theirs, mine, atol=1e-4, rtol=0)
    labels = [ort_model.config.id2label[int(i)] for i in theirs.argmax(-1)]
    assert labels == [ours.labels[int(i)] for i in mine.argmax(-1)]
