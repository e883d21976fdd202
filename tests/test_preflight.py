"""Cheap checks before long work: the export probe on a one-layer copy, and fastft compress
refusing bad input (data, output path, ONNX Runtime, export) before any training starts."""

from __future__ import annotations

import pytest
from conftest import save_tiny_model, write_jsonl

from fastft.compress import CompressConfig
from fastft.core.errors import FastftError

FAST = dict(epochs=1, batch_size=16, bench_runs=2, progress=False, recovery_epochs=1, prune_batches=2, limit=40)


def _tiny_config(model_type: str = "bert"):
    import transformers as tf

    if model_type == "distilbert":
        return tf.DistilBertConfig(dim=32, n_layers=3, n_heads=4, hidden_dim=64, vocab_size=120)
    return tf.BertConfig(
        hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64, vocab_size=120
    )


@pytest.mark.parametrize("model_type", ["bert", "distilbert"])
def test_export_preflight_runs_a_one_layer_copy(model_type):
    from fastft.export.preflight import export_preflight, one_layer_copy
    from fastft.swap import check_dispatch

    config = _tiny_config(model_type)
    assert one_layer_copy(config).config.num_hidden_layers == 1
    info = export_preflight(config)
    assert "CPUExecutionProvider" in info["providers"]
    can_swap, why = check_dispatch(one_layer_copy(config))
    # fused attention where this transformers dispatches attention through its interface, else the
    # plain graph with the reason
    assert info["fused_attention"] is can_swap
    assert (info["fallback"] is None) is can_swap and (can_swap or why in info["fallback"])


def test_export_preflight_names_a_broken_exporter(monkeypatch):
    import fastft.export.onnx as fx
    from fastft.export.preflight import export_preflight

    def broken(*a, **k):
        raise FastftError("ONNX export failed (RuntimeError: boom)")

    monkeypatch.setattr(fx, "export_onnx", broken)
    with pytest.raises(FastftError, match="will not export to ONNX .checked on a one-layer copy.: ONNX export failed"):
        export_preflight(_tiny_config(), fused_attention=False)


@pytest.fixture
def no_teacher_training(monkeypatch, tmp_path):
    """An empty fastft cache, and fastft.train failing the test if the default teacher is trained."""
    import fastft

    monkeypatch.setenv("FASTFT_CACHE", str(tmp_path / "cache"))

    def boom(*a, **k):
        raise AssertionError("the default teacher was trained before the input was checked")

    monkeypatch.setattr(fastft, "train", boom)


def test_default_teacher_data_checked_before_training(tmp_path, no_teacher_training):
    import fastft

    rows = [{"text": f"text {i}", "label": "spam" if i % 2 else "ham"} for i in range(40)]
    data = write_jsonl(tmp_path / "spam.jsonl", rows)
    with pytest.raises(FastftError, match="differ from the default teacher's"):
        fastft.compress(None, CompressConfig(data=str(data), output=str(tmp_path / "o"), **FAST))
    with pytest.raises(FastftError):
        fastft.compress(None, CompressConfig(data=str(tmp_path / "missing.csv"), output=str(tmp_path / "o"), **FAST))
    assert not (tmp_path / "o").exists()


def test_task_dependent_defaults_checked_before_training(tmp_path, no_teacher_training):
    """The default teacher is a text classifier: the recipe's defaults are settled (and a clash
    with them refused) before it is trained."""
    import fastft

    # --no-distill keeps every head, so --head-allocation global has no heads to allocate
    with pytest.raises(FastftError, match=r"allocation\) global needs prune_heads \(--prune-heads\)"):
        fastft.compress(
            None, CompressConfig(distill=False, head_allocation="global", output=str(tmp_path / "o"), **FAST)
        )
    assert not (tmp_path / "o").exists()
    # --augment-labels with no copies to label: refused, not silently recorded
    for kw in (dict(augment=0), dict(distill=False), dict(prune_first=True, prune_heads=0.5)):
        with pytest.raises(
            FastftError, match=r"augment_labels \(--augment-labels\) 'teacher' sets the label .* makes none"
        ):
            fastft.compress(None, CompressConfig(augment_labels="teacher", output=str(tmp_path / "o"), **FAST, **kw))
    assert not (tmp_path / "o").exists()


def test_unwritable_output_refused_before_training(tmp_path, no_teacher_training):
    import fastft

    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(FastftError, match="cannot write"):
        fastft.compress(None, CompressConfig(output=str(tmp_path / "file" / "out"), **FAST))


def test_missing_cpu_provider_refused_before_training(tmp_path, monkeypatch, no_teacher_training):
    import onnxruntime

    import fastft

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider"])
    with pytest.raises(FastftError, match="no CPUExecutionProvider"):
        fastft.compress(None, CompressConfig(output=str(tmp_path / "o"), **FAST))


def test_trained_teacher_stays_cached_when_the_export_fails(tmp_path, monkeypatch, tiny_data_file):
    """The default teacher is trained once: a failure after it (here its export) leaves it in the
    cache, and the rerun goes straight to the export without training again."""
    import importlib

    import fastft

    cq = importlib.import_module("fastft.compress.quantize")  # the package's `quantize` attribute is the function
    monkeypatch.setenv("FASTFT_CACHE", str(tmp_path / "cache"))
    trained = []

    def quick_train(*, output, **kwargs):  # stands in for the 30-minute fine-tuning of minilm-l6
        trained.append(kwargs["model"])
        save_tiny_model(tmp_path / "scratch", tiny_data_file)
        import shutil

        shutil.copytree(tmp_path / "scratch", output)

    def failing_export(*a, **k):
        raise FastftError("ONNX export failed (simulated)")

    monkeypatch.setattr(fastft, "train", quick_train)
    monkeypatch.setattr(cq, "export_onnx", failing_export)
    for _ in range(2):
        with pytest.raises(FastftError, match="simulated"):
            fastft.compress(None, CompressConfig(output=str(tmp_path / "o"), **FAST))
    assert trained == ["minilm-l6"], "trained once, reused from the cache on the rerun"
    from fastft.compress.config import TEACHER_ALIAS

    assert (tmp_path / "cache" / TEACHER_ALIAS / "config.json").is_file()
    assert not (tmp_path / "o").exists()


def test_seed_holds_when_the_default_teacher_is_trained_first(tmp_path, monkeypatch, tiny_data_file):
    """A first run trains the default teacher in the same process; the compression that follows starts
    from the same random state as a later run with the same --seed (the teacher then cached)."""
    import shutil

    import torch

    import fastft
    from fastft.compress.context import prepare

    monkeypatch.setenv("FASTFT_CACHE", str(tmp_path / "cache"))

    trained = []

    def quick_train(*, output, **kwargs):  # stands in for fine-tuning minilm-l6; it draws random numbers too
        trained.append(output)
        torch.rand(1000)
        save_tiny_model(tmp_path / "scratch", tiny_data_file, seed=7)
        shutil.copytree(tmp_path / "scratch", output)

    monkeypatch.setattr(fastft, "train", quick_train)
    draws = []
    for _ in range(2):  # trained on the first pass, read from the cache on the second
        prepare(None, CompressConfig(output=str(tmp_path / "o"), seed=5, **FAST))
        draws.append(torch.rand(4))
    assert len(trained) == 1
    assert torch.equal(draws[0], draws[1])
