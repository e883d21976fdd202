"""SkipLayerNormalization -> Add + LayerNormalization (fastft.export.layernorm): exact in ONNX Runtime,
keeps the sum output, leaves what it cannot express alone, and rewrites only when the probe says so."""

from __future__ import annotations

import numpy as np
import pytest

H, S = 24, 7


def _graph(*, bias: bool = True, beta: bool = True, outputs=("y",), opset: int = 17):
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.standard_normal(H).astype(np.float32), "gamma")]
    ins = ["x", "skip", "gamma"]
    if beta or bias:
        ins.append("beta" if beta else "")
        if beta:
            inits.append(numpy_helper.from_array(rng.standard_normal(H).astype(np.float32), "beta"))
    if bias:
        ins.append("bias")
        inits.append(numpy_helper.from_array(rng.standard_normal(H).astype(np.float32), "bias"))
    outs = ["y", "", "", ""]
    for name, i in (("mean", 1), ("inv_std", 2), ("sum", 3)):
        if name in outputs:
            outs[i] = name
    node = helper.make_node("SkipLayerNormalization", ins, outs, domain="com.microsoft", name="sln", epsilon=1e-5)
    nodes = [node]
    graph_outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, S, H])]
    if "sum" in outputs:  # the sum feeds the next residual, as in fused encoders
        nodes.append(helper.make_node("Mul", ["sum", "y"], ["z"]))
        graph_outs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, S, H]))
    if "mean" in outputs:
        graph_outs.append(helper.make_tensor_value_info("mean", TensorProto.FLOAT, None))
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, S, H]) for n in ("x", "skip")]
    m = helper.make_model(
        helper.make_graph(nodes, "g", io, graph_outs, initializer=inits),
        opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)],
    )
    m.ir_version = 8
    return m


def _run(model):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(2)
    feeds = {n: rng.standard_normal((1, S, H)).astype(np.float32) for n in ("x", "skip")}
    return sess.run(None, feeds)


@pytest.mark.parametrize(
    "kwargs",
    [dict(), dict(bias=False), dict(beta=False), dict(bias=False, beta=False), dict(outputs=("y", "sum"))],
    ids=["bias", "no-bias", "no-beta", "gamma-only", "sum-used"],
)
def test_split_is_exact_and_leaves_no_skip_layernorm(kwargs):
    import onnx

    from fastft.export.layernorm import split_skip_layernorm

    model = _graph(**kwargs)
    before = _run(model)
    split = onnx.ModelProto()
    split.CopyFrom(model)
    assert split_skip_layernorm(split) == 1
    onnx.checker.check_model(split)
    ops = [n.op_type for n in split.graph.node]
    assert "SkipLayerNormalization" not in ops and ops.count("LayerNormalization") == 1
    after = _run(split)
    assert len(after) == len(before)
    for a, b in zip(before, after):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_split_leaves_what_layernormalization_cannot_express():
    from fastft.export.layernorm import split_skip_layernorm, splittable

    assert split_skip_layernorm(_graph(outputs=("y", "mean"))) == 0  # the mean output is used
    assert splittable(_graph(opset=16)) == []  # no LayerNormalization before opset 17


def test_maybe_split_follows_the_probe(tmp_path, monkeypatch):
    import onnx

    from fastft.export import layernorm

    path = tmp_path / "m.onnx"
    onnx.save(_graph(), str(path))
    monkeypatch.setattr(layernorm, "probe", lambda hidden, threads=None: {"gain": 1.05, "hidden": hidden})
    rec = layernorm.maybe_split(path)
    assert rec["split"] == 0 and rec["probe"]["hidden"] == H
    assert [n.op_type for n in onnx.load(str(path)).graph.node] == ["SkipLayerNormalization"]
    monkeypatch.setattr(layernorm, "probe", lambda hidden, threads=None: {"gain": 2.5, "hidden": hidden})
    assert layernorm.maybe_split(path)["split"] == 1
    assert "SkipLayerNormalization" not in [n.op_type for n in onnx.load(str(path)).graph.node]
    assert layernorm.maybe_split(path) == {"split": 0, "reason": "no splittable SkipLayerNormalization"}


def test_probe_times_both_forms_on_this_machine():
    from fastft.export.layernorm import probe

    p = probe(H, 1, seq=16, rounds=3)
    assert p["shape"] == [1, 16, H] and p["fused_ms"] > 0 and p["split_ms"] > 0 and p["gain"] > 0


def test_a_used_inverse_std_output_is_left_alone():
    """SkipLayerNormalization's inv_std_var output (index 2) has no LayerNormalization twin either."""
    from fastft.export.layernorm import splittable

    m = _graph()
    m.graph.node[0].output[2] = "inv_std"
    assert len(splittable(m)) == 1  # named but unused: still splittable
    from onnx import TensorProto, helper

    m.graph.output.append(helper.make_tensor_value_info("inv_std", TensorProto.FLOAT, None))
    assert splittable(m) == []


def test_probe_gain_is_fused_over_split_time(monkeypatch):
    """gain = fused ms / split ms, so a split form twice as fast records gain 2 (what maybe_split
    compares with MIN_GAIN); timed here on a fake clock where the fused node takes 2 s, the split 1 s."""
    import types

    import onnx
    import onnxruntime

    from fastft.export import layernorm

    clock = [0.0]

    class FakeSession:
        def __init__(self, data, *a, **k):
            ops = {n.op_type for n in onnx.load_from_string(data).graph.node}
            self.cost = 2.0 if "SkipLayerNormalization" in ops else 1.0

        def run(self, *a, **k):
            clock[0] += self.cost

    monkeypatch.setattr(onnxruntime, "InferenceSession", FakeSession)
    monkeypatch.setattr(layernorm, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    p = layernorm.probe.__wrapped__(H, 1, seq=4, rounds=3)
    assert (p["fused_ms"], p["split_ms"], p["gain"]) == (2000.0, 1000.0, 2.0)
