"""Quantization-aware training: the fake-quant modules reproduce ONNX Runtime's dynamic INT8."""

from __future__ import annotations

import numpy as np
import pytest

from fastft.compress.distill import int8_consistency
from fastft.compress.qat import QatSpec, fake_quant, fake_quant_weight, unquantised, weight_qrange

SPECS = [
    QatSpec("int8", per_channel=True, reduce_range=True),
    QatSpec("int8", per_channel=True, reduce_range=False),
    QatSpec("int8", per_channel=False, reduce_range=False),
    QatSpec("uint8", per_channel=False, reduce_range=False),
]


def _matmul_graph(path, w, b):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, None, w.shape[0]])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, None, w.shape[1]])
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="dense"), helper.make_node("Add", ["h", "B"], ["y"])]
    g = helper.make_graph(nodes, "g", [x], [y], [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.weight_type}-pc{int(s.per_channel)}-rr{int(s.reduce_range)}")
@pytest.mark.parametrize("shape", [(1, 13, 7), (7, 113, 29)])
def test_fake_quant_linear_matches_ort(tmp_path, spec, shape):
    """One Linear through ORT's quantize_dynamic (fastft's recipe path) == the torch fake-quant forward."""
    import onnxruntime as ort
    import torch

    from fastft.core.system import cpu_info
    from fastft.export.quantize import Int8Recipe, quantize_onnx

    if spec.weight_type == "int8" and not spec.reduce_range and not cpu_info().get("vnni"):
        pytest.skip("ORT's AVX2 U8S8 kernels (vpmaddubsw) saturate int16 without reduce_range: not exact int8")
    seq, n_in, n_out = shape
    g = torch.Generator().manual_seed(n_in)
    lin = torch.nn.Linear(n_in, n_out)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n_out, n_in, generator=g) * torch.linspace(0.05, 2.0, n_out)[:, None])
        lin.bias.copy_(torch.randn(n_out, generator=g))
    x = (torch.randn(1, seq, n_in, generator=g) * 3 + 0.7).float()
    _matmul_graph(tmp_path / "f.onnx", lin.weight.detach().numpy().T.copy(), lin.bias.detach().numpy())
    recipe = Int8Recipe(
        scope="weights", weight_type=spec.weight_type, per_channel=spec.per_channel, reduce_range=spec.reduce_range
    )
    quantize_onnx(tmp_path / "f.onnx", tmp_path / "q.onnx", recipe)
    sess = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"])
    y_ort = sess.run(None, {"x": x.numpy()})[0]
    net = torch.nn.Sequential(lin)
    net_fp32 = lin(x).detach().numpy()

    from fastft.compress import qat

    mods = [lin]
    orig = qat.quantized_linears
    try:
        qat.quantized_linears = lambda n: mods  # a bare Linear, no encoder around it
        with fake_quant(net, spec):
            y_fq = net(x).detach().numpy()
    finally:
        qat.quantized_linears = orig
    assert type(lin) is torch.nn.Linear  # restored
    err_fq = np.abs(y_fq - y_ort).max()
    err_fp32 = np.abs(net_fp32 - y_ort).max()
    assert err_fp32 > 1e-3, "quantisation changed nothing: the comparison would not test anything"
    assert err_fq <= 1e-4 * max(1.0, np.abs(y_ort).max()), (err_fq, err_fp32)


def test_weight_ranges_follow_ort():
    import torch

    assert weight_qrange(QatSpec("int8", reduce_range=True)) == (-64, 64)
    assert weight_qrange(QatSpec("int8")) == (-127, 127)
    w = torch.tensor([[0.5, -1.0, 0.25], [2.0, 0.1, -0.3]])
    q = fake_quant_weight(w, QatSpec("int8", per_channel=True, reduce_range=True))
    # per-row scale max|w|/64: the row maximum is exact, the others land on its grid
    assert torch.allclose(q[:, :2].abs().max(1).values, torch.tensor([1.0, 2.0]))
    steps = q / (w.abs().max(1, keepdim=True).values / 64)
    assert torch.allclose(steps, steps.round(), atol=1e-5)


def test_straight_through_gradient():
    import torch

    from fastft.compress.qat import fake_quant_activation

    x = torch.randn(4, 9, requires_grad=True)
    fake_quant_activation(x).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_embedding_rounds_the_rows_it_looks_up_as_the_whole_table():
    """FakeQuantEmbedding rounds only the rows a batch uses, on the whole table's scale: the same
    values and the same gradient, bit for bit, as a lookup in the rounded table."""
    import torch
    import torch.nn.functional as F

    from fastft.compress.qat import fake_quant_activation, fake_quant_classes

    torch.manual_seed(0)
    ids = torch.tensor([[0, 5, 7, 5, 2], [3, 0, 0, 9, 1]])  # row 0 is padding: no gradient
    ref = torch.nn.Embedding(40, 16, padding_idx=0)
    ref.weight.data[17, 3] = 9.0  # the range comes from a row no batch looks up
    emb = torch.nn.Embedding(40, 16, padding_idx=0)
    emb.load_state_dict(ref.state_dict())
    emb.__class__ = fake_quant_classes()[torch.nn.Embedding]
    g = torch.randn(2, 5, 16)
    want = F.embedding(ids, fake_quant_activation(ref.weight), ref.padding_idx)
    got = emb(ids)
    assert torch.equal(got, want)
    (want * g).sum().backward()
    (got * g).sum().backward()
    assert torch.equal(emb.weight.grad, ref.weight.grad)
    assert not emb.weight.grad[0].any() and emb.weight.grad[5].any()


def test_tiny_bert_fake_quant_matches_int8_graph(tiny_model_dir, tmp_path):
    """The whole encoder (QAttention, DynamicQuantizeMatMul, QEmbedLayerNormalization) under fake quant
    gives ORT's INT8 logits, far closer than the fp32 model does."""
    import sys

    import torch

    import fastft.compress  # noqa: F401
    from fastft.export.quantize import recipe_from_options
    from fastft.models import load_classifier

    cq = sys.modules["fastft.compress.quantize"]
    net = load_classifier(tiny_model_dir).eval()
    with torch.no_grad():  # weights large enough for INT8 rounding to show
        for p in net.parameters():
            p.mul_(4.0)
    fp32 = tmp_path / "model.onnx"
    cq.export_onnx(net, fp32)
    q = cq.quantize_int8(cq.fused_path(fp32), tmp_path / "q.onnx", per_channel=True)
    assert q["embedding_nodes_quantized"] == 1
    g = torch.Generator().manual_seed(0)
    ids = [[101] + torch.randint(1000, 30000, (n,), generator=g).tolist() + [102] for n in (5, 17, 30)]
    y_ort = cq.ort_logits(cq.session(tmp_path / "q.onnx"), ids, 0, batch_size=1)
    spec = QatSpec.from_recipe(recipe_from_options(per_channel=True))
    assert spec.embeddings
    outs = {}
    for name, quant in (("fp32", False), ("fq", True)):
        rows = []
        for r in ids:
            x = torch.tensor([r])
            with torch.no_grad():
                if quant:
                    with fake_quant(net, spec) as mods:
                        assert len(mods) == 2 * 6 + 4  # 6 Linears a layer, 3 tables + LayerNorm
                        rows.append(net(input_ids=x, attention_mask=torch.ones_like(x)).logits[0].numpy())
                else:
                    rows.append(net(input_ids=x, attention_mask=torch.ones_like(x)).logits[0].numpy())
        outs[name] = np.stack(rows)
    err_fq, err_fp32 = np.abs(outs["fq"] - y_ort).max(), np.abs(outs["fp32"] - y_ort).max()
    assert err_fp32 > 1e-3
    assert err_fq < 0.1 * err_fp32, (err_fq, err_fp32)
    # the three texts padded into one batch (the mask positional, as HF orders it) round as each
    # does alone: one range per text over its own tokens, what the served graph computes
    width = max(map(len, ids))
    x = torch.tensor([r + [0] * (width - len(r)) for r in ids])
    mask = (torch.arange(width)[None, :] < torch.tensor([len(r) for r in ids])[:, None]).long()
    with torch.no_grad(), fake_quant(net, spec):
        batched = net(x, mask).logits.numpy()
        reversed_ = net(input_ids=x.flip(0), attention_mask=mask.flip(0)).logits.numpy()[::-1]
    np.testing.assert_allclose(batched, outs["fq"], atol=1e-5)
    np.testing.assert_allclose(reversed_, outs["fq"], atol=1e-5)
    assert np.abs(batched - y_ort).max() < 0.1 * err_fp32
    # unquantised: the same modules compute in fp32 again (the consistency term's target)
    with torch.no_grad(), fake_quant(net, spec) as mods:
        with unquantised(mods):
            plain = net(x, mask).logits.numpy()
        again = net(x, mask).logits.numpy()
        cons = int8_consistency(net, mods, x, mask, torch.from_numpy(again), 2.0)
    np.testing.assert_allclose(plain, outs["fp32"], atol=1e-5)
    np.testing.assert_allclose(again, batched, atol=1e-6)
    assert float(cons) > 0
    # in training the fp32 pass replays the quantised pass's dropout masks: with INT8 simulated on
    # nothing (no modules), the term is 0 and the generator ends where the quantised pass left it
    net.train()
    try:
        torch.manual_seed(5)
        rng = torch.get_rng_state()
        with torch.no_grad():
            dropped = net(x, mask).logits
        next_draw = torch.rand(3)
        torch.set_rng_state(rng)
        with torch.no_grad():
            assert np.abs(dropped.numpy() - plain).max() > 1e-3  # dropout is on
            assert torch.equal(net(x, mask).logits, dropped)
            zero = int8_consistency(net, [], x, mask, dropped, 2.0, rng)
        assert float(zero) < 1e-10 and torch.equal(torch.rand(3), next_draw)
    finally:
        net.eval()
    # without a mask the batch shares one range, padding included (not what is served)
    with torch.no_grad(), fake_quant(net, spec):
        shared = net(input_ids=x).logits.numpy()
    assert np.abs(shared - outs["fq"]).max() > 1e-4


def test_compress_with_qat_and_augment_reports_them(tmp_path, tiny_data_file):
    """The pipeline: augmented rows distilled on, QAT in the recovery epoch, agreement and fallback
    count and the shifted splits in the report and fastft.json, 8-bit embeddings in the INT8 file."""
    import json

    import onnx
    from conftest import save_tiny_model

    import fastft
    from fastft.compress import CompressConfig

    teacher = save_tiny_model(tmp_path / "t2", tiny_data_file, layers=2, seed=2)
    out = tmp_path / "small"
    cfg = CompressConfig(
        layers=1,
        prune_ffn=0.5,
        augment=2,
        qat=True,
        qat_epochs=2,
        qat_consistency=1.0,
        recovery_epochs=3,
        output=str(out),
        epochs=1,
        batch_size=16,
        bench=False,
    )
    report = fastft.compress(str(teacher), cfg, progress=False, prune_batches=2)
    dist, pr, q = report["distillation"], report["pruning"], report["quantization"]
    n_train = dist["augment"]["rows"] // 2
    assert dist["augment"]["copies"] == 2 and n_train > 0 and sum(dist["augment"]["operations"].values()) == 2 * n_train
    assert "qat" not in dist  # recovery follows: its last epochs are the quantization-aware ones
    assert pr["recovery"]["qat"]["weights"].startswith("int8") and pr["recovery"]["qat"]["epochs"] == 2
    # --qat-epochs 2 of 3 recovery epochs: the last two simulate INT8, and only they compete for "best"
    hist = pr["recovery"]["history"]
    assert [bool(e.get("qat")) for e in hist] == [False, True, True]
    assert pr["recovery"]["qat"]["consistency"] == 1.0
    assert "validation_accuracy" not in hist[0] and all("validation_accuracy" in e for e in hist[1:])
    assert 0.0 <= q["label_agreement_fp32_test"] <= 1.0 and q["fp32_nodes"] == len(q["excluded_nodes"])
    assert q["embedding_nodes_quantized"] == 1 and q["recipe"].endswith("emb8")
    ops = {n.op_type for n in onnx.load(str(out / "model_int8.onnx")).graph.node}
    assert "QEmbedLayerNormalization" in ops
    assert set(report["shift"]) == {"rare", "long"}
    assert all("accuracy_rare" in r and "accuracy_long" in r for r in report["stages"])
    if report["stages"][0]["accuracy_rare"]:
        assert all("retained_rare" in r for r in report["stages"])
    meta = json.loads((out / "fastft.json").read_text())
    assert meta["compress"]["int8_fallback_fp32_nodes"] == q["fp32_nodes"]
    assert "shifted split `rare`" in (out / "report.md").read_text()


def test_consistency_is_on_by_default_only_with_quantization_aware_training():
    from fastft.compress import CompressConfig
    from fastft.compress.config import DEFAULT_QAT_CONSISTENCY
    from fastft.compress.stages import qat_spec

    assert qat_spec(CompressConfig(quantize="int8")).consistency == DEFAULT_QAT_CONSISTENCY > 0
    assert qat_spec(CompressConfig(quantize="int8", qat_consistency=0)).consistency == 0
    for kw in (dict(quantize="int8", qat=False), dict(quantize="fp16"), dict(quantize="int8", static=True)):
        cfg = CompressConfig(**kw)
        cfg.validate()  # the default weight is no error without QAT
        assert qat_spec(cfg) is None


def test_activation_range_always_holds_zero():
    """DynamicQuantizeLinear's range is [min(0, min x), max(0, max x)]: an all-positive tensor with
    values in [1, 2] is rounded on the grid 2/255 from 0 (zero point 0), an all-negative one in
    [-3, -1.5] on 3/255 with zero point 255. Every input the other tests feed spans zero, so a range
    of [min x, max x] passed them (values by hand, round half to even)."""
    import torch

    from fastft.compress.qat import fake_quant_activation

    pos = [1.1, 2.0, 1.3, 1.71, 1.004]
    s = 2.0 / 255
    want = [round(v / s) * s for v in pos]
    assert torch.allclose(fake_quant_activation(torch.tensor([pos])), torch.tensor([want]), atol=1e-6)
    neg = [-1.5 * v for v in pos]
    s = 3.0 / 255
    want = [(min(255, max(0, round(v / s) + 255)) - 255) * s for v in neg]
    assert torch.allclose(fake_quant_activation(torch.tensor([neg])), torch.tensor([want]), atol=1e-6)
    # per row over the unmasked tokens: row 0's range is [0, 2] (its padded -40 ignored), row 1's [-3, 0]
    x = torch.tensor([[[1.1], [2.0], [-40.0]], [[-3.0], [-1.0], [-2.2]]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    got = fake_quant_activation(x, mask=mask)
    s0, s1 = 2.0 / 255, 3.0 / 255
    assert torch.allclose(got[0, :2, 0], torch.tensor([round(1.1 / s0) * s0, round(2.0 / s0) * s0]), atol=1e-6)
    assert got[0, 2, 0].item() == 0.0  # padding below the row's range clips to its zero point
    row1 = [(round(v / s1) + 255 - 255) * s1 for v in (-3.0, -1.0, -2.2)]
    assert torch.allclose(got[1, :, 0], torch.tensor(row1), atol=1e-6)


def test_spec_from_recipe_keeps_the_recipe_weights_and_embeddings_only_in_qoperator():
    """QatSpec.from_recipe simulates what the recipe quantises: its weight type, granularity and
    7-bit range, and the 8-bit embeddings only where the format has QEmbedLayerNormalization
    (QOperator; a QDQ graph keeps them fp32). With the range dropped the weights round on a grid
    twice as fine as ORT's (checked below on one weight)."""
    from dataclasses import replace

    import torch

    from fastft.export.quantize import Int8Recipe

    r = Int8Recipe(weight_type="int8", per_channel=True, reduce_range=True, embeddings=True, quant_format="QOperator")
    s = QatSpec.from_recipe(r, epochs=2, consistency=0.5)
    assert (s.weight_type, s.per_channel, s.reduce_range, s.embeddings) == ("int8", True, True, True)
    assert (s.epochs, s.consistency) == (2, 0.5)
    assert not QatSpec.from_recipe(replace(r, quant_format="QDQ")).embeddings
    assert not QatSpec.from_recipe(replace(r, embeddings=False)).embeddings
    u = QatSpec.from_recipe(replace(r, weight_type="uint8", per_channel=False, reduce_range=False))
    assert (u.weight_type, u.per_channel, u.reduce_range) == ("uint8", False, False)
    w = torch.tensor([[1.0, 0.3]])
    assert fake_quant_weight(w, s)[0, 1].item() == pytest.approx(round(0.3 * 64) / 64)  # 7-bit: steps of 1/64


def test_consistency_of_a_token_classifier_reads_the_real_tokens_only():
    """int8_consistency on (batch, seq, labels) logits: T^2 KL from the same weights' fp32 outputs,
    averaged over the unmasked tokens alone (by hand with torch's kl_div); moving the padded
    positions' logits changes nothing (a mutant averaging over every position passed every test)."""
    import torch
    import torch.nn.functional as F
    from transformers import BertConfig, BertForTokenClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    cfg.num_labels = 3
    net = BertForTokenClassification(cfg).eval()
    ids = torch.randint(1, 60, (2, 6))
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    with torch.no_grad():
        ref = net(input_ids=ids, attention_mask=mask).logits
    logits, T, keep = torch.randn(2, 6, 3), 2.0, mask.bool()
    want = F.kl_div(F.log_softmax(logits[keep] / T, -1), F.softmax(ref[keep] / T, -1), reduction="batchmean") * T * T
    moved = logits.clone()
    moved[1, 3:] += 50.0  # the padded positions of row 1
    with fake_quant(net, QatSpec()) as mods:
        got = int8_consistency(net, mods, ids, mask, logits, T).item()
        again = int8_consistency(net, mods, ids, mask, moved, T).item()
    assert got == pytest.approx(want.item(), rel=1e-5) and again == pytest.approx(got, rel=1e-6)


def test_embedding_layernorm_gamma_and_beta_are_rounded_to_uint8():
    """8-bit embeddings: the embedding LayerNorm's gamma and beta are each stored uint8 per tensor
    (QEmbedLayerNormalization), so the simulated LayerNorm of a zero row is the rounded beta and of
    [1, -1, 0] (normalised: +-sqrt(3/2), 0) uses the rounded gamma (by hand: beta [0, 1, 0.31] on
    steps of 1/255, gamma [2, 0.5, 1.1] on 2/255). A beta left fp32 passed every test."""
    import math

    import torch

    from fastft.compress.qat import fake_quant_classes

    ln = torch.nn.LayerNorm(3, eps=1e-12)
    with torch.no_grad():
        ln.weight.copy_(torch.tensor([2.0, 0.5, 1.1]))
        ln.bias.copy_(torch.tensor([0.0, 1.0, 0.31]))
    ln.__class__ = fake_quant_classes()[torch.nn.LayerNorm]
    beta = [0.0, 1.0, round(0.31 * 255) / 255]
    gamma = [2.0, round(0.5 * 255 / 2) * 2 / 255]  # (the third multiplies 0)
    with torch.no_grad():
        zero = ln(torch.zeros(1, 3))
        row = ln(torch.tensor([[1.0, -1.0, 0.0]]))
    assert torch.allclose(zero, torch.tensor([beta]), atol=1e-6)
    n = math.sqrt(1.5)
    want = [n * gamma[0] + beta[0], -n * gamma[1] + beta[1], beta[2]]
    assert torch.allclose(row, torch.tensor([want]), atol=1e-5)


def test_embeddings_are_simulated_only_when_the_spec_says_so(tiny_model_dir):
    """QatSpec(embeddings=False) (a recipe with fp32 embeddings, or QDQ): the embedding layer computes
    exactly what it does outside fake_quant and no embedding module is swapped; with True its output
    moves (the tables round to uint8). A mutant that always simulated 8-bit embeddings passed. Leaving
    the block removes the mask hook it added (a mutant leaving one per QAT run passed)."""
    import torch

    from fastft.models import load_classifier

    net = load_classifier(tiny_model_dir).eval()
    ids = torch.tensor([[101, 2023, 2003, 1037, 2307, 102]])
    hooks = len(net._forward_pre_hooks)
    with torch.no_grad():
        plain = net.bert.embeddings(input_ids=ids)
        with fake_quant(net, QatSpec(embeddings=False)) as mods:
            off = net.bert.embeddings(input_ids=ids)
            assert all(isinstance(m, torch.nn.Linear) for m in mods)
        with fake_quant(net, QatSpec(embeddings=True)):
            on = net.bert.embeddings(input_ids=ids)
    assert torch.equal(off, plain) and not torch.allclose(on, plain, atol=1e-6)
    assert len(net._forward_pre_hooks) == hooks
