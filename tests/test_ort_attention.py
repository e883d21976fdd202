"""fastft's C++ attention inside ONNX Runtime (libfastft_ort, fastft.runtime.ort_attention)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from fastft.core.errors import FastftError
from fastft.runtime import ort_attention
from fastft.runtime.ort_attention import library, resolve, swap_attention


def _lib():
    path = library()
    assert path is not None, (
        "libfastft_ort was not built: the build needs ONNX Runtime's C++ headers "
        "(npm, or cmake -DFASTFT_ORT_INCLUDE=DIR)"
    )
    return path


def test_library_is_built_and_registers():
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.register_custom_ops_library(str(_lib()))


# ---- the op alone, against a float64 reference ------------------------------------------------
def _op_session(
    heads: int | None, with_mask: bool, with_bias: bool, threads: int | None = 2, session_threads: int | None = None
):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    inputs = [helper.make_tensor_value_info("qkv", TensorProto.FLOAT, ["b", "s", "h3"])]
    names = ["qkv", "mask" if with_mask else "", "bias" if with_bias else ""]
    if with_mask:
        inputs.append(helper.make_tensor_value_info("mask", TensorProto.INT32, ["b", "s"]))
    if with_bias:
        inputs.append(helper.make_tensor_value_info("bias", TensorProto.FLOAT, ["h3"]))
    attrs = {"num_heads": heads, "scale": 0.0, "num_threads": threads} if threads else {"num_heads": heads}
    node = helper.make_node(
        "FusedAttention", names, ["out"], domain="ai.fastft", **{k: v for k, v in attrs.items() if v is not None}
    )
    graph = helper.make_graph(
        [node], "g", inputs, [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["b", "s", "h"])]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.fastft", 1)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    so = ort.SessionOptions()
    so.register_custom_ops_library(str(_lib()))
    so.intra_op_num_threads = session_threads or threads or 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _reference(qkv, mask, bias, heads):
    """softmax(q k^T / sqrt(d) + mask) v per head in float64; a sequence with no attended key
    attends to all of them (ORT's Attention lowers masked scores by a constant: softmax ignores it)."""
    b, s, h3 = qkv.shape
    hd = h3 // 3
    d = hd // heads
    x = qkv.astype(np.float64) + (0 if bias is None else bias.astype(np.float64))
    q, k, v = (x[..., i * hd : (i + 1) * hd].reshape(b, s, heads, d).transpose(0, 2, 1, 3) for i in range(3))
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d)
    keep = np.ones((b, s), bool) if mask is None else mask.astype(bool)
    keep[~keep.any(1)] = True
    scores = np.where(keep[:, None, None, :], scores, -np.inf)
    top = scores.max(-1, keepdims=True)
    p = np.exp(scores - np.where(np.isfinite(top), top, 0))
    denom = p.sum(-1, keepdims=True)
    out = np.where(denom > 0, (p / np.where(denom > 0, denom, 1)) @ v, 0.0)
    return out.transpose(0, 2, 1, 3).reshape(b, s, hd)


def _mask(kind: str, b: int, s: int, rng) -> np.ndarray | None:
    if kind == "none":
        return None
    m = np.ones((b, s), np.int32)
    if kind == "prefix":  # right padding, one sequence with no token at all
        for i in range(b):
            m[i, [s, max(1, s // 3), 0][i % 3] :] = 0
    elif kind == "holes":  # not a prefix: keys masked in the middle, one row fully masked
        m[:, 1::3] = 0
        m[-1] = 0
    return m


@pytest.mark.parametrize(
    "b,s,heads,d,mask_kind,bias",
    [
        (1, 1, 1, 8, "none", False),
        (1, 47, 3, 20, "none", True),
        (3, 130, 2, 32, "prefix", True),
        (3, 64, 4, 64, "prefix", False),
        (2, 33, 2, 24, "holes", True),
        (3, 49, 12, 32, "holes", False),
        (2, 260, 2, 64, "prefix", True),
    ],
)
def test_op_matches_the_reference(b, s, heads, d, mask_kind, bias):
    rng = np.random.default_rng(b * 1000 + s + d)
    qkv = rng.standard_normal((b, s, 3 * heads * d)).astype(np.float32)
    mask = _mask(mask_kind, b, s, rng)
    bvec = rng.standard_normal(3 * heads * d).astype(np.float32) if bias else None
    sess = _op_session(heads, mask is not None, bias)
    feeds = {"qkv": qkv}
    if mask is not None:
        feeds["mask"] = mask
    if bias:
        feeds["bias"] = bvec
    got = sess.run(None, feeds)[0]
    ref = _reference(qkv, mask, bvec, heads)
    assert got.shape == ref.shape and np.isfinite(got).all()
    if mask_kind == "prefix":  # padded query rows are not computed: zeros
        valid = mask.astype(bool)
        valid[~valid.any(1)] = True  # a sequence with no token: every row, as ORT computes it
        assert not got[~valid].any()
        np.testing.assert_allclose(got[valid], ref[valid], atol=2e-5, rtol=1e-4)
    else:
        np.testing.assert_allclose(got, ref, atol=2e-5, rtol=1e-4)
    if mask_kind == "holes":  # every key masked: attention over all of them, as ORT's Attention gives
        assert got[-1].any()


def test_op_runs_every_instruction_set_copy(monkeypatch):
    """FASTFT_ATTN_ISA picks the kernel's copy inside ONNX Runtime too (read when the session starts)."""
    from fastft import _native

    rng = np.random.default_rng(7)
    qkv = rng.standard_normal((2, 70, 3 * 2 * 32)).astype(np.float32)
    mask = _mask("holes", 2, 70, rng)
    bias = rng.standard_normal(3 * 2 * 32).astype(np.float32)
    ref = _reference(qkv, mask, bias, 2)
    isas = _native._C.attention_isas()
    assert "generic" in isas
    for isa in isas:
        monkeypatch.setenv("FASTFT_ATTN_ISA", isa)
        got = _op_session(2, True, True).run(None, {"qkv": qkv, "mask": mask, "bias": bias})[0]
        np.testing.assert_allclose(got, ref, atol=2e-5, rtol=1e-4, err_msg=isa)
    monkeypatch.setenv("FASTFT_ATTN_ISA", "sse9")  # refused when the session starts
    with pytest.raises(Exception, match="fastft FusedAttention: FASTFT_ATTN_ISA=sse9 is not an instruction set"):
        _op_session(2, True, True)


def test_op_scores_past_float32s_range_match_the_reference(monkeypatch):
    """Finite inputs whose q k^T / sqrt(d) overflows float32 gave zero rows (every score -inf)
    or NaN rows (one +inf) inside ONNX Runtime: the kernel computes those rows again in double,
    on every copy, with a mask, holes and the QKV bias."""
    from fastft import _native

    heads, d, s = 2, 32, 40
    hd = heads * d
    rng = np.random.default_rng(11)
    v = rng.standard_normal((2, s, hd)).astype(np.float32)
    every_neg = np.concatenate([np.full((2, s, hd), 1e20, np.float32), np.full((2, s, hd), -1e20, np.float32), v], -1)
    one_pos = every_neg.copy()
    one_pos[:, 0, hd : 2 * hd] = 1e20  # key 0 scores +inf in float32
    mask = _mask("holes", 2, s, rng)
    mask[-1, 0] = 1  # one attended key: the row's answer is that key's value
    bias = rng.standard_normal(3 * hd).astype(np.float32)
    for isa in _native._C.attention_isas():
        monkeypatch.setenv("FASTFT_ATTN_ISA", isa)
        sess = _op_session(heads, True, True)
        for what, qkv in (("every score -inf", every_neg), ("one +inf score", one_pos)):
            ref = _reference(qkv, mask, bias, heads)
            assert np.isfinite(ref).all()
            got = sess.run(None, {"qkv": qkv, "mask": mask, "bias": bias})[0]
            np.testing.assert_allclose(got, ref, atol=2e-5, rtol=1e-4, err_msg=f"{isa}: {what}")


def test_op_rows_computed_again_in_double_keep_the_qkv_bias(monkeypatch):
    """Rows the kernel computes again in double (here: an attended inf value, so the row's other
    columns are finite) add the QKV bias there too, to q before the scores and to v in every
    64-value chunk of head_dim (80 here): the overflow test above cannot see the q bias (1e20 + b
    is 1e20) nor a second chunk (head_dim 32)."""
    from fastft import _native

    heads, d, s = 2, 80, 30
    hd = heads * d
    rng = np.random.default_rng(29)
    qkv = rng.standard_normal((2, s, 3 * hd)).astype(np.float32)
    qkv[0, 4, 2 * hd + 70] = np.inf  # sequence 0, head 0, token 4's value, column 70
    bias = (2 * rng.standard_normal(3 * hd)).astype(np.float32)
    ref = _reference(qkv, None, bias, heads)
    assert np.isinf(ref[0, :, 70]).all() and np.isfinite(np.delete(ref[0], 70, axis=-1)).all()
    for isa in _native._C.attention_isas():
        monkeypatch.setenv("FASTFT_ATTN_ISA", isa)
        got = _op_session(heads, False, True).run(None, {"qkv": qkv, "bias": bias})[0]
        np.testing.assert_allclose(got, ref, atol=2e-5, rtol=1e-4, err_msg=isa)


def test_op_reads_the_mask_as_ort_does():
    """> 0 attends, 0 and negative values mask (ORT's Attention reads its mask_index so)."""
    rng = np.random.default_rng(5)
    qkv = rng.standard_normal((2, 12, 3 * 2 * 8)).astype(np.float32)
    mask = np.ones((2, 12), np.int32)
    mask[0, 3] = -1  # not a prefix: key by key
    mask[1, 8:] = -1  # a prefix of positive values, then padding
    got = _op_session(2, True, False).run(None, {"qkv": qkv, "mask": mask})[0]
    ref = _reference(qkv, mask > 0, None, 2)
    np.testing.assert_allclose(got, ref, atol=2e-5, rtol=1e-4)


def test_op_attributes_scale_and_threads_are_optional_heads_is_not():
    rng = np.random.default_rng(3)
    qkv = rng.standard_normal((2, 20, 3 * 2 * 16)).astype(np.float32)
    got = _op_session(2, False, False, threads=None).run(None, {"qkv": qkv})[0]  # num_heads alone
    np.testing.assert_allclose(got, _reference(qkv, None, None, 2), atol=2e-5, rtol=1e-4)
    with pytest.raises(Exception, match="fastft FusedAttention: .*num_heads"):
        _op_session(None, False, False, threads=None)


def test_sessions_come_and_go_while_the_kernel_threads_live(tmp_path):
    """ONNX Runtime unloads a custom-op library with its last session; fastft's own pool's helper
    threads (FASTFT_OP_POOL=fastft) run its code for the life of the process, so the library must
    stay mapped (-z nodelete)."""
    import os
    import subprocess
    import sys

    script = tmp_path / "cycle.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "import numpy as np\n"
        "from test_ort_attention import _op_session\n"
        "qkv = np.random.default_rng(0).standard_normal((2, 256, 3 * 4 * 32)).astype(np.float32)\n"
        "for _ in range(6):\n"
        "    s = _op_session(4, False, False, threads=2)\n"
        "    s.run(None, {'qkv': qkv})\n"
        "    del s\n"
        "print('ok')\n"
    )
    env = {**os.environ, "FASTFT_OP_POOL": "fastft"}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_op_refuses_bad_shapes_with_one_line():
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail, RuntimeException

    sess = _op_session(heads=4, with_mask=True, with_bias=True)
    qkv = np.zeros((1, 5, 3 * 4 * 8), np.float32)
    bad = [
        {"qkv": np.zeros((1, 5, 10), np.float32), "mask": np.ones((1, 5), np.int32), "bias": np.zeros(10, np.float32)},
        {"qkv": qkv, "mask": np.ones((1, 4), np.int32), "bias": np.zeros(96, np.float32)},
        {"qkv": qkv, "mask": np.ones((1, 5), np.int32), "bias": np.zeros(95, np.float32)},
    ]
    for feeds in bad:
        with pytest.raises((Fail, RuntimeException), match="fastft FusedAttention: ") as exc:
            sess.run(None, feeds)
        assert len(str(exc.value).strip().splitlines()) == 1


# ---- the swap in a served model -------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(tiny_model_dir, tmp_path_factory):
    from fastft.export import export

    out = tmp_path_factory.mktemp("ort-attention") / "export"
    export(tiny_model_dir, out, int8=True, progress=False)
    return out


@pytest.mark.attention_interface
@pytest.mark.parametrize("int8", [False, True])
def test_served_logits_match_onnxruntime_attention(exported, int8):
    import fastft

    plain = fastft.load(exported, int8=int8, ort_attention="onnxruntime", warm_up=False)
    fused = fastft.load(exported, int8=int8, ort_attention="fastft", warm_up=False)
    assert plain.info()["attention"] == "onnxruntime"
    assert fused.info()["attention"].startswith("fastft C++ kernel in ORT (2 nodes)")
    assert fused.info()["fastft_ops"]["attention"] == 2 and plain.info()["fastft_ops"] == {
        "attention": 0,
        "layernorm": 0,
        "gelu": 0,
    }
    rng = np.random.default_rng(0)
    for batch, seq in [(1, 1), (1, 7), (3, 40), (4, 128)]:
        ids = rng.integers(5, 1000, (batch, seq))
        mask = np.ones_like(ids)
        if batch > 1:
            mask[0, seq // 2 :] = 0  # right padding
            mask[1, 1::4] = 0  # holes: applied key by key
        a = plain.logits_from_ids(ids, mask)
        b = fused.logits_from_ids(ids, mask)
        assert np.isfinite(b).all()
        if int8 and batch > 1:  # padded rows no longer enter the next layer's dynamic quantisation scale
            assert (a.argmax(-1) == b.argmax(-1)).mean() >= 0.75 and np.abs(a - b).max() < 0.5
        elif int8:  # no padding: the same quantised GEMM, only the attention core differs
            np.testing.assert_allclose(b, a, atol=0.02 * max(1.0, float(np.abs(a).max())))
        else:
            np.testing.assert_allclose(b, a, atol=1e-4, rtol=1e-4)


@pytest.mark.attention_interface
def test_swap_leaves_nodes_it_cannot_compute(exported):
    import onnx
    from onnx import helper

    model = onnx.load(str(exported / "model.onnx"))
    attn = [n for n in model.graph.node if n.op_type == "Attention"]
    for a in list(attn[0].attribute):
        if a.name == "unidirectional":
            attn[0].attribute.remove(a)
    attn[0].attribute.append(helper.make_attribute("unidirectional", 1))
    swapped, n = swap_attention(model, extra_attrs={"num_threads": 1})
    assert n == len(attn) - 1
    kinds = [x.op_type for x in swapped.graph.node]
    assert kinds.count("Attention") == 1 and kinds.count("FusedAttention") == n
    assert sum(x.op_type == "Attention" for x in model.graph.node) == len(attn)  # the input is untouched


def _attention_node_model(hidden: int, heads: int, scale: float | None, seed: int = 0):
    """One com.microsoft Attention(x, W, b, mask) with a random weight and a non-zero bias (fastft's
    test models have zero Q/K/V biases); no ``scale`` attribute when ``scale`` is None (ORT's own
    fusion writes none: head_dim ** -0.5)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array((rng.standard_normal((hidden, 3 * hidden)) * 0.5).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(3 * hidden).astype(np.float32), "b")
    attrs = {"num_heads": heads} if scale is None else {"num_heads": heads, "scale": scale}
    node = helper.make_node("Attention", ["x", "w", "b", "mask"], ["y"], name="att", domain="com.microsoft", **attrs)
    graph = helper.make_graph(
        [node],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", hidden]),
            helper.make_tensor_value_info("mask", TensorProto.INT32, ["b", "s"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", hidden])],
        initializer=[w, b],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    model.ir_version = 8
    return model


@pytest.mark.parametrize("int8", [False, True])
@pytest.mark.parametrize("scale", [None, 0.3])
def test_swapped_node_matches_orts_attention_with_its_bias_scale_and_zero_points(tmp_path, int8, scale):
    """The swap's MatMul (INT8: MatMulIntegerToFloat on the same quantised x, with x's zero point)
    + FusedAttention computes what ORT's Attention / QAttention node computes: the Q/K/V bias
    passed on (or, fold_bias=False, added before the op), the node's scale or, without one,
    head_dim ** -0.5; valid rows compared."""
    import onnx
    import onnxruntime as ort

    model = _attention_node_model(hidden=12, heads=3, scale=scale)
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        onnx.save(model, str(tmp_path / "f.onnx"))
        quantize_dynamic(str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx"), weight_type=QuantType.QInt8)
        model = onnx.load(str(tmp_path / "q.onnx"))
        assert [n.op_type for n in model.graph.node].count("QAttention") == 1
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((3, 9, 12)) * 2 + 0.5).astype(np.float32)  # off-centre: x's zero point is not 0
    mask = np.ones((3, 9), np.int32)
    mask[1, 5:] = 0
    mask[2, 2:] = 0
    feeds = {"x": x, "mask": mask}
    so = ort.SessionOptions()
    so.log_severity_level = 3
    ref = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    so.register_custom_ops_library(str(_lib()))
    valid = mask.astype(bool)
    assert np.abs(ref[valid]).max() > 0.5
    for fold_bias in (True, False):
        swapped, n = swap_attention(model, extra_attrs={"num_threads": 1}, fold_bias=fold_bias)
        assert n == 1
        sess = ort.InferenceSession(swapped.SerializeToString(), so, providers=["CPUExecutionProvider"])
        got = sess.run(None, feeds)[0]
        np.testing.assert_allclose(got[valid], ref[valid], atol=1e-4, rtol=1e-4, err_msg=f"fold_bias={fold_bias}")


def test_modes(monkeypatch):
    monkeypatch.delenv(ort_attention.ENV, raising=False)
    assert resolve("onnxruntime", "cpu") is False
    assert resolve("auto", "cuda") is False
    _lib()
    assert resolve("auto", "cpu") is True
    monkeypatch.setenv(ort_attention.ENV, "onnxruntime")
    assert resolve("auto", "cpu") is False
    assert resolve("fastft", "cpu") is True  # an explicit mode wins over the variable
    monkeypatch.setenv(ort_attention.ENV, "bogus")
    with pytest.raises(FastftError, match="FASTFT_ORT_ATTENTION must be one of"):
        resolve("auto", "cpu")
    with pytest.raises(FastftError, match="ort_attention must be one of auto, fastft, onnxruntime"):
        resolve("fast", "cpu")
    monkeypatch.delenv(ort_attention.ENV)
    monkeypatch.setattr(ort_attention, "library", lambda: None)
    assert resolve("auto", "cpu") is False
    with pytest.raises(FastftError, match="needs libfastft_ort.so, which this install did not build"):
        resolve("fastft", "cpu")
    with pytest.raises(FastftError, match="runs on the CPU only"):
        resolve("fastft", "cuda")


def test_load_checks_the_mode(exported, tmp_path):
    import fastft

    with pytest.raises(FastftError, match="ort_attention must be one of"):
        fastft.load(exported, ort_attention="yes")
    broken = tmp_path / "broken"
    shutil.copytree(exported, broken)
    (broken / "model.onnx").write_bytes(b"not onnx")
    with pytest.raises(FastftError, match="model.onnx is not a loadable ONNX model"):
        fastft.load(broken, int8=False, ort_attention="fastft")


@pytest.mark.attention_interface
def test_no_space_for_the_rewrite_falls_back_with_a_warning(exported, monkeypatch):
    import errno

    import onnx

    import fastft

    def full(*_, **__):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(onnx, "save", full)
    with pytest.warns(UserWarning, match=r"ONNX Runtime's own attention serves model.onnx \(OSError: .*No space left"):
        p = fastft.load(exported, int8=False, warm_up=False)
    assert p.info()["attention"] == "onnxruntime"
    assert p.logits_from_ids(np.ones((1, 9), np.int64)).shape == (1, 2)
    with pytest.raises(FastftError, match="ort_attention='fastft' cannot serve model.onnx: OSError: "):
        fastft.load(exported, int8=False, ort_attention="fastft", warm_up=False)


@pytest.mark.attention_interface
def test_swap_refuses_what_the_op_does_not_compute(exported):
    import onnx
    from onnx import helper

    base = onnx.load(str(exported / "model.onnx"))
    for change in ("qkv_hidden_sizes", "present", "mask_filter_value", "past", "mask_index"):
        model = onnx.ModelProto()
        model.CopyFrom(base)
        node = next(n for n in model.graph.node if n.op_type == "Attention")
        if change == "present":
            node.output.append("present_kv")
        elif change == "past":  # input 4: keys and values of earlier steps, which the op never reads
            node.input.append("past_kv")
        elif change == "mask_index":  # a 1-D mask index (lengths), not a (batch, seq) key mask
            model.graph.input.append(helper.make_tensor_value_info("mask_index", onnx.TensorProto.INT32, ["b"]))
            node.input[3] = "mask_index"
        elif change == "qkv_hidden_sizes":
            node.attribute.append(helper.make_attribute("qkv_hidden_sizes", [32, 32, 32]))
        else:
            node.attribute.append(helper.make_attribute("mask_filter_value", -1e4))
        _, n = swap_attention(model)
        assert n == 1, change  # the other layer's node only


@pytest.mark.attention_interface
def test_a_refused_library_falls_back_under_auto_and_fails_under_fastft(exported, tmp_path, monkeypatch):
    import fastft

    bogus = tmp_path / "libfastft_ort.so"
    bogus.write_bytes(b"not a shared library")
    monkeypatch.setattr(ort_attention, "library", lambda: bogus)
    with pytest.warns(UserWarning, match="ONNX Runtime's own attention serves model.onnx"):
        p = fastft.load(exported, int8=False, warm_up=False)
    assert p.info()["attention"] == "onnxruntime"
    with pytest.raises(FastftError, match="ort_attention='fastft' cannot serve model.onnx: ") as exc:
        fastft.load(exported, int8=False, ort_attention="fastft", warm_up=False)
    assert len(str(exc.value).splitlines()) == 1


@pytest.mark.attention_interface
def test_the_compress_timer_serves_the_files_it_is_told_to(exported):
    from fastft.compress.report import attention_of, measure_latency

    f = exported / "model_int8.onnx"
    lat = measure_latency({"plain": f, "served": f}, seqs=(16,), runs=2, progress=False, served=["served"])
    assert lat["plain"][16]["attention_swapped"] == 0 and lat["served"][16]["attention_swapped"] == 2
    assert attention_of(lat["plain"]) == "onnxruntime"
    served = ort_attention.Swaps(**lat["served"][16]["fastft_ops"])
    assert served.attention == 2 and attention_of(lat["served"]) == ort_attention.describe(served)
    assert attention_of({16: {"attention_swapped": 2}}) == "fastft C++ kernel in ORT (2 nodes)"  # older reports


# ---- the residual LayerNorm op (ai.fastft.SkipLayerNorm) and its swap -----------------------
def _ln_graph(
    hidden: int,
    bias: bool,
    beta: bool = True,
    *,
    sum_out: bool = False,
    axis: int = -1,
    seed: int = 0,
    raw: bool = False,
    product: bool = False,
):
    """Add(MatMul(b, W), LayerNormalization(a)) (+ Add(bias)) -> LayerNormalization: a residual
    as fastft.export.layernorm leaves it. ``sum_out``: the residual sum is a graph output too;
    ``raw``: the Add takes a and b themselves; ``product``: the MatMul multiplies two inputs,
    no weight (the swap must leave both)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32), "gamma"),
        numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32), "beta"),
        numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32), "bias"),
        numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32), "gamma0"),
        numpy_helper.from_array((rng.standard_normal((hidden, hidden)) / hidden**0.5).astype(np.float32), "w"),
    ]
    nodes = [
        helper.make_node("LayerNormalization", ["a", "gamma0"], ["n0"], axis=-1),
        helper.make_node("MatMul", ["b", "a"] if product else ["b", "w"], ["p"]),
        helper.make_node("Add", ["a", "b"] if raw else ["p", "n0"], ["s"]),
    ]
    x = "s"
    if bias:
        nodes.append(helper.make_node("Add", ["s", "bias"], ["sb"]))
        x = "sb"
    nodes.append(
        helper.make_node(
            "LayerNormalization", [x, "gamma"] + (["beta"] if beta else []), ["y"], axis=axis, epsilon=1e-7
        )
    )
    dims = [None, None, hidden]  # a and b may broadcast against each other
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)]
    if sum_out:
        outputs.append(helper.make_tensor_value_info("s", TensorProto.FLOAT, dims))
    graph = helper.make_graph(
        nodes,
        "ln",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [f"{n}0", f"{n}1", hidden]) for n in ("a", "b")],
        outputs,
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _ln_session(model, threads: int = 2):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.register_custom_ops_library(str(_lib()))
    so.intra_op_num_threads = threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the reference stays three nodes
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize(
    "n,s,hidden,bias,beta",
    [
        (1, 1, 2, True, True),
        (1, 7, 37, True, False),
        (2, 33, 384, True, True),
        (3, 5, 100, False, True),
        (3, 700, 512, True, True),  # above the op's work threshold: split over its threads
    ],
)
def test_skip_layernorm_matches_add_and_layernormalization(n, s, hidden, bias, beta):
    from fastft.runtime.ort_attention import swap_layernorm

    model = _ln_graph(hidden, bias, beta, seed=hidden)
    fused, k = swap_layernorm(model, extra_attrs={"num_threads": 2})
    assert k == 1 and [x.op_type for x in fused.graph.node] == ["LayerNormalization", "MatMul", "SkipLayerNorm"]
    assert [x.op_type for x in model.graph.node][-1] == "LayerNormalization"  # the input is untouched
    rng = np.random.default_rng(s)
    feeds = {name: (3 * rng.standard_normal((n, s, hidden)) + 1).astype(np.float32) for name in ("a", "b")}
    ref = _ln_session(model).run(None, feeds)[0]
    got = _ln_session(fused).run(None, feeds)[0]
    assert got.shape == ref.shape and np.isfinite(got).all()
    np.testing.assert_allclose(got, ref, atol=2e-5, rtol=1e-4)


def test_skip_layernorm_runs_every_instruction_set_copy(monkeypatch):
    from fastft import _native
    from fastft.runtime.ort_attention import swap_layernorm

    model = _ln_graph(77, True)
    fused, _ = swap_layernorm(model)
    rng = np.random.default_rng(1)
    for isa in _native._C.attention_isas():  # inputs of its own each (see the BiasGelu test below)
        feeds = {name: rng.standard_normal((2, 9, 77)).astype(np.float32) for name in ("a", "b")}
        ref = _ln_session(model).run(None, feeds)[0]
        monkeypatch.setenv("FASTFT_ATTN_ISA", isa)
        np.testing.assert_allclose(_ln_session(fused).run(None, feeds)[0], ref, atol=2e-5, rtol=1e-4, err_msg=isa)


def _one_value(model, name: str):
    """``model`` with the 1-D initializer ``name`` cut to one value (ONNX broadcasts it: a valid graph)."""
    from onnx import numpy_helper

    init = next(i for i in model.graph.initializer if i.name == name)
    init.CopyFrom(numpy_helper.from_array(np.array([0.7], np.float32), name))
    return model


def _one_unit_product(model):
    """``model`` with the residual's weight product cut to one output unit, (hidden, 1): Add
    broadcasts it over the normalised residual's hidden units (a valid graph)."""
    from onnx import numpy_helper

    w = next(i for i in model.graph.initializer if i.name == "w")
    rows = numpy_helper.to_array(w).shape[0]
    w.CopyFrom(numpy_helper.from_array(np.full((rows, 1), 0.1, np.float32), "w"))
    return model


def test_skip_layernorm_swap_leaves_what_it_cannot_fold():
    """The swap leaves a residual sum used elsewhere, another axis, no weight product, and a
    LayerNormalization bias or residual bias of one value broadcast over the hidden units, or all
    three of one value, also beside a one-unit weight product that Add broadcasts (the op takes one
    value per unit: the served session would fail at run time)."""
    from fastft.runtime.ort_attention import swap_layernorm

    for model in (
        _ln_graph(16, True, sum_out=True),
        _ln_graph(16, False, axis=1),
        _ln_graph(16, True, raw=True),
        _ln_graph(16, True, product=True),
        _one_value(_ln_graph(16, True), "beta"),
        _one_value(_ln_graph(16, True), "bias"),
        _one_value(_one_value(_one_value(_ln_graph(16, True), "gamma"), "beta"), "bias"),
        _one_value(_one_value(_one_value(_one_unit_product(_ln_graph(16, True)), "gamma"), "beta"), "bias"),
    ):
        same, k = swap_layernorm(model)
        assert k == 0 and [x.op_type for x in same.graph.node] == [x.op_type for x in model.graph.node]


def test_skip_layernorm_broadcasts_as_add_and_refuses_what_does_not_with_one_line():
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail, RuntimeException

    from fastft.runtime.ort_attention import swap_layernorm

    model = _ln_graph(8, True)
    sess = _ln_session(swap_layernorm(model)[0])
    rng = np.random.default_rng(4)
    for a, b in [((2, 4, 8), (1, 1, 8)), ((1, 1, 8), (3, 4, 8)), ((2, 1, 8), (1, 5, 8))]:
        feeds = {"a": rng.standard_normal(a).astype(np.float32), "b": rng.standard_normal(b).astype(np.float32)}
        ref = _ln_session(model).run(None, feeds)[0]
        np.testing.assert_allclose(sess.run(None, feeds)[0], ref, atol=2e-5, rtol=1e-4, err_msg=f"{a} + {b}")
    msg = "fastft SkipLayerNorm: x and skip do not broadcast to one shape"
    with pytest.raises((Fail, RuntimeException), match=msg) as exc:
        sess.run(None, {"a": np.zeros((1, 4, 8), np.float32), "b": np.zeros((1, 3, 8), np.float32)})
    assert len(str(exc.value).strip().splitlines()) == 1


def test_skip_layernorm_default_epsilon_and_float_only():
    """A LayerNormalization without an epsilon attribute uses ONNX's 1e-5, one with an epsilon uses
    it; a graph whose scale is not float keeps ORT's nodes (the op takes float)."""
    from onnx import TensorProto, numpy_helper

    from fastft.runtime.ort_attention import swap_layernorm

    model = _ln_graph(24, True)
    ln = model.graph.node[-1]
    for a in list(ln.attribute):
        if a.name == "epsilon":
            ln.attribute.remove(a)
    fused, k = swap_layernorm(model)
    assert k == 1
    rng = np.random.default_rng(6)
    feeds = {n: (1e-3 * rng.standard_normal((2, 3, 24))).astype(np.float32) for n in ("a", "b")}  # epsilon matters
    np.testing.assert_allclose(
        _ln_session(fused).run(None, feeds)[0], _ln_session(model).run(None, feeds)[0], atol=2e-5, rtol=1e-4
    )
    model = _ln_graph(24, True)  # epsilon=1e-7 in the graph; here it is set to 0.05: carried over
    next(a for a in model.graph.node[-1].attribute if a.name == "epsilon").f = 0.05
    fused, k = swap_layernorm(model)
    assert k == 1
    np.testing.assert_allclose(
        _ln_session(fused).run(None, feeds)[0], _ln_session(model).run(None, feeds)[0], atol=2e-5, rtol=1e-4
    )
    gamma = next(i for i in model.graph.initializer if i.name == "gamma")
    gamma.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(gamma).astype(np.float64), "gamma"))
    assert gamma.data_type == TensorProto.DOUBLE and swap_layernorm(model)[1] == 0


# ---- the GELU op (ai.fastft.BiasGelu) and its swap -------------------------------------------
def _gelu_graph(hidden: int, bias: bool):
    """com.microsoft BiasGelu(x, bias), or Gelu(x): what fastft's exports hold."""
    from onnx import TensorProto, helper, numpy_helper

    b = np.random.default_rng(hidden).standard_normal(hidden).astype(np.float32)
    node = helper.make_node(
        "BiasGelu" if bias else "Gelu", ["x", "b"] if bias else ["x"], ["y"], domain="com.microsoft"
    )
    dims = ["n", "s", hidden]
    graph = helper.make_graph(
        [node],
        "gelu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)],
        initializer=[numpy_helper.from_array(b, "b")] if bias else [],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    model.ir_version = 8
    return model


@pytest.mark.parametrize(
    "n,s,hidden,bias",
    [(1, 1, 1, True), (2, 7, 37, True), (1, 9, 20, False), (1, 128, 1536, True), (3, 300, 1536, False)],
)
def test_bias_gelu_matches_onnxruntime(n, s, hidden, bias):
    """The same erf GELU as ORT's kernels, within float rounding, over values out to |x| ~ 20
    (the larger shapes run on the op's threads)."""
    from fastft.runtime.ort_attention import swap_gelu

    model = _gelu_graph(hidden, bias)
    fused, k = swap_gelu(model, extra_attrs={"num_threads": 2})
    assert k == 1 and [(x.domain, x.op_type) for x in fused.graph.node] == [("ai.fastft", "BiasGelu")]
    x = (5 * np.random.default_rng(s).standard_normal((n, s, hidden))).astype(np.float32)
    ref = _ln_session(model).run(None, {"x": x})[0]
    got = _ln_session(fused).run(None, {"x": x})[0]
    assert got.shape == ref.shape and np.isfinite(got).all()
    np.testing.assert_allclose(got, ref, atol=2e-6, rtol=2e-6)


def test_bias_gelu_runs_every_instruction_set_copy(monkeypatch):
    """Each copy against ORT on inputs of its own: ONNX Runtime hands the next session the output
    memory of the last, so with one input for all a copy that left its tail (45 = 2 x 16 + 13 = 5 x 8
    + 5 values) unwritten passed on the previous copy's values."""
    from fastft import _native
    from fastft.runtime.ort_attention import swap_gelu

    model = _gelu_graph(45, True)
    fused, _ = swap_gelu(model)
    for i, isa in enumerate(_native._C.attention_isas()):
        x = (4 * np.random.default_rng(2 + i).standard_normal((2, 5, 45))).astype(np.float32)
        ref = _ln_session(model).run(None, {"x": x})[0]
        monkeypatch.setenv("FASTFT_ATTN_ISA", isa)
        np.testing.assert_allclose(_ln_session(fused).run(None, {"x": x})[0], ref, atol=2e-6, rtol=2e-6, err_msg=isa)


def test_bias_gelu_swap_leaves_other_gelus():
    """FastGelu (tanh form), the standard-domain Gelu and a non-float Gelu keep their nodes."""
    from onnx import TensorProto, helper

    from fastft.runtime.ort_attention import swap_gelu

    model = _gelu_graph(8, True)
    model.graph.node[0].op_type = "FastGelu"
    assert swap_gelu(model)[1] == 0
    model = _gelu_graph(8, False)
    model.graph.node[0].domain = ""
    model.opset_import[0].version = 20
    model.graph.node[0].attribute.append(helper.make_attribute("approximate", "none"))
    assert swap_gelu(model)[1] == 0
    model = _gelu_graph(8, False)
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.FLOAT16
    assert swap_gelu(model)[1] == 0
    assert swap_gelu(_gelu_graph(8, False))[1] == 1


def test_served_session_takes_the_row_ops_without_attention_nodes(tmp_path, monkeypatch):
    """A graph with no attention node still gets fastft's LayerNorm op where the mode allows
    (its session reports no attention swapped); ``onnxruntime`` keeps ORT's nodes."""
    import onnx

    from fastft.runtime import ort
    from fastft.runtime.ort_attention import Swaps, describe
    from fastft.runtime.session import session_options

    path = tmp_path / "ln.onnx"
    model = _ln_graph(32, True)
    onnx.save(model, str(path))
    seen, real = [], ort.create_session

    def spy(p, opts, device="cpu"):
        seen.append([n.op_type for n in onnx.load(str(p)).graph.node])
        return real(p, opts, device=device)

    monkeypatch.setattr(ort, "create_session", spy)
    feeds = {n: np.random.default_rng(8).standard_normal((2, 5, 32)).astype(np.float32) for n in ("a", "b")}
    ref = _ln_session(model).run(None, feeds)[0]
    sess, swaps = ort.served_session(path, session_options(threads=2), ort_attention="auto")
    assert swaps == Swaps(attention=0, layernorm=1, gelu=0) and seen[-1][-1] == "SkipLayerNorm"
    assert describe(swaps) == "onnxruntime + fastft SkipLayerNorm (1)"
    np.testing.assert_allclose(sess.run(None, feeds)[0], ref, atol=2e-5, rtol=1e-4)
    ort.served_session(path, session_options(threads=2), ort_attention="onnxruntime")
    assert seen[-1][-1] == "LayerNormalization"
    monkeypatch.setenv("FASTFT_ORT_ATTENTION", "onnxruntime")
    ort.served_session(path, session_options(threads=2), ort_attention="auto")
    assert seen[-1][-1] == "LayerNormalization"


def test_row_ops_compile_without_the_x86_copies():
    """What a non-x86 compiler builds (the generic copy alone) still compiles: a syntax check."""
    import subprocess

    cxx = shutil.which("c++") or shutil.which("g++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    csrc = Path(__file__).resolve().parents[1] / "csrc"
    cmd = [cxx, "-std=c++17", "-fsyntax-only", "-DFASTFT_GENERIC_ONLY", f"-I{csrc}", str(csrc / "rowops.cpp")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


def test_ops_give_the_same_results_on_either_thread_pool(monkeypatch):
    """The three ops run on the session's ONNX Runtime intra-op threads by default and on fastft's
    own pool under FASTFT_OP_POOL=fastft: the same items either way, so the same bits; shapes
    above each op's threading threshold, on two session threads, and on one (the ops still ask
    for two: ORT's pool then runs every loop on the caller); an unknown pool is refused when the
    session starts."""
    from fastft.runtime.ort_attention import swap_gelu, swap_layernorm

    rng = np.random.default_rng(11)
    qkv = rng.standard_normal((2, 300, 3 * 4 * 32)).astype(np.float32)
    mask = _mask("prefix", 2, 300, rng)
    bias = rng.standard_normal(3 * 4 * 32).astype(np.float32)
    ln, _ = swap_layernorm(_ln_graph(512, True), extra_attrs={"num_threads": 2})
    gelu, _ = swap_gelu(_gelu_graph(1536, True), extra_attrs={"num_threads": 2})
    ab = {name: rng.standard_normal((3, 700, 512)).astype(np.float32) for name in ("a", "b")}
    x = (4 * rng.standard_normal((3, 300, 1536))).astype(np.float32)

    def outputs(threads):
        return [
            _op_session(4, True, True, threads=2, session_threads=threads).run(
                None, {"qkv": qkv, "mask": mask, "bias": bias}
            )[0],
            _ln_session(ln, threads).run(None, ab)[0],
            _ln_session(gelu, threads).run(None, {"x": x})[0],
        ]

    ref = _reference(qkv, mask, bias, 4)
    valid = mask.astype(bool)
    for threads in (2, 1):
        monkeypatch.delenv("FASTFT_OP_POOL", raising=False)
        ort_pool = outputs(threads)
        monkeypatch.setenv("FASTFT_OP_POOL", "fastft")
        own_pool = outputs(threads)
        np.testing.assert_allclose(ort_pool[0][valid], ref[valid], atol=2e-5, rtol=1e-4)
        for a, b in zip(ort_pool, own_pool):
            np.testing.assert_array_equal(a, b)
    monkeypatch.setenv("FASTFT_OP_POOL", "openmp")
    with pytest.raises(Exception, match="fastft SkipLayerNorm: FASTFT_OP_POOL=openmp is not a thread pool"):
        _ln_session(ln)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads in /proc/self/task (Linux)")
@pytest.mark.parametrize("op", ["attention", "layernorm", "gelu"])
def test_ops_wake_no_thread_of_their_own_on_orts_pool(tmp_path, op):
    """On a two-thread session the ops' loops run on ORT's intra-op worker: running each op above
    its threading threshold starts no thread beyond the session's, where FASTFT_OP_POOL=fastft
    starts fastft's persistent helper (one more). A fresh process per pool: the helper outlives
    sessions."""
    import os
    import subprocess
    import sys

    script = tmp_path / "threads.py"
    script.write_text(
        "import os, sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "import numpy as np\n"
        "import test_ort_attention as t\n"
        "from fastft.runtime.ort_attention import swap_gelu, swap_layernorm\n"
        "rng = np.random.default_rng(0)\n"
        f"op = {op!r}\n"
        "if op == 'attention':\n"
        "    s = t._op_session(4, False, False, threads=2)\n"
        "    feeds = {'qkv': rng.standard_normal((2, 256, 384)).astype(np.float32)}\n"
        "elif op == 'layernorm':\n"
        "    s = t._ln_session(swap_layernorm(t._ln_graph(512, True), extra_attrs={'num_threads': 2})[0])\n"
        "    feeds = {n: rng.standard_normal((3, 700, 512)).astype(np.float32) for n in ('a', 'b')}\n"
        "else:\n"
        "    s = t._ln_session(swap_gelu(t._gelu_graph(1536, True), extra_attrs={'num_threads': 2})[0])\n"
        "    feeds = {'x': rng.standard_normal((3, 300, 1536)).astype(np.float32)}\n"
        "before = len(os.listdir('/proc/self/task'))\n"
        "for _ in range(3):\n"
        "    s.run(None, feeds)\n"
        "print(len(os.listdir('/proc/self/task')) - before)\n"
    )

    def started(pool):
        env = {**os.environ, "FASTFT_OP_POOL": pool}
        out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env)
        assert out.returncode == 0, out.stderr[-2000:]
        return int(out.stdout.strip().splitlines()[-1])

    assert started("onnxruntime") == 0
    assert started("fastft") == 1
