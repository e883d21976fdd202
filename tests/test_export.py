"""fastft export: ONNX parity at several shapes, dynamic axes, INT8 (dynamic and static), atomic output, errors.

Uses the tiny random BERT of conftest.py (2 layers, hidden 32, 128 positions).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from fastft.core.errors import FastftError


@pytest.fixture(scope="module")
def exported(tiny_model_dir, tmp_path_factory) -> tuple[Path, dict]:
    """One fp32 + dynamic INT8 export of the tiny model, shared by the read-only checks below."""
    from fastft.export import export

    out = tmp_path_factory.mktemp("export") / "tiny-onnx"
    info = export(tiny_model_dir, out, int8=True, min_agreement=0.8, progress=False)
    return out, info


def _feeds(batch: int, seq: int, names, left_pad: bool = False, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, 30000, (batch, seq), dtype=np.int64)
    mask = np.ones_like(ids)
    if batch > 1:
        if left_pad:
            mask[-1, : seq // 2] = 0
        else:
            mask[-1, seq // 2 :] = 0
    return {
        k: v
        for k, v in {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}.items()
        if k in names
    }


def test_output_dir_layout_and_meta(exported, tiny_model_dir):
    out, info = exported
    for name in ("model.onnx", "model_int8.onnx", "config.json", "model.safetensors", "tokenizer.json", "fastft.json"):
        assert (out / name).is_file(), name
    meta = json.loads((out / "fastft.json").read_text())
    assert meta["onnx"] == json.loads(json.dumps(info))
    assert meta["labels"] == ["negative", "positive"]
    assert meta["history"][-1]["stage"] == "export"
    assert info["export"]["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert info["export"]["opset"] >= 17
    assert info["optimization"]["fusions"]["fused"].get("SkipLayerNormalization", 0) > 0
    # the saved graph's SkipLayerNormalization nodes are split exactly when this machine's probe says so
    sln = info["optimization"]["ort_offline"]["skip_layernorm"]
    ops = [n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node]
    assert sln["probe"]["gain"] > 0 and (sln["split"] > 0) == (sln["probe"]["gain"] >= sln["min_gain"])
    assert ("SkipLayerNormalization" in ops) == (sln["split"] == 0) and ops.count("LayerNormalization") == sln["split"]
    assert info["int8"]["recipe"] and info["int8"]["reason"]
    assert not list(out.parent.glob(".tiny-onnx.fastft-tmp-*"))
    # the source directory is untouched
    assert not (tiny_model_dir / "model.onnx").exists()


def test_fp32_parity_recorded_at_six_shapes(exported):
    _, info = exported
    fp = info["parity"]["fp32"]
    shapes = {(s["batch"], s["seq"]) for s in fp["shapes"]}
    assert shapes == {(1, 7), (3, 7), (1, 64), (3, 64), (1, 128), (3, 128)}
    assert fp["passed"] and fp["max_abs_diff"] <= 1e-4


def test_graph_has_dynamic_axes_and_supported_ir(exported):
    out, _ = exported
    for name in ("model.onnx", "model_int8.onnx"):
        m = onnx.load(str(out / name))
        assert m.ir_version <= 10
        assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) >= 17
        for inp in m.graph.input:
            dims = inp.type.tensor_type.shape.dim
            assert len(dims) == 2 and all(d.dim_param and not d.dim_value for d in dims), (name, inp.name, dims)
        assert [o.name for o in m.graph.output] == ["logits"]


@pytest.mark.parametrize("batch,seq,left_pad", [(1, 1, False), (2, 33, False), (4, 113, False), (3, 20, True)])
def test_plain_onnxruntime_matches_torch(exported, tiny_model_dir, batch, seq, left_pad):
    """ORT loads model.onnx directly (default options) and matches PyTorch at shapes not traced, any padding side."""
    import torch

    from fastft.models import load_classifier

    out, info = exported
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = _feeds(batch, seq, info["export"]["inputs"], left_pad)
    got = sess.run(None, feeds)[0]
    net = load_classifier(tiny_model_dir).eval()
    with torch.inference_mode():
        ref = net(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits.numpy()
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


def test_int8_runs_and_agrees(exported):
    out, info = exported
    q = info["parity"]["int8"]
    assert q["n"] > 0 and q["label_agreement"] >= 0.8
    assert "accuracy_change" in q
    ops = info["int8"]["ops"]
    assert any(op in ops for op in ("MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QAttention"))
    sess = ort.InferenceSession(str(out / "model_int8.onnx"), providers=["CPUExecutionProvider"])
    assert sess.run(None, _feeds(2, 9, info["export"]["inputs"]))[0].shape == (2, 2)


@pytest.mark.parametrize("method", ["minmax", "entropy"])
def test_static_int8_with_calibration(tiny_model_dir, tmp_path, method):
    """Texts of several lengths: the histogram methods (entropy, percentile) once failed on any
    real data ("inhomogeneous shape": ORT stacks every batch's activations into one array)."""
    from fastft.export import export

    info = export(
        tiny_model_dir,
        tmp_path / "static",
        static=True,
        calib_size=20,
        calib_method=method,
        min_agreement=0.8,
        progress=False,
    )
    assert info["int8"]["mode"] == "static" and info["int8"]["calib_size"] == 20
    assert info["parity"]["int8"]["label_agreement"] >= 0.8
    assert (tmp_path / "static" / "model_int8.onnx").is_file()


def test_int8_check_on_calibration_data_with_its_own_columns(tiny_model_dir, tmp_path):
    """--calib-data with other column names: --text-column / --label-column (the error named
    those flags, which export lacked)."""
    import json

    from fastft.export import export

    rows = [
        json.loads(line)
        for line in (Path(json.loads((tiny_model_dir / "fastft.json").read_text())["data"]["path"]))
        .read_text()
        .splitlines()
    ]
    data = tmp_path / "c.jsonl"
    data.write_text("".join(json.dumps({"sentence": r["text"], "y": r["label"]}) + "\n" for r in rows))
    info = export(
        tiny_model_dir, tmp_path / "o", int8=True, calib_data=str(data), text_column="sentence", label_column="y",
        min_agreement=0.5, progress=False,
    )  # fmt: skip
    assert info["parity"]["int8"]["label_agreement"] >= 0.5
    # texts of one class are calibration data too (they were refused: "a single class")
    one = tmp_path / "one.jsonl"
    one.write_text("".join(json.dumps(r) + "\n" for r in rows if r["label"] == rows[0]["label"]))
    info = export(tiny_model_dir, tmp_path / "o1", int8=True, calib_data=str(one), min_agreement=0.5, progress=False)
    assert info["parity"]["int8"]["n"] > 0


def test_int8_of_a_model_that_records_no_data_asks_for_calib_data(tmp_path):
    """An INT8 export checks its parity on the data the model was trained on; a model that records
    none is refused before anything is written, naming the argument both callers pass."""
    from conftest import save_tiny_model

    from fastft.export import export

    model = save_tiny_model(tmp_path / "m")  # fastft.json's data: {}
    for static, message in ((False, "cannot check INT8 parity"), (True, r"static \(--static\) needs calibration")):
        with pytest.raises(
            FastftError, match=message + r".* records no training data; pass calib_data \(--calib-data\)"
        ):
            export(model, tmp_path / "o", int8=True, static=static, progress=False)
        assert not (tmp_path / "o").exists()


def _shift_logits(graph, delta: float) -> None:
    """Edit ``graph`` in place: its ``logits`` output plus ``delta`` (an Add after the node that made them)."""
    for node in graph.node:
        for i, name in enumerate(node.output):
            if name == "logits":
                node.output[i] = "logits_unshifted"
    graph.initializer.append(onnx.numpy_helper.from_array(np.array(delta, np.float32), "logits_shift"))
    graph.node.append(onnx.helper.make_node("Add", ["logits_unshifted", "logits_shift"], ["logits"]))


def _ignore_mask(graph) -> None:
    """Edit ``graph`` in place: every node reads an all-ones mask instead of ``attention_mask``
    (the input stays, unread): right on unpadded rows, wrong wherever the mask has zeros."""
    dtype = next(i.type.tensor_type.elem_type for i in graph.input if i.name == "attention_mask")
    ones = onnx.helper.make_tensor("one", dtype, [1], [1])
    head = [
        onnx.helper.make_node("Shape", ["input_ids"], ["ids_shape"]),
        onnx.helper.make_node("ConstantOfShape", ["ids_shape"], ["mask_ignored"], value=ones),
    ]
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == "attention_mask":
                node.input[i] = "mask_ignored"
    nodes = head + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)


def _edited(src: Path, dst: Path, edit) -> Path:
    m = onnx.load(str(src))
    edit(m.graph)
    onnx.checker.check_model(m)
    onnx.save(m, str(dst))
    return dst


def test_fp32_parity_fails_on_logits_off_by_more_than_its_tolerance(exported, tiny_model_dir, tmp_path):
    """fp32_parity measures the logit difference and refuses one above atol (1e-4): logits shifted
    by half of it pass with that difference recorded, logits shifted by 1.5e-4 are refused."""
    from fastft.export import validate
    from fastft.models import load_classifier

    out, info = exported
    names = info["export"]["inputs"]
    net = load_classifier(tiny_model_dir)
    near = _edited(out / "model.onnx", tmp_path / "near.onnx", lambda g: _shift_logits(g, 5e-5))
    rec = validate.fp32_parity(net, near, names, 128)
    assert rec["passed"] and 4e-5 < rec["max_abs_diff"] <= 1e-4
    off = _edited(out / "model.onnx", tmp_path / "off.onnx", lambda g: _shift_logits(g, 1.5e-4))
    with pytest.raises(
        FastftError, match=r"fp32 parity failed: ONNX logits differ from PyTorch by 0\.00015 \(> 0\.0001\)"
    ):
        validate.fp32_parity(net, off, names, 128)


@pytest.fixture(scope="module")
def loud_export(tmp_path_factory) -> tuple[Path, Path, dict]:
    """(model dir, fp32 export dir, export info) of a tiny model whose classifier is scaled 100x:
    logits of order 1, as a trained model's (the random fixture's are of order 0.01, where a
    graph that ignores the mask is off by less than the parity tolerance)."""
    import torch
    from conftest import save_tiny_model
    from transformers import BertForSequenceClassification

    from fastft.export import export

    root = tmp_path_factory.mktemp("loud")
    model = save_tiny_model(root / "model")
    net = BertForSequenceClassification.from_pretrained(model)
    with torch.no_grad():
        net.classifier.weight.mul_(100)
    net.save_pretrained(model, safe_serialization=True)
    info = export(model, root / "onnx", progress=False)
    return model, root / "onnx", info


def test_fp32_parity_checks_padded_rows(loud_export, tmp_path):
    """A graph that ignores attention_mask matches PyTorch on every unpadded input and is wrong
    only on padded rows: fp32_parity refuses it (its batches of 3 pad their last row)."""
    import torch

    from fastft.export import validate
    from fastft.models import load_classifier

    model, out, info = loud_export
    names = info["export"]["inputs"]
    net = load_classifier(model).eval()
    path = _edited(out / "model.onnx", tmp_path / "no-mask.onnx", _ignore_mask)
    sess = validate.session(path)
    for batch in (1, 3):
        feeds = _feeds(batch, 16, names)
        with torch.inference_mode():
            ref = net(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits.numpy()
        got = sess.run(["logits"], feeds)[0]
        np.testing.assert_allclose(got[:2], ref[:2], atol=1e-4, rtol=0)  # the unpadded rows
        if batch == 3:
            assert np.abs(got[2] - ref[2]).max() > 1e-3  # the padded row is wrong
    with pytest.raises(FastftError, match="fp32 parity failed: .* at batch 3, sequence 7"):
        validate.fp32_parity(net, path, names, 128, sess=sess)


def test_failed_parity_writes_nothing(tiny_model_dir, tmp_path, monkeypatch):
    """An exported graph whose logits are 1e-3 off PyTorch's fails the real fp32 parity check:
    the export is refused and nothing is written."""
    import fastft.export as fx

    real = fx.write_fp32

    def write_off(net, out_file, *args, **kwargs):
        rec = real(net, out_file, *args, **kwargs)
        _edited(out_file, out_file, lambda g: _shift_logits(g, 1e-3))
        return rec

    monkeypatch.setattr(fx, "write_fp32", write_off)
    with pytest.raises(FastftError, match=r"fp32 parity failed: ONNX logits differ from PyTorch by 0\.001 "):
        fx.export(tiny_model_dir, tmp_path / "out", progress=False)
    assert list(tmp_path.iterdir()) == []


class _Flipped:
    """An "INT8 session": ``sess``'s two logits, swapped on the rows holding token ``token_id``."""

    def __init__(self, sess, token_id: int):
        self.sess, self.token_id = sess, token_id

    def get_inputs(self):
        return self.sess.get_inputs()

    def run(self, names, feeds):
        logits = self.sess.run(names, feeds)[0].copy()
        rows = (feeds["input_ids"] == self.token_id).any(1)
        logits[rows] = logits[rows][:, ::-1]
        return [logits]


def test_int8_agreement_counts_the_labels_the_int8_graph_changes(exported):
    """An INT8 session that flips the label of 2 of 8 texts agrees on exactly 6/8 = 0.75, with
    int8 accuracy 0.75 against labels the fp32 graph gets all right."""
    from transformers import AutoTokenizer

    from fastft.export import validate

    out, info = exported
    names = info["export"]["inputs"]
    tok = AutoTokenizer.from_pretrained(out)
    zebra = tok.convert_tokens_to_ids("zebra")
    assert zebra != tok.unk_token_id
    texts = [
        "a wonderful, moving film",
        "a zebra in a dull, lifeless mess",
        "boring and far too long",
        "i loved every minute",
        "funny, warm and smart, a zebra",
        "weak script and bad acting",
        "superb direction, great cast, a delight from start to finish",
        "clumsy",
    ]
    fp32 = validate.session(out / "model.onnx")
    logits = validate.onnx_logits(fp32, tok, texts, names, 128)
    assert (np.abs(logits[:, 0] - logits[:, 1]) > 1e-6).all()  # no tie: a swap flips every label it touches
    gold = logits.argmax(1).tolist()
    int8 = _Flipped(fp32, zebra)
    q = validate.int8_agreement(fp32, int8, tok, texts, gold, names, 128)
    assert q["label_agreement"] == 0.75 and q["n"] == 8
    assert q["fp32_accuracy"] == 1.0 and q["int8_accuracy"] == 0.75 and q["accuracy_change"] == -0.25


def test_export_refuses_an_int8_agreement_just_below_min_agreement(tiny_model_dir, tmp_path, monkeypatch):
    """export decides (the measuring functions do not): an agreement of 0.75 passes min_agreement
    0.75 and is refused just above it, without the fallback, writing nothing."""
    from fastft.export import export, validate

    real = validate.int8_agreement
    monkeypatch.setattr(validate, "int8_agreement", lambda *a, **k: {**real(*a, **k), "label_agreement": 0.75})
    info = export(tiny_model_dir, tmp_path / "at", int8=True, min_agreement=0.75, fallback=False, progress=False)
    assert info["parity"]["int8"]["passed"] and info["parity"]["int8"]["min_agreement"] == 0.75
    above = float(np.nextafter(0.75, 1))
    with pytest.raises(FastftError, match=r"INT8 parity failed: labels agree with fp32 on 75.0% .*\(< 75.0%\)"):
        export(tiny_model_dir, tmp_path / "above", int8=True, min_agreement=above, fallback=False, progress=False)
    assert not (tmp_path / "above").exists()


def test_int8_check_matches_labels_by_name_whatever_the_heads_order(tmp_path):
    """A head listing the labels in another order than the data's (sorted): export's INT8 check
    scores the validation rows by label name, as does fastft.evaluate on the exported graph: a
    model that answers "positive" to every text is right on exactly the positive rows."""
    from conftest import make_rows, save_tiny_model, write_jsonl

    import fastft
    from fastft.export import export
    from fastft.export.checks import data_for
    from fastft.models import read_meta

    rows = [r for i, r in enumerate(make_rows(90)) if r["label"] == "positive" or i % 4 == 1]  # 2:1
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    model = save_tiny_model(tmp_path / "m", data, labels=("positive", "negative"), answer="positive")
    splits, _ = data_for(read_meta(model), None)
    assert splits.labels == ["negative", "positive"]

    def share(split):
        ids = splits.split(split).labels
        return sum(splits.labels[y] == "positive" for y in ids) / len(ids)

    assert share("validation") > 0.5 and share("test") > 0.5
    info = export(model, tmp_path / "onnx", int8=True, progress=False)
    q = info["parity"]["int8"]
    assert q["n"] == len(splits.validation) and q["label_agreement"] == 1.0
    assert q["fp32_accuracy"] == q["int8_accuracy"] == pytest.approx(share("validation"))
    res = fastft.evaluate(str(tmp_path / "onnx"), split="test", backend="onnxruntime", progress=False)
    assert res["accuracy"] == pytest.approx(share("test"))


def test_fastft_export_is_callable_and_importable():
    import fastft
    import fastft.export.onnx
    from fastft.export import export

    assert callable(fastft.export) and callable(export)


def test_default_recipe_follows_cpu_flags():
    from fastft.export.quantize import default_recipe

    vnni = default_recipe({"flags": ["avx2", "avx512f", "avx512_vnni"], "vnni": True})
    avx2 = default_recipe({"flags": ["avx2", "fma"], "vnni": False})
    assert vnni.weight_type == "int8"
    assert avx2.weight_type == "uint8" or avx2.reduce_range
    assert vnni.reason and avx2.reason


def test_peer_pipeline_and_plain_export(tiny_model_dir, tmp_path):
    from fastft.export.peer import peer_pipeline, plain_export

    r = peer_pipeline(tiny_model_dir, tmp_path / "peer")
    for key in ("fp32_optimized", "int8"):
        sess = ort.InferenceSession(r[key], providers=["CPUExecutionProvider"])
        assert sess.run(None, _feeds(1, 5, ["input_ids", "attention_mask", "token_type_ids"]))[0].shape == (1, 2)
    assert "quantize_fallback" in r["record"]
    p = plain_export(tiny_model_dir, tmp_path / "plain.onnx")
    assert Path(p["path"]).is_file()


def _loud_bert(layers: int = 2):
    """A random BERT whose weights move the logits (initializer_range 0.2), every bias non-zero."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=300,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=96,
        initializer_range=0.2,
        num_labels=3,
    )
    net = BertForSequenceClassification(cfg).eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0.0, 0.2)
    return net


def test_fuse_transformer_gives_attention_the_raw_mask_left_padding_and_holes_stay_exact(tmp_path):
    """fuse_transformer on a plain export: ORT's fused Attention reads the raw 2-D mask, so left
    padding and holes match PyTorch (BERT's default 1-D mask index counts ones: right padding only)."""
    import torch

    from fastft.export.onnx import export_onnx
    from fastft.export.optimize import fuse_transformer, op_counts

    net = _loud_bert()
    export_onnx(net, tmp_path / "plain.onnx")
    info = fuse_transformer(tmp_path / "plain.onnx", tmp_path / "fused.onnx", net.config)
    assert op_counts(tmp_path / "fused.onnx").get("Attention") == 2 and info["num_heads"] == 4
    sess = ort.InferenceSession(str(tmp_path / "fused.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 300, (3, 20), dtype=np.int64)
    mask = np.ones_like(ids)
    mask[1, 3:6] = 0  # holes
    mask[2, :10] = 0  # left padding
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    with torch.no_grad():
        ref = net(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits.numpy()
    np.testing.assert_allclose(sess.run(None, feeds)[0], ref, atol=1e-4, rtol=0)


def _matmul_graph(path: Path) -> Path:
    """y = x W + b: a graph ORT's extended level fuses (MatMul + Add -> FusedMatMul / Gemm)."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    b = numpy_helper.from_array(np.ones(4, np.float32), "b")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        initializer=[w, b],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_ort_offline_optimize_records_cpu_only_graphs_and_refuses_disable(tmp_path):
    """The extended and all levels bake CPU-provider fusions into the file: recorded as
    CPUExecutionProvider-only (basic stays portable); "disable" is no optimisation level to save."""
    from fastft.export.optimize import ort_offline_optimize

    src = _matmul_graph(tmp_path / "m.onnx")
    cpu = ["CPUExecutionProvider"]
    for level, providers in (("basic", None), ("extended", cpu), ("all", cpu)):
        info = ort_offline_optimize(src, tmp_path / f"{level}.onnx", level)
        assert info["level"] == level and info["providers"] == providers, level
    with pytest.raises(FastftError, match="graph optimisation level must be one of basic, extended, all"):
        ort_offline_optimize(src, tmp_path / "disable.onnx", "disable")
    assert not (tmp_path / "disable.onnx").exists()


@pytest.mark.attention_interface
def test_export_onnx_leaves_the_model_as_it_was_and_checks_input_names(tmp_path):
    """export_onnx switches a model to eval and to eager attention for the trace: a model in
    training mode with SDPA attention gets both back; an unknown input name is one FastftError."""
    from fastft.export.onnx import export_onnx

    net = _loud_bert(layers=1)
    net.set_attn_implementation("sdpa")
    net.train()
    info = export_onnx(net, tmp_path / "m.onnx")
    assert info["attention_implementation"] == "eager"
    assert net.config._attn_implementation == "sdpa"
    assert net.training and all(m.training for m in net.modules())
    with pytest.raises(FastftError, match="input_names: unknown input 'mask'"):
        export_onnx(net, tmp_path / "x.onnx", input_names=["input_ids", "mask"])


def test_model_input_names_take_token_types_only_where_the_model_has_them():
    """token_type_ids is an input where forward takes it and the config has token types
    (type_vocab_size > 0); a model without a token-type table gets none."""
    from types import SimpleNamespace

    from fastft.export.onnx import model_input_names

    class Net:
        def __init__(self, types):
            self.config = SimpleNamespace(type_vocab_size=types)

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            return None

    assert model_input_names(Net(2)) == ["input_ids", "attention_mask", "token_type_ids"]
    assert model_input_names(Net(0)) == ["input_ids", "attention_mask"]


def test_set_ir_version_lowers_newer_files_only(tmp_path):
    """set_ir_version writes fastft's IR version (what every onnxruntime 1.2x-1.3x reads) over a
    newer one and leaves an older file as it is."""
    from fastft.export.onnx import DEFAULT_IR_VERSION, set_ir_version

    path = _matmul_graph(tmp_path / "m.onnx")
    m = onnx.load(str(path))
    for ir, expected in ((DEFAULT_IR_VERSION + 3, DEFAULT_IR_VERSION), (8, 8)):
        m.ir_version = ir
        onnx.save(m, str(path))
        assert set_ir_version(path) == expected and onnx.load(str(path)).ir_version == expected


# ---- bad input: one line, exit 2, nothing written -------------------------------------------------------------


def _cli(args, capsys):
    from fastft.cli import main

    code = main(["export", *map(str, args)])
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def _base_encoder_dir(tiny_model_dir: Path, dst: Path) -> Path:
    shutil.copytree(tiny_model_dir, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["architectures"] = ["BertModel"]
    (dst / "config.json").write_text(json.dumps(cfg))
    (dst / "fastft.json").unlink()
    return dst


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "corrupt",
        "no-head",
        "static-no-data",
        "calib-size",
        "opset",
        "min-agreement",
        "min-agreement-no-int8",
        "exists",
    ],
)
def test_bad_input_is_one_line(case, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    model = tiny_model_dir
    extra: list = []
    if case == "missing":
        model = tmp_path / "nope"
    elif case == "corrupt":
        model = shutil.copytree(tiny_model_dir, tmp_path / "corrupt")
        (model / "config.json").write_text("{not json")
    elif case == "no-head":
        model = _base_encoder_dir(tiny_model_dir, tmp_path / "base")
    elif case == "static-no-data":
        model = shutil.copytree(tiny_model_dir, tmp_path / "nodata")
        meta = json.loads((model / "fastft.json").read_text())
        meta["data"] = {}
        (model / "fastft.json").write_text(json.dumps(meta))
        extra = ["--static"]
    elif case == "calib-size":
        extra = ["--static", "--calib-size", "0"]
    elif case == "opset":
        extra = ["--opset", "16"]
    elif case == "min-agreement":
        extra = ["--int8", "--min-agreement", "1.5"]
    elif case == "min-agreement-no-int8":
        extra = ["--min-agreement", "0.9"]
    elif case == "exists":
        out.mkdir()
        (out / "keep.txt").write_text("x")
    before = sorted(p.name for p in tmp_path.iterdir())
    code, err = _cli(["--model", model, "--output", out, *extra], capsys)
    assert code == 2
    assert len(err) == 1 and err[0].startswith("fastft: error: "), err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    if case == "exists":
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
    else:
        assert not out.exists()


def test_cli_json(tiny_model_dir, tmp_path, capsys):
    from fastft.cli import main

    assert main(["export", "--model", str(tiny_model_dir), "--output", str(tmp_path / "o"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parity"]["fp32"]["passed"] and info["file"] == "model.onnx"
    # --min-agreement: the INT8 check's bar, recorded with what it measured
    out = tmp_path / "q"
    assert (
        main(["export", "--model", str(tiny_model_dir), "-o", str(out), "--int8", "--min-agreement", "0.5", "--json"])
        == 0
    )
    q = json.loads(capsys.readouterr().out)["parity"]["int8"]
    assert q["min_agreement"] == 0.5 and q["passed"] is (q["label_agreement"] >= 0.5)


def test_options_an_export_would_not_read_are_refused(tiny_model_dir, tmp_path):
    """Through the API they were accepted and ignored (the CLI refused some): a calibration file
    that does not exist with nothing to read it, calibration settings without static, per-channel
    scales without INT8, an encoding without a data file."""
    from fastft.export import export

    out = tmp_path / "o"
    for kwargs, message in (
        ({"int8": True, "validate": False, "calib_data": "nope.jsonl"}, "calib_data .* validate=False"),
        ({"calib_data": "nope.jsonl"}, "calib_data .* no INT8 model is written"),
        ({"int8": True, "calib_size": 5}, "calib_size \\(--calib-size\\) sets static calibration"),
        ({"int8": True, "calib_method": "entropy"}, "calib_method"),
        # an unknown method without static: what is wrong first is that nothing reads it
        ({"int8": True, "calib_method": "bogus"}, "calib_method \\(--calib-method\\) sets static calibration"),
        ({"per_channel": True}, "per_channel \\(--per-channel\\) is for the INT8 model"),
        ({"int8": True, "validate": False, "encoding": "latin-1"}, "encoding \\(--encoding\\) reads the INT8 check"),
        ({"int8": True, "text_column": "t"}, "text_column \\(--text-column\\) is read with calib_data"),
        ({"min_agreement": 0.5}, "min_agreement \\(--min-agreement\\) is for the INT8 model"),
        ({"fallback": False}, "fallback"),
    ):
        with pytest.raises(FastftError, match=message):
            export(tiny_model_dir, out, progress=False, **kwargs)
        assert not out.exists()
