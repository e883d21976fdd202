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
