"""fastft's C++ attention inside ONNX Runtime (libfastft_ort, fastft.runtime.ort_attention)."""

from __future__ import annotations

import shutil

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
def _op_session(heads: int | None, with_mask: bool, with_bias: bool, threads: int | None = 2):
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
    so.intra_op_num_threads = threads or 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _reference(qkv, mask, bias, heads):
    """softmax(q k^T / sqrt(d) + mask) v per head in float64; rows with no attended key -> 0."""
    b, s, h3 = qkv.shape
    hd = h3 // 3
    d = hd // heads
    x = qkv.astype(np.float64) + (0 if bias is None else bias.astype(np.float64))
    q, k, v = (x[..., i * hd : (i + 1) * hd].reshape(b, s, heads, d).transpose(0, 2, 1, 3) for i in range(3))
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d)
    keep = np.ones((b, s), bool) if mask is None else mask.astype(bool)
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
        assert not got[~valid].any()
        np.testing.assert_allclose(got[valid], ref[valid], atol=2e-5, rtol=1e-4)
    else:
        np.testing.assert_allclose(got, ref, atol=2e-5, rtol=1e-4)
    if mask_kind == "holes":
        assert not got[-1].any()  # every key masked: zeros


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
    monkeypatch.setenv("FASTFT_ATTN_ISA", "sse9")
    sess = _op_session(2, True, True)
    with pytest.raises(Exception, match="fastft FusedAttention: isa: unknown instruction set 'sse9'"):
        sess.run(None, {"qkv": qkv, "mask": mask, "bias": bias})


def test_op_attributes_scale_and_threads_are_optional_heads_is_not():
    rng = np.random.default_rng(3)
    qkv = rng.standard_normal((2, 20, 3 * 2 * 16)).astype(np.float32)
    got = _op_session(2, False, False, threads=None).run(None, {"qkv": qkv})[0]  # num_heads alone
    np.testing.assert_allclose(got, _reference(qkv, None, None, 2), atol=2e-5, rtol=1e-4)
    with pytest.raises(Exception, match="fastft FusedAttention: .*num_heads"):
        _op_session(None, False, False, threads=None)


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
        with pytest.raises((Fail, RuntimeException), match="fastft FusedAttention: "):
            sess.run(None, feeds)


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
    assert fused.info()["attention"] == "fastft C++ kernel in ORT (2 nodes)"
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
        if int8:  # padded rows no longer enter the next layer's dynamic quantisation scale
            assert (a.argmax(-1) == b.argmax(-1)).mean() >= 0.75 and np.abs(a - b).max() < 0.5
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
    with pytest.warns(UserWarning, match="ONNX Runtime's own attention serves model.onnx: .*No space left on device"):
        p = fastft.load(exported, int8=False, ort_attention="fastft", warm_up=False)
    assert p.info()["attention"] == "onnxruntime"
    assert p.logits_from_ids(np.ones((1, 9), np.int64)).shape == (1, 2)
