"""Fused attention written into the ONNX graph by the exporter (fastft.export.attention)."""

from __future__ import annotations

import warnings

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
    info = fuse_transformer(p, tmp_path / "fused.onnx", net.config)
    assert "Attention" not in info["fused"] and info["fused"]["SkipLayerNormalization"] > 0  # what it added only
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


def _with_biases(net):
    """``net`` with every bias drawn at random: a fresh model's Linear biases are all zero, so a
    graph that drops the Q/K/V bias still matched it."""
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0.0, 0.3)
    return net


@pytest.mark.attention_interface
@pytest.mark.parametrize("form", ["attention", "mha"])
def test_qkv_biases_reach_the_fused_node(tmp_path, form):
    """The Q/K/V biases enter the node (packed into Attention's bias input, or the projections
    before MultiHeadAttention): parity with PyTorch on a model whose biases are not zero."""
    net = _with_biases(_strong_bert())
    p = export_fused(net, tmp_path / f"{form}.onnx", form=form)
    sess = _session(p)
    for batch, seq in ((1, 7), (3, 40)):
        diff, scale = _max_diff(net, sess, _names(net), batch, seq)
        assert diff <= ATOL and scale > 0.1, f"batch {batch} seq {seq}: max abs diff {diff:.3g}"


@pytest.mark.attention_interface
def test_a_layer_left_unfused_is_refused_and_the_fallback_deletes_the_file(tmp_path, monkeypatch):
    """export_fused_onnx checks what it wrote: one com.microsoft node per attention layer and no
    Softmax left (a layer the patch missed); try_export_fused_onnx then deletes the file and says why."""
    import fastft.export.attention as fa

    real = fa._export_forward

    def second_layer(leave):
        calls = []

        def fake(module, proj, form):
            calls.append(module)
            fused = real(module, proj, form)
            if len(calls) != 2:
                return fused
            if leave == "unfused":  # no attention node for this layer
                return lambda hidden_states, *a, **k: (hidden_states, None)
            return lambda hidden_states, *a, **k: (torch.softmax(fused(hidden_states, *a, **k)[0], -1), None)

        return fake

    net = _strong_bert()
    path = tmp_path / "m.onnx"
    for leave, wrote in (("unfused", "{'Attention': 1}"), ("softmax", "'Softmax': 1")):
        monkeypatch.setattr(fa, "_export_forward", second_layer(leave))
        with pytest.raises(FastftError, match="fused-attention export wrote .* for 2 attention layers") as exc:
            export_fused_onnx(net, path, input_names=_names(net))
        assert wrote in str(exc.value)
        monkeypatch.setattr(fa, "_export_forward", second_layer(leave))
        info, why = fa.try_export_fused_onnx(net, path, input_names=_names(net))
        assert info is None and "for 2 attention layers" in why and not path.exists(), leave


def _reference(q, k, v, mask, heads, scale):
    """softmax(q k^T * scale, padded keys out) v per head, in float64; q: (batch, seq_q, hidden),
    k, v: (batch, seq_k, hidden); mask: bool (batch, seq_k), True = attend, or additive float."""
    b, s, h = q.shape

    def split(t):
        return t.double().view(b, t.shape[1], heads, h // heads).transpose(1, 2)

    scores = split(q) @ split(k).transpose(-1, -2) * scale
    if mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    else:  # additive
        scores = scores + mask.double()[:, None, None, :]
    return (scores.softmax(-1) @ split(v)).transpose(1, 2).reshape(b, s, h).float()


def _export_module(module, args, names, path, seq_axis=1, dynamic=True, seq_names=None):
    """``module`` exported (TorchScript, batch and sequence dynamic), run by ORT on ``args``;
    ``seq_names``: each input's sequence axis name where they differ (queries and keys)."""
    from fastft.ops.attention_onnx import register_symbolics

    register_symbolics(17)
    seq_names = seq_names or dict.fromkeys(names, "seq")
    axes = {n: {0: "batch", (seq_axis if n != "mask" else 1): seq_names[n]} for n in names} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=False,
            opset_version=17,
            custom_opsets={"com.microsoft": 1},
            input_names=names,
            dynamic_axes=axes,
        )
    sess = _session(path)
    return sess.run(None, {n: a.numpy() for n, a in zip(names, args)})[0]


@pytest.mark.parametrize("op", ["mha", "qkv"])
def test_export_ops_compute_attention_in_torch_and_in_onnxruntime(tmp_path, op):
    """fastft::onnx_mha / onnx_qkv_attention: the torch op (what a trace computes) and the
    com.microsoft node it exports as both give softmax(q k^T * scale + mask) v per head, with a
    scale that is not head_dim ** -0.5 (the node's default), the QKV bias and a padded key."""
    torch.manual_seed(0)
    b, s, heads, head_dim, scale = 2, 6, 3, 4, 0.61
    hidden = heads * head_dim
    x = torch.randn(b, s, hidden)
    weight, bias = torch.randn(hidden, 3 * hidden) * 0.5, torch.randn(3 * hidden)
    mask = torch.ones(b, s, dtype=torch.bool)
    mask[1, 4:] = False
    q, k, v = (x @ weight + bias).chunk(3, dim=-1)
    ref = _reference(q, k, v, mask, heads, scale)

    class Mha(torch.nn.Module):
        def forward(self, q, k, v, mask):
            return torch.ops.fastft.onnx_mha(q, k, v, mask, heads, scale)

    class Qkv(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight, self.bias = torch.nn.Parameter(weight), torch.nn.Parameter(bias)

        def forward(self, x, mask):
            return torch.ops.fastft.onnx_qkv_attention(x, self.weight, self.bias, mask, heads, scale)

    module, args, names = Mha(), (q, k, v, mask), ["q", "k", "v", "mask"]
    if op == "qkv":
        module, args, names = Qkv(), (x, mask), ["x", "mask"]
    with torch.no_grad():
        torch.testing.assert_close(module(*args), ref, atol=1e-5, rtol=1e-5)
        got = _export_module(module, args, names, tmp_path / f"{op}.onnx")
    np.testing.assert_allclose(got, ref.numpy(), atol=1e-4, rtol=0)


def test_fused_attention_exports_its_scale_and_refuses_causal(tmp_path):
    """fastft::fused_attention's own symbolic (a plain export of a swapped model): the scale reaches
    MultiHeadAttention (not its head_dim ** -0.5 default); causal=True, which the node would
    compute bidirectionally, is refused."""
    from fastft.ops import fused_attention

    torch.manual_seed(0)
    b, heads, s, head_dim = 2, 3, 5, 4
    q, k, v = (torch.randn(b, heads, s, head_dim) for _ in range(3))
    mask = torch.ones(b, s, dtype=torch.bool)
    mask[1, 3:] = False

    class Attend(torch.nn.Module):
        def __init__(self, causal):
            super().__init__()
            self.causal = causal

        def forward(self, q, k, v, mask):
            return fused_attention(q, k, v, key_padding_mask=mask, causal=self.causal, scale=0.3)

    flat = [t.transpose(1, 2).reshape(b, s, -1) for t in (q, k, v)]
    ref = _reference(*flat, mask, heads, 0.3).view(b, s, heads, head_dim).transpose(1, 2)
    with torch.no_grad():
        args, names = (q, k, v, mask), ["q", "k", "v", "mask"]
        got = _export_module(Attend(False), args, names, tmp_path / "m.onnx", seq_axis=2)
        np.testing.assert_allclose(got, ref.numpy(), atol=1e-4, rtol=0)
        with pytest.raises(Exception, match="causal=True is not supported"):
            _export_module(Attend(True), args, names, tmp_path / "c.onnx", seq_axis=2)


def test_fused_attention_exports_an_additive_mask_and_static_shapes(tmp_path):
    """fastft::fused_attention's symbolic with an additive float (batch, seq_k) mask (ORT's
    attention_bias must be (batch, 1, seq_q, seq_k): (batch, 1, 1, seq_k) failed at run time), and
    exported without dynamic axes (the head split's Reshape tripped torch's shape inference)."""
    from fastft.ops import fused_attention

    torch.manual_seed(0)
    b, heads, sq, sk, head_dim = 2, 3, 4, 7, 4  # seq_q != seq_k: the bias takes the queries' length
    q = torch.randn(b, heads, sq, head_dim)
    k, v = (torch.randn(b, heads, sk, head_dim) for _ in range(2))
    keep = torch.ones(b, sk, dtype=torch.bool)
    keep[1, 3:] = False
    additive = torch.zeros(b, sk).masked_fill(~keep, -1e4)
    additive[0, 1] = -2.0  # not only 0 / -inf

    class Attend(torch.nn.Module):
        def forward(self, q, k, v, mask):
            return fused_attention(q, k, v, key_padding_mask=mask, scale=0.3)

    flat = [t.transpose(1, 2).reshape(b, t.shape[2], -1) for t in (q, k, v)]
    names = ["q", "k", "v", "mask"]
    seq_names = {"q": "seq_q", "k": "seq_k", "v": "seq_k", "mask": "seq_k"}
    with torch.no_grad():
        for mask, dynamic in ((additive, True), (additive, False), (keep, False)):
            ref = _reference(*flat, mask, heads, 0.3).view(b, sq, heads, head_dim).transpose(1, 2)
            got = _export_module(
                Attend(), (q, k, v, mask), names, tmp_path / "m.onnx", seq_axis=2, dynamic=dynamic, seq_names=seq_names
            )
            np.testing.assert_allclose(got, ref.numpy(), atol=1e-4, rtol=0, err_msg=f"{mask.dtype} dynamic={dynamic}")


@pytest.mark.attention_interface
def test_patched_attention_refuses_a_mask_that_is_not_a_bool_key_padding_mask():
    """The export ops take a bool (batch, seq) key mask, exported as Cast to int32 (> 0 attends): an
    additive float mask (0 / -inf) would be cast so that every kept key is masked; refused instead."""
    from fastft.export.attention import patched_attention

    net = _strong_bert()
    hidden = torch.randn(2, 5, net.config.hidden_size)
    keep = torch.ones(2, 5, dtype=torch.bool)
    keep[1, 3:] = False
    additive = torch.zeros(2, 5).masked_fill(~keep, float("-inf"))
    with patched_attention(net) as modules, torch.no_grad():
        assert modules[0](hidden, attention_mask=keep)[0].shape == hidden.shape
        with pytest.raises(FastftError, match="needs a key padding mask .bool .batch, seq.."):
            modules[0](hidden, attention_mask=additive)
        with pytest.raises(FastftError, match="needs a key padding mask"):
            modules[0](hidden, attention_mask=torch.ones(2, 1, 5, 5, dtype=torch.bool))  # not a key mask


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


@pytest.mark.attention_interface
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
