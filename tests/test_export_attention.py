"""Fused attention written into the ONNX graph by the exporter (fastft.export.attention)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastft.core.errors import FastftError
from fastft.export.attention import count_attention_nodes, export_fused, export_fused_onnx

ATOL = 1e-4


def _session(path, level="all"):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    so.log_severity_level = 3
    so.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _feeds(names, batch, seq, vocab=1000, seed=0):
    rng = np.random.default_rng(seed + 100 * batch + seq)
    ids = rng.integers(5, vocab, size=(batch, seq), dtype=np.int64)
    mask = np.ones_like(ids)
    if batch > 1:
        mask[-1, max(1, seq // 2) :] = 0  # key padding in the batch
        mask[0, seq - 2 :] = 0 if seq > 3 else 1
    all_ = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    return {n: all_[n] for n in names}


def _max_diff(net, sess, names, batch, seq):
    feeds = _feeds(names, batch, seq, vocab=net.config.vocab_size)
    with torch.no_grad():
        ref = net(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits.numpy()
    got = sess.run(["logits"], feeds)[0]
    assert got.shape == ref.shape
    return float(np.abs(got - ref).max()), float(np.abs(ref).max())


@pytest.fixture(scope="module")
def tiny_net(tiny_model_dir):
    from fastft.models import load_classifier

    return load_classifier(tiny_model_dir).eval()


@pytest.fixture(scope="module")
def fused_path(tiny_model_dir, tmp_path_factory):
    return export_fused(tiny_model_dir, tmp_path_factory.mktemp("fused") / "model.onnx")


def _names(net):
    from fastft.export.onnx import model_input_names

    return model_input_names(net)


@pytest.mark.attention_interface
def test_one_fused_node_per_layer_no_softmax(fused_path, tiny_net):
    counts = count_attention_nodes(fused_path)
    assert counts == {"Attention": tiny_net.config.num_hidden_layers}
    import onnx

    model = onnx.load(str(fused_path))
    att = [n for n in model.graph.node if n.op_type == "Attention"]
    assert all(n.domain == "com.microsoft" for n in att)
    assert all(len(n.input) >= 4 and n.input[3] for n in att), "the key padding mask is an input of every node"
    assert {i.name for i in model.graph.input} == {"input_ids", "attention_mask", "token_type_ids"}


@pytest.mark.attention_interface
@pytest.mark.parametrize("level", ["basic", "all"])
def test_parity_at_shapes(fused_path, tiny_net, level):
    sess = _session(fused_path, level)
    names = _names(tiny_net)
    max_len = tiny_net.config.max_position_embeddings
    for batch in (1, 3):
        for seq in (7, 64, max_len):
            diff, scale = _max_diff(tiny_net, sess, names, batch, seq)
            assert diff <= ATOL, f"batch {batch} seq {seq}: max abs diff {diff:.3g} (logits up to {scale:.3g})"


@pytest.mark.attention_interface
def test_export_leaves_the_model_as_it_was(tiny_model_dir, tmp_path):
    from fastft import swap
    from fastft.models import load_classifier

    net = load_classifier(tiny_model_dir).eval()
    before = net.config._attn_implementation
    modules = swap.attention_modules(net)
    export_fused(net, tmp_path / "m.onnx")
    assert net.config._attn_implementation == before and not swap.is_swapped(net) and not net.training
    assert all("forward" not in m.__dict__ for m in modules)
    swap.swap_attention(net)  # a swapped model stays swapped
    export_fused(net, tmp_path / "m2.onnx")
    assert swap.is_swapped(net)


def _strong_bert(heads=4, layers=2):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=300,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=64,
        max_position_embeddings=96,
        initializer_range=0.2,
        num_labels=3,
    )
    return BertForSequenceClassification(cfg).eval()


@pytest.mark.attention_interface
def test_mha_form_and_distilbert(tmp_path):
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    net = _strong_bert()
    p = export_fused(net, tmp_path / "mha.onnx", form="mha")
    assert count_attention_nodes(p) == {"MultiHeadAttention": 2}
    sess = _session(p)
    for batch, seq in ((1, 7), (3, 64), (3, 96)):
        diff, scale = _max_diff(net, sess, _names(net), batch, seq)
        assert diff <= ATOL and scale > 0.1

    torch.manual_seed(0)
    dnet = DistilBertForSequenceClassification(
        DistilBertConfig(
            vocab_size=300,
            dim=32,
            n_layers=3,
            n_heads=4,
            hidden_dim=64,
            max_position_embeddings=64,
            initializer_range=0.2,
        )
    ).eval()
    info = export_fused_onnx(dnet, tmp_path / "distil.onnx", input_names=_names(dnet))
    assert info["attention"]["nodes"] == 3 and info["inputs"] == ["input_ids", "attention_mask"]
    assert count_attention_nodes(tmp_path / "distil.onnx") == {"Attention": 3}
    sess = _session(tmp_path / "distil.onnx")
    for batch, seq in ((1, 7), (3, 64)):
        diff, scale = _max_diff(dnet, sess, _names(dnet), batch, seq)
        assert diff <= ATOL and scale > 0.1


@pytest.mark.attention_interface
def test_ort_transformer_fusions_keep_the_nodes(tmp_path):
    from fastft.export.optimize import fuse_transformer, ort_offline_optimize

    net = _strong_bert()
    p = export_fused(net, tmp_path / "m.onnx")
    fuse_transformer(p, tmp_path / "fused.onnx", net.config)
    ort_offline_optimize(tmp_path / "fused.onnx", tmp_path / "opt.onnx", "basic")
    assert count_attention_nodes(tmp_path / "opt.onnx") == {"Attention": 2}
    sess = _session(tmp_path / "opt.onnx", "basic")
    for batch, seq in ((1, 7), (3, 96)):
        diff, _ = _max_diff(net, sess, _names(net), batch, seq)
        assert diff <= ATOL


@pytest.mark.attention_interface
def test_quantize_dynamic_int8(tmp_path):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    net = _strong_bert()
    p = export_fused(net, tmp_path / "m.onnx")
    q = tmp_path / "m_int8.onnx"
    quantize_dynamic(str(p), str(q), weight_type=QuantType.QInt8)
    counts = count_attention_nodes(q)
    assert counts.get("QAttention") == 2 and "Attention" not in counts
    names = _names(net)
    fp32, int8 = _session(p), _session(q)
    agree = total = 0
    for seed in range(4):
        feeds = _feeds(names, 8, 24, vocab=300, seed=seed)
        a = fp32.run(["logits"], feeds)[0]
        b = int8.run(["logits"], feeds)[0]
        agree += int((a.argmax(1) == b.argmax(1)).sum())
        total += len(a)
    assert agree / total >= 0.9, f"INT8 label agreement {agree}/{total}"


def test_unsupported_architecture_export(tmp_path):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    net = GPT2ForSequenceClassification(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=16))
    with pytest.raises(FastftError, match="supported: bert"):
        export_fused(net, tmp_path / "x.onnx")
    with pytest.raises(FastftError, match="form"):
        export_fused(_strong_bert(), tmp_path / "y.onnx", form="flash")


@pytest.mark.attention_interface
def test_head_pruned_model(tmp_path):
    """Pruned heads (fastft.compress): a different head count per layer, hidden > heads * head_dim."""
    from fastft.compress.prune import prune_layer_heads

    net = _strong_bert()
    for layer, heads in zip(net.bert.encoder.layer, ([1, 3], [0])):
        prune_layer_heads(layer, heads)
    for form, op in (("attention", "Attention"), ("mha", "MultiHeadAttention")):
        p = export_fused(net, tmp_path / f"{form}.onnx", form=form)
        assert count_attention_nodes(p) == {op: 2}
        sess = _session(p)
        for batch, seq in ((1, 7), (3, 64)):
            diff, _ = _max_diff(net, sess, _names(net), batch, seq)
            assert diff <= ATOL


@pytest.mark.attention_interface
def test_fastft_export_pipeline_with_fused_attention(tiny_model_dir, tmp_path, monkeypatch):
    """fastft.export's pipeline (fusions, ORT offline optimisation, INT8, parity checks) on the
    fused-attention graph: export_fused_onnx in place of export_onnx."""
    import fastft.export.onnx as export_onnx_module
    from fastft.export import export

    real = export_onnx_module.export_onnx

    def fused(net, path, *, input_names=None, opset=17, **_):
        monkeypatch.setattr(export_onnx_module, "export_onnx", real)  # export_fused_onnx builds on it
        try:
            return export_fused_onnx(net, path, input_names=input_names, opset=opset)
        finally:
            monkeypatch.setattr(export_onnx_module, "export_onnx", fused)

    monkeypatch.setattr(export_onnx_module, "export_onnx", fused)
    info = export(tiny_model_dir, tmp_path / "out", int8=True, progress=False)
    assert info["export"]["attention"] == {"form": "attention", "op": "com.microsoft.Attention", "nodes": 2}
    assert info["parity"]["fp32"]["passed"] and info["parity"]["fp32"]["max_abs_diff"] <= ATOL
    assert count_attention_nodes(tmp_path / "out" / "model.onnx") == {"Attention": 2}
    assert count_attention_nodes(tmp_path / "out" / "model_int8.onnx") == {"QAttention": 2}
    assert info["parity"]["int8"]["label_agreement"] >= 0.99


@pytest.mark.attention_interface
def test_plain_export_of_a_swapped_model_writes_multiheadattention(tmp_path):
    """fastft.export.onnx.export_onnx on a swapped model: fastft::fused_attention's own symbolic."""
    import fastft
    from fastft.export.onnx import export_onnx

    net = _strong_bert(layers=3)
    fastft.swap_attention(net)
    info = export_onnx(net, tmp_path / "m.onnx")
    assert info["attention_implementation"] == "fastft"
    assert count_attention_nodes(tmp_path / "m.onnx") == {"MultiHeadAttention": 3}
    fastft.unswap_attention(net)
    sess = _session(tmp_path / "m.onnx")
    for batch, seq in ((1, 7), (3, 64), (3, 96)):
        diff, _ = _max_diff(net, sess, _names(net), batch, seq)
        assert diff <= ATOL


def test_hard_coded_attention_falls_back_to_the_plain_graph(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """Where the swap cannot work (a model whose attention never calls transformers'
    AttentionInterface, as on transformers 4.x), fastft export writes the plain graph, says why
    in one line, records it, and the parity checks still pass: the job does not fail."""
    from transformers.models.bert.modeling_bert import BertSelfAttention

    from fastft.export import export

    def hard_coded(self, hidden_states, attention_mask=None, *args, **kwargs):
        b, s, _ = hidden_states.shape
        q, k, v = (
            lin(hidden_states).view(b, s, self.num_attention_heads, -1).transpose(1, 2)
            for lin in (self.query, self.key, self.value)
        )
        if attention_mask is not None and attention_mask.dim() == 2:
            attention_mask = attention_mask[:, None, None, :].to(torch.bool)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask)
        return out.transpose(1, 2).reshape(b, s, -1), None

    monkeypatch.setattr(BertSelfAttention, "forward", hard_coded)
    info = export(tiny_model_dir, tmp_path / "out", int8=True, progress=True)
    reason = info["export"]["fused_attention_fallback"]
    assert "hard-codes the attention of Bert" in reason  # BertSelfAttention (BertSdpaSelfAttention on 4.x)
    lines = [x for x in capsys.readouterr().err.splitlines() if "fused attention unavailable" in x]
    assert len(lines) == 1 and "writing the plain graph" in lines[0]
    assert "attention" not in info["export"]  # the plain exporter's info, not the fused one's
    assert info["parity"]["fp32"]["passed"] and info["parity"]["int8"]["label_agreement"] >= 0.99


def test_a_plain_torch_onnx_export_of_a_swapped_model_prints_no_tracer_warning(tmp_path):
    """``torch.onnx.export`` (the legacy tracer) of a swapped model: the op's argument checks
    compare traced sizes, which printed 20-odd TracerWarnings ("the trace might not generalize")
    though no data flows through them; fastft's own exporter was quiet already."""
    import warnings

    import torch
    import transformers

    from fastft.swap import swap_attention

    cfg = transformers.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=100
    )
    net = swap_attention(transformers.BertForSequenceClassification(cfg).eval())
    ids = torch.randint(0, 100, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    axes = {"input_ids": {0: "b", 1: "s"}, "attention_mask": {0: "b", 1: "s"}}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.onnx.export(
            net, (ids, mask), str(tmp_path / "m.onnx"), dynamo=False, input_names=list(axes), dynamic_axes=axes
        )
    assert not [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
