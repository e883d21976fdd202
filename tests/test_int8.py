"""The one accuracy-aware INT8 routine (fastft.export.int8) with its sensitivity policies, on a fake
model whose nodes each add a known error: the ranking, the steps and when the search stops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fastft.export import int8

NODES = [f"n{i}" for i in range(8)]
HARM = {"n0": 0.02, "n1": 0.5, "n2": 0.01, "n3": 0.3, "n4": 0.0, "n5": 0.05, "n6": 0.2, "n7": 0.0}
REF = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)


class FakeModel:
    """build(exclude) 'quantises' every node not excluded; a graph's logits carry the harm of its
    quantised nodes (in a fixed random direction per node)."""

    def __init__(self):
        rng = np.random.default_rng(1)
        self.noise = {n: rng.normal(size=REF.shape).astype(np.float32) for n in NODES}
        self.graphs: dict[Path, frozenset] = {}
        self.builds = 0

    def build(self, exclude, probe: bool = False) -> Path:
        self.builds += 1
        path = Path(f"/fake/{len(self.graphs)}.onnx")
        self.graphs[path] = frozenset(NODES) - set(exclude)
        return path

    def logits(self, path: Path) -> np.ndarray:
        return REF + sum(HARM[n] * 4 * self.noise[n] for n in self.graphs[path])

    def harm(self, path: Path) -> float:
        return sum(HARM[n] for n in self.graphs[path])


def _check_below(model: FakeModel, limit: float):
    def check(path, exclude):
        h = model.harm(path)
        return h <= limit, {"harm": h, "excluded": len(exclude)}

    return check


def test_no_check_is_one_attempt_with_everything_quantised():
    m = FakeModel()
    search = int8.accuracy_aware(m.build, None, policy=None)
    assert len(search.attempts) == 1 and search.final.excluded == [] and search.final.passed


def test_a_passing_first_attempt_never_ranks():
    m = FakeModel()

    class Boom:
        def rank(self, build):
            raise AssertionError("ranked although the first attempt passed")

    search = int8.accuracy_aware(m.build, _check_below(m, 10.0), Boom())
    assert len(search.attempts) == 1 and m.builds == 1


def test_kl_sensitivity_ranks_the_most_harmful_nodes_first_and_stops_when_it_passes():
    m = FakeModel()
    policy = int8.KLSensitivity(NODES, lambda: REF, m.logits, progress=False)
    seen = []
    search = int8.accuracy_aware(m.build, _check_below(m, 0.1), policy, on_attempt=seen.append)
    assert list(search.ranking)[:4] == ["n1", "n3", "n6", "n5"]  # by harm, measured as KL of the logits
    assert search.ranking["n1"] > search.ranking["n3"] > search.ranking["n2"] > 0
    # 1, 2, 4 kept fp32: n1+n3+n6+n5 out leaves 0.03 of harm
    assert [len(a.excluded) for a in search.attempts] == [0, 1, 2, 4] and search.final.passed
    assert set(search.final.excluded) == {"n1", "n3", "n6", "n5"} and seen == search.attempts
    assert policy.steps(8) == [1, 2, 4, 8] and policy.steps(6) == [1, 2, 4, 6]


def test_kl_divergence_is_zero_for_equal_logits_and_positive_otherwise():
    assert int8.kl_divergence(REF, REF) == pytest.approx(0.0, abs=1e-7)
    assert int8.kl_divergence(REF, REF + np.array([1.0, 0.0, -1.0], np.float32)) > 0


def test_int8_stage_keeps_the_kl_ranked_nodes_in_fp32(tiny_model_dir, tmp_path):
    """export's INT8 stage on a real (tiny) graph: probes ranked by KL, the kept nodes recorded."""
    import onnx

    from fastft.compress.quantize import ort_logits
    from fastft.export.quantize import recipe_from_options, select_nodes
    from fastft.export.stages import int8_stage, write_fp32
    from fastft.models.model_dir import load_model_dir
    from fastft.runtime.session import create_session, session_options

    net = load_model_dir(tiny_model_dir)[0]
    fp32, fused = tmp_path / "model.onnx", tmp_path / "fused.onnx"
    write_fp32(net, fp32, fused, tmp_path / "plain.onnx")
    nodes = select_nodes(onnx.load(str(fused)), "weights")[0]
    ids = [[101, 2023 + i, 2003, 1037 + i, 102] for i in range(16)]

    def logits_of(path):
        return ort_logits(create_session(path, session_options(threads=1)), ids, 0)

    def check(path, exclude):  # passes once two nodes stay fp32
        return len(exclude) >= 2, {"kept": len(exclude)}

    policy = int8.KLSensitivity(nodes, lambda: logits_of(fp32), logits_of, progress=False)
    res = int8_stage(fused, tmp_path, recipe_from_options(), check=check, policy=policy)
    assert len(nodes) >= 4 and set(res.ranking) == set(nodes)
    assert res.fp32_nodes == list(res.ranking)[:2] and res.check == {"kept": 2}
    assert [a["fp32_nodes"] for a in res.attempts] == [0, 1, 2] and res.path.is_file()
    assert res.path.name == "int8-2-ext.onnx" and res.info["nodes_quantized"] == len(nodes) - 2


def test_default_recipe_sees_vnni_from_either_the_flag_or_the_cpu_flags():
    """VNNI (full 8-bit weights, no reduce_range) from cpu["vnni"] alone or from a vnni CPU flag;
    neither -> reduce_range."""
    from fastft.export.quantize import default_recipe

    assert default_recipe({"vnni": True, "flags": []}).reduce_range is False
    assert default_recipe({"vnni": False, "flags": ["avx2", "avx512_vnni"]}).reduce_range is False
    assert default_recipe({"vnni": False, "flags": ["avx2"]}).reduce_range is True


def test_select_nodes_scopes_weights_and_ffn():
    """scope "weights": only MatMuls with a constant weight (not activation x activation);
    scope "ffn": the intermediate and output dense MatMuls, not the attention output projection;
    no scope takes the pooler / classifier Gemm (tiny, and the most sensitive to INT8)."""
    from onnx import TensorProto, helper, numpy_helper

    from fastft.export.quantize import select_nodes

    w = [numpy_helper.from_array(np.ones((4, 4), np.float32), f"w{i}") for i in range(3)]
    nodes = [
        helper.make_node("MatMul", ["x", "x"], ["s"], name="/layer.0/attention/self/MatMul_scores"),
        helper.make_node("MatMul", ["s", "w0"], ["a"], name="/layer.0/attention/output/dense/MatMul"),
        helper.make_node("MatMul", ["a", "w1"], ["i"], name="/layer.0/intermediate/dense/MatMul"),
        helper.make_node("MatMul", ["i", "w2"], ["y"], name="/layer.0/output/dense/MatMul"),
    ]
    gemm = helper.make_node("Gemm", ["y", "w0"], ["z"], name="/classifier/Gemm")  # pooler / classifier
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4, 4]) for n in ("x", "z")]
    model = helper.make_model(helper.make_graph([*nodes, gemm], "g", vi[:1], vi[1:], initializer=w))
    picked, _ = select_nodes(model, "weights")
    assert picked == [n.name for n in nodes[1:]]
    picked, _ = select_nodes(model, "ffn")
    assert picked == [n.name for n in nodes[2:]]
    picked, _ = select_nodes(model, "all")  # every MatMul, never the classifier's Gemm
    assert picked == [n.name for n in nodes]


def test_select_nodes_no_attention_scope_leaves_the_whole_attention_block():
    """scope "no-attention": weight MatMuls outside the attention block; the fused Attention, the
    Q/K/V projections and the attention output projection all stay fp32 ("weights" takes them)."""
    from onnx import TensorProto, helper, numpy_helper

    from fastft.export.quantize import select_nodes

    w = [numpy_helper.from_array(np.ones((4, 4), np.float32), f"w{i}") for i in range(4)]
    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["q"], name="/layer.0/attention/self/query/MatMul"),
        helper.make_node("Attention", ["x", "w0", "b", "m"], ["c"], name="Attention_0", domain="com.microsoft"),
        helper.make_node("MatMul", ["c", "w1"], ["a"], name="/layer.0/attention/output/dense/MatMul"),
        helper.make_node("MatMul", ["a", "w2"], ["i"], name="/layer.0/intermediate/dense/MatMul"),
        helper.make_node("MatMul", ["i", "w3"], ["y"], name="/layer.0/output/dense/MatMul"),
    ]
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4, 4]) for n in ("x", "y")]
    model = helper.make_model(helper.make_graph(nodes, "g", vi[:1], vi[1:], initializer=w))
    assert select_nodes(model, "no-attention") == ([n.name for n in nodes[3:]], ["MatMul"])
    assert select_nodes(model, "weights") == ([n.name for n in nodes], ["Attention", "MatMul"])


def _embedding_matmul_graph(path: Path) -> Path:
    """ids -> Gather(float table) -> MatMul(weight) -> MatMul(activation x activation): what
    quantize_onnx chooses among."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((50, 16)).astype(np.float32), "table"),
        numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32), "w"),
        numpy_helper.from_array(np.arange(100, dtype=np.int64).reshape(50, 2), "int_table"),
    ]
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["e"], name="/embeddings/word_embeddings/Gather"),
        helper.make_node("MatMul", ["e", "w"], ["a"], name="/layer.0/intermediate/dense/MatMul"),
        helper.make_node("Transpose", ["a"], ["at"], perm=[0, 2, 1], name="/t"),
        helper.make_node("MatMul", ["a", "at"], ["y"], name="/layer.0/attention/self/MatMul"),
        helper.make_node("Gather", ["int_table", "ids"], ["k"], name="/int_lookup/Gather"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["b", "s"])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", "s"]),
            helper.make_tensor_value_info("k", TensorProto.INT64, ["b", "s", 2]),
        ],
        initializer=inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_quantize_onnx_scope_all_takes_activation_matmuls_and_exclude_keeps_the_embedding(tmp_path):
    """Dynamic INT8 of a small graph: scope "all" quantises the activation x activation MatMul too,
    "weights" leaves it fp32; only float tables count as embeddings (not an int64 lookup), and an
    excluded embedding Gather keeps its float table; the file is written at fastft's IR version."""
    import onnx

    from fastft.export.onnx import DEFAULT_IR_VERSION
    from fastft.export.quantize import Int8Recipe, embedding_nodes, quantize_onnx

    src = _embedding_matmul_graph(tmp_path / "m.onnx")
    assert embedding_nodes(onnx.load(str(src))) == (["/embeddings/word_embeddings/Gather"], ["Gather"])

    def table_type(path):
        model = onnx.load(str(path))
        gather = next(n for n in model.graph.node if n.name.startswith("/embeddings/"))
        return next(i.data_type for i in model.graph.initializer if i.name == gather.input[0])

    info = quantize_onnx(src, tmp_path / "all.onnx", Int8Recipe(scope="all"))
    assert info["nodes_quantized"] == 2 and "MatMul" not in info["ops"] and info["ops"]["MatMulInteger"] == 2
    assert info["embedding_nodes_quantized"] == 1 and table_type(tmp_path / "all.onnx") != onnx.TensorProto.FLOAT
    assert onnx.load(str(tmp_path / "all.onnx")).ir_version <= DEFAULT_IR_VERSION
    info = quantize_onnx(src, tmp_path / "w.onnx", Int8Recipe(scope="weights"))
    assert info["nodes_quantized"] == 1 and info["ops"]["MatMul"] == 1 and info["ops"]["MatMulInteger"] == 1
    excluded = Int8Recipe(scope="weights", exclude=("/embeddings/word_embeddings/Gather",))
    info = quantize_onnx(src, tmp_path / "x.onnx", excluded)
    assert info["embedding_nodes_quantized"] == 0 and table_type(tmp_path / "x.onnx") == onnx.TensorProto.FLOAT


def test_static_quantisation_rewinds_its_reader_and_calibrates_uint8_asymmetric(tmp_path):
    """Static QDQ: one calibration reader serves every quantisation (the KL search builds many
    graphs): each rewinds it and gets the same scales; activations are uint8 with ranges from the
    data (asymmetric: zero points other than 128); embeddings stay fp32 (QOperator only)."""
    import onnx
    from onnx import numpy_helper

    from fastft.export.calibration import CalibrationReader
    from fastft.export.quantize import Int8Recipe, quantize_onnx

    src = _embedding_matmul_graph(tmp_path / "m.onnx")
    rng = np.random.default_rng(1)
    reader = CalibrationReader([{"ids": rng.integers(0, 50, (2, 5))} for _ in range(3)])
    recipe = Int8Recipe(mode="static", scope="weights", quant_format="QDQ")
    quantized = []
    for i in range(2):
        info = quantize_onnx(src, tmp_path / f"s{i}.onnx", recipe, reader)
        assert info["embedding_nodes_quantized"] == 0 and info["nodes_quantized"] == 1
        model = onnx.load(str(tmp_path / f"s{i}.onnx"))
        made = {o: n for n in model.graph.node for o in n.output}
        matmul = next(n for n in model.graph.node if n.op_type == "MatMul" and "a" in n.output)
        # the weight MatMul reads both inputs through QDQ pairs: its activation quantised with the
        # calibrated scale, its weight stored as int8 (a DequantizeLinear of an initializer only)
        x, w = (made[name] for name in matmul.input)
        assert x.op_type == w.op_type == "DequantizeLinear" and made[x.input[0]].op_type == "QuantizeLinear"
        stored = {t.name: t for t in model.graph.initializer}
        assert w.input[0] not in made and stored[w.input[0]].data_type == onnx.TensorProto.INT8
        quantized.append({t.name: numpy_helper.to_array(t) for t in model.graph.initializer if "_zero_point" in t.name})
    assert quantized[0].keys() == quantized[1].keys() and quantized[0]
    assert all(np.array_equal(quantized[0][k], quantized[1][k]) for k in quantized[0])
    activations = {k: v for k, v in quantized[0].items() if k in ("e_zero_point", "a_zero_point")}
    assert len(activations) == 2 and all(v.dtype == np.uint8 for v in activations.values())
    assert any(int(v) != 128 for v in activations.values())


def test_quantize_onnx_follows_per_channel_reduce_range_and_allow_empty(tmp_path):
    """The recipe's per_channel (one weight scale per output column) and reduce_range (7-bit
    weights, the fix for U8S8 saturation without VNNI) reach the quantiser; allow_empty with every
    MatMul excluded still quantises the embeddings, and copies the graph when nothing is left."""
    import onnx
    from onnx import numpy_helper

    from fastft.export.quantize import Int8Recipe, quantize_onnx

    src = _embedding_matmul_graph(tmp_path / "m.onnx")

    def weight(path, suffix):
        model = onnx.load(str(path))
        return next(numpy_helper.to_array(i) for i in model.graph.initializer if i.name == "w" + suffix)

    for per_channel, reduce_range in ((False, False), (True, True)):
        recipe = Int8Recipe(scope="weights", per_channel=per_channel, reduce_range=reduce_range, embeddings=False)
        dst = tmp_path / f"q-{per_channel}-{reduce_range}.onnx"
        quantize_onnx(src, dst, recipe)
        assert weight(dst, "_scale").size == (16 if per_channel else 1)
        q = np.abs(weight(dst, "_quantized").astype(np.int32))
        top = 64 if reduce_range else 127  # symmetric: each scale's largest weight lands on the top
        assert (q.max(axis=0) == top).all() if per_channel else q.max() == top
    matmuls = ("/layer.0/intermediate/dense/MatMul", "/layer.0/attention/self/MatMul")
    recipe = Int8Recipe(scope="all", exclude=matmuls)
    info = quantize_onnx(src, tmp_path / "emb.onnx", recipe, allow_empty=True)
    assert info["nodes_quantized"] == 0 and info["embedding_nodes_quantized"] == 1
    empty = Int8Recipe(scope="all", exclude=(*matmuls, "/embeddings/word_embeddings/Gather"))
    info = quantize_onnx(src, tmp_path / "none.onnx", empty, allow_empty=True)
    assert info["nodes_quantized"] == 0 and (tmp_path / "none.onnx").read_bytes() == src.read_bytes()
