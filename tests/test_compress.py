"""fastft compress on tiny random BERTs: each stage, the pipeline, the report, bad inputs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import make_rows, save_tiny_model, write_jsonl

from fastft.compress import CompressConfig
from fastft.core.errors import FastftError, ModelError

FAST = dict(epochs=1, batch_size=16, bench_runs=2, progress=False, recovery_epochs=1, prune_batches=2)
# what each one-stage function reads of those (it refuses the others: another stage's settings)
FAST_STAGE = {
    "distill": dict(epochs=1, batch_size=16, progress=False),
    "prune": dict(batch_size=16, progress=False, recovery_epochs=1, prune_batches=2),
    "quantize": dict(progress=False),
}


@pytest.fixture(scope="module")
def teacher4(tmp_path_factory, tiny_data_file):
    """A tiny 4-layer teacher (4 heads, FFN 64) on the tiny data file."""
    return save_tiny_model(tmp_path_factory.mktemp("compress") / "teacher4", tiny_data_file, layers=4, seed=1)


@pytest.fixture(scope="module")
def ctx(teacher4):
    from fastft.compress.context import prepare

    return prepare(str(teacher4), CompressConfig(**FAST))


# -- distillation --------------------------------------------------------------------------------
def test_layer_plan():
    from fastft.compress.distill import layer_plan

    assert layer_plan(6, 3) == ([0, 2, 4], [2, 4, 6])  # DistilBERT: every other layer
    assert layer_plan(6, 6) == ([0, 1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 6])
    assert layer_plan(6, 1) == ([0], [6])
    with pytest.raises(FastftError, match="--layers"):
        layer_plan(6, 7)


def test_distill_student_layers_and_loss_decreases(ctx):
    from fastft.compress.distill import cache_teacher, make_student, train_student

    student, match = make_student(ctx.teacher, "teacher-layers", 2, ctx.labels)
    assert student.config.num_hidden_layers == 2 and match == [2, 4]
    # the student starts as a copy of teacher layers 0 and 2
    t_sd, s_sd = ctx.teacher.state_dict(), student.state_dict()
    key = "bert.encoder.layer.{}.attention.self.query.weight"
    assert np.allclose(s_sd[key.format(1)].numpy(), t_sd[key.format(2)].numpy())
    cache = cache_teacher(ctx.teacher, ctx.ids["train"], ctx.pad_id, match, progress=False)
    assert cache.hidden.shape == (sum(len(x) for x in ctx.ids["train"]), 2, 32)
    res = train_student(
        student,
        cache,
        ctx.ids["train"][:32],
        ctx.y["train"][:32],
        pad_id=ctx.pad_id,
        epochs=4,
        lr=3e-3,
        batch_size=8,
        temperature=2.0,
        alpha=0.5,
        hidden_weight=1.0,
        progress=False,
    )
    losses = [h["loss"] for h in res["history"]]
    assert losses[-1] < res["history"][0]["first_loss"], losses


def test_distill_api_saves_student(teacher4, tmp_path):
    import fastft

    res = fastft.distill(
        str(teacher4),
        CompressConfig(layers=2, dropout=0.0, ema=0.9, **FAST_STAGE["distill"]),
        output=tmp_path / "student",
    )
    cfg = json.loads((tmp_path / "student" / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 2 and res.model.config.num_hidden_layers == 2
    # --dropout and --ema reached the student
    assert cfg["hidden_dropout_prob"] == cfg["attention_probs_dropout_prob"] == 0.0
    assert {m.p for m in res.model.modules() if type(m).__name__ == "Dropout"} == {0.0}
    assert res.info["ema"] == 0.9 and res.info["dropout_p"] == 0.0
    assert (tmp_path / "student" / "model.onnx").is_file()
    meta = json.loads((tmp_path / "student" / "fastft.json").read_text())
    assert meta["labels"] == ["negative", "positive"] and meta["compress"]["stage"] == "distilled"
    # prune that 2-layer student, recovering against the 4-layer teacher
    pruned = fastft.prune(
        str(tmp_path / "student"),
        CompressConfig(prune_ffn=0.5, prune_heads=0.5, **FAST_STAGE["prune"]),
        teacher=str(teacher4),
        output=tmp_path / "pruned",
    )
    assert pruned.model.config.intermediate_size == 32 and pruned.model.config.num_hidden_layers == 2
    saved = json.loads((tmp_path / "pruned" / "config.json").read_text())
    assert saved["intermediate_size"] == 32 and saved["pruned_heads"]
    # a head-pruned directory holding only its ONNX files: one line, not a bare FileNotFoundError
    onnx_only = tmp_path / "onnx-only"
    shutil.copytree(tmp_path / "pruned", onnx_only)
    (onnx_only / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="cannot load weights"):
        fastft.quantize(str(onnx_only), CompressConfig(**FAST_STAGE["quantize"]), output=tmp_path / "q")
    assert not (tmp_path / "q").exists()


def test_a_stage_refuses_settings_it_does_not_read(teacher4, tmp_path, no_training):
    """fastft.distill / prune / quantize accepted another stage's settings (or benchmarking's, or a
    static calibration setting for dynamic INT8) and ignored them; model=None started the default
    teacher's 6-minute training."""
    import fastft
    from fastft.compress.config import DistillConfig, PruneConfig, QuantizeConfig

    out = str(tmp_path / "o")
    for call, message in (
        (
            lambda: fastft.distill(str(teacher4), PruneConfig(prune_ffn=0.9)),
            "prune.prune_ffn is not used by fastft.distill",
        ),
        (lambda: fastft.distill(str(teacher4), quantize="fp16"), "quantize.mode is not used by fastft.distill"),
        (lambda: fastft.prune(str(teacher4), PruneConfig(prune_ffn=0.5), layers=2), "distill.layers is not used"),
        (lambda: fastft.quantize(str(teacher4), QuantizeConfig(mode="fp16", per_channel=True), output=out), "without"),
        (lambda: fastft.quantize(str(teacher4), DistillConfig(layers=1), output=out), "distill.layers is not used"),
        (
            lambda: fastft.quantize(str(teacher4), QuantizeConfig(calib_size=5), output=out),
            r"calibration is for static \(--static\)",
        ),
        (
            lambda: fastft.quantize(str(teacher4), QuantizeConfig(qat_epochs=2), output=out),
            "quantize.qat_epochs is not",
        ),
        (lambda: fastft.quantize(str(teacher4), bench_runs=3, output=out), "bench_runs is not used by fastft.quantize"),
        (lambda: fastft.quantize(str(teacher4), QuantizeConfig(mode=None), output=out), "mode=None quantizes nothing"),
        (lambda: fastft.distill(None, DistillConfig(layers=1)), "fastft.distill needs a model directory"),
        # counts past any plan: the run went on for ever, or filled memory
        (lambda: fastft.distill(str(teacher4), DistillConfig(augment=10**9)), "--augment"),
        (lambda: fastft.prune(str(teacher4), PruneConfig(prune_ffn=0.5, prune_steps=10**12)), "--prune-steps"),
    ):
        with pytest.raises(FastftError, match=message):
            call()
    assert not (tmp_path / "o").exists()


# -- pruning -------------------------------------------------------------------------------------
def _logits(net, ids):
    import torch

    with torch.no_grad():
        return net(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.numpy()


def _score_batches(ctx):
    import torch

    from fastft.compress.distill import pad_batch

    y = torch.tensor(ctx.y["train"])

    def loss_fn(model, rows):
        x, m = pad_batch([ctx.ids["train"][r] for r in rows], ctx.pad_id)
        return torch.nn.functional.cross_entropy(model(input_ids=x, attention_mask=m).logits, y[rows])

    return [list(range(i, i + 8)) for i in range(0, 24, 8)], loss_fn


def test_prune_ffn_shrinks_and_reloads_with_plain_transformers(ctx, tmp_path):
    import copy

    import torch
    from transformers import AutoModelForSequenceClassification

    from fastft.compress.prune import apply_structured, importance
    from fastft.compress.quantize import ort_logits, session, torch_export
    from fastft.models.pruned import count_params, flops

    net = copy.deepcopy(ctx.teacher)
    p0, f0 = count_params(net), flops(net)
    batches, loss_fn = _score_batches(ctx)
    scores = importance(net, batches, loss_fn)
    assert all(s.shape == (64,) and float(s.sum()) > 0 for s in scores["ffn"])
    apply_structured(net, scores, 0, 32)
    assert net.bert.encoder.layer[0].intermediate.dense.weight.shape == (32, 32)
    assert net.bert.encoder.layer[3].output.dense.weight.shape == (32, 32)
    assert count_params(net) < p0 and flops(net) < f0 and net.config.intermediate_size == 32
    net.save_pretrained(tmp_path / "p")
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path / "p").eval()
    ids = torch.tensor([[101, 2023, 2003, 1037, 2307, 102]])
    assert np.allclose(_logits(net.eval(), ids), _logits(again, ids), atol=1e-5)
    torch_export(again, tmp_path / "p.onnx")
    got = ort_logits(session(tmp_path / "p.onnx"), [ids[0].tolist()], 0)
    assert np.allclose(got, _logits(again, ids), atol=1e-4)


def test_prune_heads_shrinks_reloads_and_exports(ctx, tmp_path):
    import copy

    import torch

    from fastft.compress.prune import apply_structured, importance
    from fastft.compress.quantize import export_onnx, ort_logits, session, torch_export
    from fastft.models.pruned import describe, load_pruned

    net = copy.deepcopy(ctx.teacher)
    batches, loss_fn = _score_batches(ctx)
    scores = importance(net, batches, loss_fn)
    info = apply_structured(net, scores, 2, 16)
    assert describe(net)["heads"] == [2, 2, 2, 2] and describe(net)["intermediate"] == [48] * 4
    assert net.bert.encoder.layer[0].attention.self.query.weight.shape == (16, 32)
    assert net.bert.encoder.layer[0].attention.output.dense.weight.shape == (32, 16)
    assert sorted(net.config.pruned_heads) == ["0", "1", "2", "3"] and len(info["pruned_heads"]["0"]) == 2
    net.save_pretrained(tmp_path / "h")
    again = load_pruned(tmp_path / "h")
    ids = torch.tensor([[101, 2023, 2003, 1037, 2307, 102]])
    assert np.allclose(_logits(net.eval(), ids), _logits(again, ids), atol=1e-5)
    # the rest of fastft (eval, torch backends) loads a head-pruned directory too
    from fastft.models import load_classifier

    assert np.allclose(_logits(load_classifier(tmp_path / "h").eval(), ids), _logits(again, ids), atol=1e-5)
    torch_export(again, tmp_path / "h.onnx")
    assert np.allclose(ort_logits(session(tmp_path / "h.onnx"), [ids[0].tolist()], 0), _logits(again, ids), atol=1e-4)
    # the served path: fastft.export's exporter + ORT fusions at the pruned attention width
    info = export_onnx(again, tmp_path / "hf.onnx")
    if isinstance(info.get("fusions"), dict):
        assert info["fusions"]["num_heads"] == 2 and "Attention" in info["fusions"]["fused"]
    assert np.allclose(ort_logits(session(tmp_path / "hf.onnx"), [ids[0].tolist()], 0), _logits(again, ids), atol=1e-4)


@pytest.mark.parametrize("allocation", ["layer", "global"])
def test_pruning_removes_the_least_important_and_equals_zeroing_them(ctx, allocation):
    """Which heads and neurons go is the least important ones (per layer, or across layers each
    keeping one head), and the pruned model computes what the unpruned one does with those heads'
    values and those neurons' inputs zeroed (their outputs then add nothing): the right rows and
    columns were cut, not just the right number of them."""
    import copy

    import torch

    from fastft.compress.prune import apply_structured
    from fastft.models.pruned import encoder_layers, heads_of

    net = copy.deepcopy(ctx.teacher).eval()
    layers = encoder_layers(net)
    n_heads, n_ffn = heads_of(layers[0]), layers[0].intermediate.dense.out_features
    g = torch.Generator().manual_seed(3)
    scores = {
        "heads": [torch.randperm(n_heads, generator=g).float() + 10 * i for i in range(len(layers))],
        "ffn": [torch.randperm(n_ffn, generator=g).float() for _ in layers],
    }
    k_heads, k_ffn = 2, 16
    if allocation == "layer":
        gone = [sorted(torch.argsort(s)[:k_heads].tolist()) for s in scores["heads"]]
    else:  # the 8 lowest over all layers, each layer keeping one: layer 0's three, layer 1's three, two of layer 2
        gone = [sorted(torch.argsort(s)[:n].tolist()) for s, n in zip(scores["heads"], (3, 3, 2, 0))]
    keep = [sorted(torch.argsort(s, descending=True)[: n_ffn - k_ffn].tolist()) for s in scores["ffn"]]
    ref = copy.deepcopy(net)
    d = layers[0].attention.self.attention_head_size
    with torch.no_grad():
        for i, layer in enumerate(encoder_layers(ref)):
            for h in gone[i]:
                layer.attention.self.value.weight[h * d : (h + 1) * d] = 0
                layer.attention.self.value.bias[h * d : (h + 1) * d] = 0
            drop = [j for j in range(n_ffn) if j not in keep[i]]
            layer.intermediate.dense.weight[drop] = 0
            layer.intermediate.dense.bias[drop] = 0
    before = [x.intermediate.dense.weight.detach().clone() for x in layers]
    info = apply_structured(net, scores, k_heads, k_ffn, global_heads=allocation == "global")
    assert info["pruned_heads"] == {str(i): h for i, h in enumerate(gone)}
    for i, layer in enumerate(encoder_layers(net)):
        assert torch.equal(layer.intermediate.dense.weight, before[i][keep[i]])
    ids = torch.tensor([[101, 2023, 2003, 1037, 2307, 102], [101, 2307, 102, 0, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        got, want = net(input_ids=ids, attention_mask=mask).logits, ref(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


def test_magnitude_pruning_reports_sparsity(ctx):
    import copy

    from fastft.compress.prune import magnitude_prune

    info = magnitude_prune(copy.deepcopy(ctx.teacher), 0.5)
    assert 0.49 < info["measured_sparsity"] < 0.51 and "no speed-up" in info["note"]


# -- quantization --------------------------------------------------------------------------------
@pytest.mark.parametrize("static", [False, True])
def test_quantize_api_writes_int8(teacher4, tmp_path, static):
    import fastft

    cfg = CompressConfig(static=static, **({"calib_size": 16} if static else {}), **FAST_STAGE["quantize"])
    res = fastft.quantize(str(teacher4), cfg, output=tmp_path / "q")
    assert (tmp_path / "q" / "model_int8.onnx").is_file() and (tmp_path / "q" / "model.onnx").is_file()
    assert res.info["mode"] == ("static" if static else "dynamic")
    pred = fastft.load(tmp_path / "q")
    assert pred.onnx_file.name == "model_int8.onnx"
    assert len(pred.predict(["a fine film"])) == 1


def test_do_quantize_returns_a_typed_result(ctx, tmp_path):
    from fastft.compress.quantize import export_onnx
    from fastft.compress.stages import QuantizeResult, do_quantize

    export_onnx(ctx.teacher, tmp_path / "model.onnx")
    q = do_quantize(ctx, tmp_path / "model.onnx", tmp_path)
    assert isinstance(q, QuantizeResult) and q.mode == "int8" and q.path == tmp_path / "model_int8.onnx"
    assert q.path.is_file() and q.info["file"] == q.path.name and q.excluded_nodes == q.info["excluded_nodes"]


def test_accuracy_aware_int8_records_excluded_nodes(ctx, tmp_path):
    from fastft.compress.quantize import accuracy_aware_int8, quantizable_nodes, torch_export

    torch_export(ctx.teacher, tmp_path / "m.onnx")
    nodes = quantizable_nodes(tmp_path / "m.onnx")
    assert any("query" in n for n in nodes)
    # a negative budget can never be met: every round keeps more nodes fp32, all recorded
    info = accuracy_aware_int8(
        tmp_path / "m.onnx",
        tmp_path / "m_int8.onnx",
        val_ids=ctx.ids["validation"],
        val_labels=ctx.y["validation"],
        pad_id=ctx.pad_id,
        budget=-1.0,
        progress=False,
    )
    assert info["excluded_nodes"] and set(info["excluded_nodes"]) <= set(nodes)
    assert set(info["sensitivity"]) == set(nodes) and len(info["rounds"]) >= 2
    assert info["within_budget"] is False and (tmp_path / "m_int8.onnx").is_file()


def test_fp16_conversion_runs_on_cpu(ctx, tmp_path):
    from fastft.compress.quantize import ort_logits, quantize_fp16, session, torch_export

    torch_export(ctx.teacher, tmp_path / "m.onnx")
    quantize_fp16(tmp_path / "m.onnx", tmp_path / "m16.onnx")
    a = ort_logits(session(tmp_path / "m.onnx"), ctx.ids["test"], ctx.pad_id)
    b = ort_logits(session(tmp_path / "m16.onnx"), ctx.ids["test"], ctx.pad_id)
    # fp16 inside, the graph's inputs and outputs kept as they were (int64 ids, fp32 logits)
    import onnx

    g16, g32 = onnx.load(str(tmp_path / "m16.onnx")).graph, onnx.load(str(tmp_path / "m.onnx")).graph
    io = [x.type.tensor_type.elem_type for x in (*g16.input, *g16.output)]
    assert io == [x.type.tensor_type.elem_type for x in (*g32.input, *g32.output)]
    assert g16.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in g16.initializer)
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.8 and np.abs(a - b).max() < 0.05


# -- the pipeline and its report -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def compressed(teacher4, tmp_path_factory):
    import fastft

    out = tmp_path_factory.mktemp("out") / "small"
    report = fastft.compress(
        str(teacher4),
        CompressConfig(layers=2, prune_heads=0.25, prune_ffn=0.5, quantize="int8", output=str(out), **FAST),
    )
    return out, report


def test_compress_report_files_and_fields(compressed):
    out, report = compressed
    for f in ("report.json", "report.md", "model.onnx", "model_int8.onnx", "config.json", "fastft.json"):
        assert (out / f).is_file(), f
    rep = json.loads((out / "report.json").read_text())
    assert [r["stage"] for r in rep["stages"]] == ["teacher", "distilled", "pruned", "quantized"]
    for r in rep["stages"]:
        for k in ("parameters", "file_mb", "gflops_128", "p50_ms_128", "accuracy", "retained"):
            assert r[k] is not None, (r["stage"], k)
    params = [r["parameters"] for r in rep["stages"]]
    assert params[0] > params[1] > params[2]
    assert rep["stages"][3]["file_mb"] < rep["stages"][2]["file_mb"]
    assert rep["stages"][0]["retained"] == 1.0 and "message" in rep["verdict"]
    md = (out / "report.md").read_text()
    assert "| teacher |" in md and "| quantized |" in md
    # scored as served, like the latency: the students on fastft's attention in ORT where it is built
    # (and where transformers lets the export write fastft's attention node: 5.x)
    from conftest import attention_dispatch

    from fastft.runtime.ort_attention import resolve

    acc = rep["accuracy_settings"]["attention"]
    assert set(acc) == {"teacher", "distilled", "pruned", "quantized"} and acc["teacher"] == "onnxruntime"
    ours = resolve("auto", "cpu") and attention_dispatch()[0]
    for stage in ("distilled", "pruned", "quantized"):
        assert acc[stage].startswith("fastft C++ kernel in ORT" if ours else "onnxruntime"), acc
    assert "Scores: each stage's ONNX file" in md
    meta = json.loads((out / "fastft.json").read_text())
    assert meta["onnx"]["default"] == "model_int8.onnx" and meta["labels"] == ["negative", "positive"]
    assert meta["compress"]["stages"][-1]["stage"] == "quantized"
    # a text classifier distilled with the fields left None: the default recipe (config.TEXT_RECIPE)
    cfg = rep["config"]
    assert (cfg["distill"]["augment"], cfg["prune"]["prune_steps"], cfg["prune"]["head_allocation"]) == (
        1,
        2,
        "global",
    )
    assert cfg["prune"]["prune_heads"] == 0.25  # set, so kept
    assert len(report["pruning"]["steps"]) == 2 and report["distillation"]["augment"]["copies"] > 0


def _bench_script(name: str):
    """A script of bench/ loaded as a module (bench/ is not a package)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_speedup_times_students_against_their_teacher(compressed, tmp_path, capsys):
    """bench/bench_speedup.py: the report's teacher and the served graph timed again, interleaved."""
    mod = _bench_script("bench_speedup")
    out, report = compressed
    result = tmp_path / "speedup.json"
    assert mod.main(["--models", str(out), "--names", "small", "--rounds", "2", "--result", str(result)]) == 0
    got = json.loads(result.read_text())
    rows = {(r["model"], r["seq"]): r for r in got["rows"]}
    assert set(rows) == {("teacher", 128), ("small", 128)}  # 512 is past the tiny teacher's positions
    assert rows[("teacher", 128)]["speedup_p50"] == 1.0 and rows[("small", 128)]["n"] == 2
    assert rows[("small", 128)]["retained"] == report["stages"][-1]["retained"]
    assert got["median_speedup_p50"]["128"] == rows[("small", 128)]["speedup_p50"] > 0
    assert got["models"]["small"]["file"].endswith("model_int8.onnx") and "machine" in got
    assert "median speed-up of the students" in capsys.readouterr().out
    from conftest import attention_dispatch

    # served: fastft's attention in ORT (transformers 4.x's export has no attention node to swap)
    assert (rows[("small", 128)]["attention_swapped"] > 0) == attention_dispatch()[0]
    # the same student on ORT's own attention, in the same run
    assert (
        mod.main(
            ["--models", str(out), "--names", "small", "--rounds", "2", "--result", str(result)]
            + ["--ort-attention-too"]
        )
        == 0
    )
    got = json.loads(result.read_text())
    rows = {(r["model"], r["seq"]): r for r in got["rows"]}
    plain = rows[("small (ORT attention)", 128)]
    assert (
        plain["attention_swapped"] == 0
        and plain["student"] == "small"
        and plain["retained"] == rows[("small", 128)]["retained"]
    )
    assert got["median_speedup_p50_ort_attention"]["128"] == plain["speedup_p50"]
    assert got["median_speedup_p50"]["128"] == rows[("small", 128)]["speedup_p50"]
    capsys.readouterr()
    with pytest.raises(FastftError, match="--names"):
        mod.main(["--models", str(out), "--names", "a", "b", "--rounds", "1"])
    with pytest.raises(FastftError, match="has no report.json"):
        mod.main(["--models", str(tmp_path)])
    # run as a script, bad input is one line and exit 2
    assert mod.script_main(lambda: mod.main(["--models", str(out), "--seqs", "128,x"])) == 2
    assert capsys.readouterr().err.strip() == "fastft: error: --seqs must be comma-separated integers (got '128,x')"


def test_bench_eval_batch_scores_served_models_by_batch_size(compressed, tmp_path):
    """bench/bench_eval_batch.py: the served test accuracy at each batch size, against the teacher."""
    mod = _bench_script("bench_eval_batch")
    out, report = compressed
    result = tmp_path / "batch.json"
    assert mod.main(["--models", str(out), "--names", "small", "--batch-sizes", "1,8", "--result", str(result)]) == 0
    got = json.loads(result.read_text())
    small = [r for r in got["rows"] if r["model"] == "small"]
    assert [r["batch_size"] for r in small] == [1, 8] and all(r["file"] == "model_int8.onnx" for r in small)
    teacher = {r["batch_size"]: r["accuracy"] for r in got["rows"] if r["model"] == "teacher"}
    assert all(r["retained"] == round(r["accuracy"] / teacher[r["batch_size"]], 4) for r in small)
    assert got["median_retained"]["1"] == small[0]["retained"]
    with pytest.raises(FastftError, match="--batch-sizes"):
        mod.main(["--models", str(out), "--batch-sizes", "0"])


def test_bench_shapes_times_pruned_shapes_against_the_teacher(tiny_model_dir, tmp_path, capsys):
    """bench/bench_shapes.py: untrained students of each LAYERS:HEADS:FFN shape, INT8, timed with the teacher."""
    mod = _bench_script("bench_shapes")
    result = tmp_path / "shapes.json"
    argv = ["--teacher", str(tiny_model_dir), "--shapes", "2:0.5:0.5,1:0.75:0.25", "--rounds", "2", "--seqs", "32"]
    assert mod.main([*argv, "--result", str(result)]) == 0
    got = json.loads(result.read_text())
    a, b = got["shapes"]["L2-h0.5-f0.5"], got["shapes"]["L1-h0.75-f0.25"]
    # the tiny teacher: 4 heads and 64 FFN neurons a layer; 2 x 2 heads removed across the layers
    assert sum(a["heads"]) == 4 and a["intermediate"] == [32, 32] and a["int8"]["nodes_quantized"] > 0
    assert b["heads"] == [1] and b["intermediate"] == [48] and b["flops_512"] < a["flops_512"]
    rows = {(r["model"], r["seq"]): r for r in got["rows"]}
    assert set(rows) == {("teacher", 32), ("L2-h0.5-f0.5", 32), ("L1-h0.75-f0.25", 32)}
    assert rows[("teacher", 32)]["speedup_p50"] == 1.0 and rows[("L1-h0.75-f0.25", 32)]["heads_kept"] == 1
    assert got["settings"]["head_allocation"] == "global" and "machine" in got
    assert "L2-h0.5-f0.5 seq   32" in capsys.readouterr().out
    # seed 0 removes both heads of 2:0.25:0 from one layer across layers, one per layer with "layer"
    for allocation, want in (("global", [2, 4]), ("layer", [3, 3])):
        out = tmp_path / f"{allocation}.json"
        assert mod.main([*argv[:3], "2:0.25:0", "--rounds", "1", "--seqs", "32", "--head-allocation", allocation,
                         "--result", str(out)]) == 0  # fmt: skip
        assert json.loads(out.read_text())["shapes"]["L2-h0.25-f0"]["heads"] == want
    bad_shapes = (
        ("2:0.5", "is not LAYERS:HEADS:FFN"),
        ("2:0.5:0.5,2:.5:.5", "given twice"),
        ("9:0.5:0.5", "the teacher has 2"),
        ("1:0.5:0.5,2:1:0", "--prune-heads"),
    )
    for bad, msg in bad_shapes:
        with pytest.raises(FastftError, match=msg):
            mod.main(["--teacher", str(tiny_model_dir), "--shapes", bad, "--rounds", "1", "--seqs", "32"])
    with pytest.raises(FastftError, match="128 positions"):
        mod.main([*argv[:4], "--seqs", "512"])
    # run as a script, bad input is one line and exit 2
    capsys.readouterr()
    assert mod.script_main(lambda: mod.main(["--teacher", str(tiny_model_dir), "--shapes", "x"])) == 2
    assert capsys.readouterr().err.strip() == "fastft: error: --shapes: 'x' is not LAYERS:HEADS:FFN (e.g. 3:0.5:0.5)"


def test_compressed_dir_serves(compressed):
    import fastft

    out, _ = compressed
    pred = fastft.load(out)
    assert pred.onnx_file.name == "model_int8.onnx"
    assert pred.predict(["a wonderful film", "a dull mess"])[0][0] in ("negative", "positive")


@pytest.mark.parametrize(
    "kw, text, want",
    [
        # (augment, prune_heads, prune_steps, head_allocation, recovery_epochs, last_recovery_epochs)
        ({}, True, (1, 0.5, 2, "global", 1, 2)),  # the default recipe: a text classifier distilled
        ({}, False, (0, 0.0, 1, "layer", 1, 1)),  # token tagging: no augmentation, every head kept
        (dict(distill=False), True, (0, 0.0, 1, "layer", 1, 1)),  # the teacher itself pruned
        (dict(prune_first=True), True, (0, 0.0, 1, "layer", 1, 1)),
        (dict(prune_heads=0.25), True, (1, 0.25, 2, "global", 1, 2)),  # set fields stay
        (dict(prune_heads=0.0), True, (1, 0.0, 2, "layer", 1, 2)),  # FFN still pruned in two steps
        (dict(prune_heads=0.0, prune_ffn=0.0), True, (1, 0.0, 1, "layer", 1, 2)),
        (dict(augment=0, prune_steps=1, head_allocation="layer"), True, (0, 0.5, 1, "layer", 1, 2)),
        # --recovery-epochs given: every step, the last included, unless --last-recovery-epochs is too
        (dict(recovery_epochs=1), True, (1, 0.5, 2, "global", 1, 1)),
        (dict(recovery_epochs=0), True, (1, 0.5, 2, "global", 0, 0)),
        (dict(recovery_epochs=0.5), False, (0, 0.0, 1, "layer", 0.5, 0.5)),
        (dict(last_recovery_epochs=3), False, (0, 0.0, 1, "layer", 1, 3)),
        (dict(recovery_epochs=2, last_recovery_epochs=1), True, (1, 0.5, 2, "global", 2, 1)),
    ],
)
def test_defaults_resolve_by_task(kw, text, want):
    names = ("augment", "prune_heads", "prune_steps", "head_allocation", "recovery_epochs", "last_recovery_epochs")

    def values(c):
        return tuple(getattr(c.distill if n == "augment" else c.prune, n) for n in names)

    cfg = CompressConfig(**kw)
    assert values(cfg) == tuple(kw.get(n) for n in names)  # unset fields stay None until resolved
    r = cfg.resolved(text=text)
    r.validate()
    assert values(r) == want


@pytest.mark.parametrize(
    "kw, text, want",
    [
        ({}, True, 0.8),  # the text recipe weighs the teacher's soft targets more
        ({}, False, 0.5),  # a token-classification teacher
        (dict(prune_first=True, prune_heads=0.5), True, 0.5),  # not the recipe
        (dict(alpha=0.3), True, 0.3),  # given: kept
        (dict(alpha=0.0), False, 0.0),
    ],
)
def test_alpha_resolves_by_task(kw, text, want):
    cfg = CompressConfig(**kw)
    assert cfg.distill.alpha == kw.get("alpha")
    r = cfg.resolved(text=text)
    r.validate()
    assert r.distill.alpha == want


@pytest.mark.parametrize(
    "kw, text, want",
    [
        ({}, True, 2 / 3),  # the text recipe: 4 of a 6-layer teacher's layers
        ({}, False, 0.5),  # a token-classification teacher
        (dict(prune_first=True, prune_heads=0.5), True, 0.5),  # not the recipe
        (dict(depth=0.25), True, 0.25),  # given: kept
        (dict(student="minilm-l3"), True, None),  # not teacher-layers: no depth
    ],
)
def test_depth_resolves_by_task(kw, text, want):
    cfg = CompressConfig(**kw)
    r = cfg.resolved(text=text)
    r.validate()
    assert r.distill.depth == want


def test_zero_distillation_epochs_are_refused():
    """--epochs 0 with distillation on would make an untrained student: refused, naming the flag."""
    CompressConfig(epochs=0, distill=False).validate()
    with pytest.raises(FastftError, match=r"epochs \(--epochs\) must be positive \(got 0\)"):
        CompressConfig(epochs=0).validate()


def test_qat_epochs_may_reach_into_a_partial_last_epoch():
    """A fractional last recovery run (1.5 epochs) makes 2 passes: --qat-epochs 2 fits, 3 does not."""
    config = CompressConfig(quantize="int8", prune_ffn=0.5, last_recovery_epochs=1.5, recovery_epochs=1)
    config.updated(qat_epochs=2).validate()
    with pytest.raises(
        FastftError, match=r"qat_epochs \(--qat-epochs\) 3 is more than the 1.5 epoch\(s\) of the run it joins"
    ):
        config.updated(qat_epochs=3).validate()


def test_target_retained_above_one_is_a_valid_bar():
    """A student may be asked to beat its teacher (--target-retained up to 1.5); above that is refused."""
    CompressConfig(target_retained=1.2).validate()
    with pytest.raises(FastftError, match=r"target_retained \(--target-retained\) must be a fraction"):
        CompressConfig(target_retained=1.6).validate()


def test_prune_steps_given_without_pruning_is_unused():
    """--prune-steps 1 with --prune-heads 0 --prune-ffn 0 is named as unused, not silently recorded."""
    with pytest.raises(FastftError, match=r"prune_steps \(--prune-steps\) is not used by this run"):
        CompressConfig(prune_heads=0.0, prune_ffn=0.0, prune_steps=1).check_unused()


def test_student_depth_from_layers_or_fraction():
    import transformers as tf
    from conftest import tiny_bert_config

    from fastft.compress.distill import make_student

    teacher = tf.BertForSequenceClassification(tiny_bert_config(["a", "b"], layers=6)).eval()

    def depth(**kw):
        net, match = make_student(teacher, "teacher-layers", kw.pop("layers", None), ["a", "b"], **kw)
        return net.config.num_hidden_layers

    assert depth() == 3 and depth(depth=0.5) == 3  # half by default
    assert depth(depth=2 / 3) == 4 and depth(depth=1.0) == 6 and depth(depth=0.01) == 1
    assert depth(layers=2, depth=2 / 3) == 2  # --layers wins
    with pytest.raises(FastftError, match="depth \\(--depth\\) must be in"):
        CompressConfig(depth=0.0).validate()
    with pytest.raises(FastftError, match=r"depth \(--depth\) applies to student='teacher-layers' .* only"):
        CompressConfig(depth=0.5, student="minilm-l3").validate()


def test_verdict_names_nearest_stage():
    from fastft.compress.report import verdict

    rows = [
        {"stage": "teacher", "retained": 1.0, "p50_ms_512": 100},
        {"stage": "distilled", "retained": 0.995, "p50_ms_512": 50},
        {"stage": "pruned", "retained": 0.992, "p50_ms_512": 40},
        {"stage": "quantized", "retained": 0.97, "p50_ms_512": 20},
    ]
    v = verdict(rows, 0.99)
    assert not v["met"] and v["nearest_stage_meeting_target"] == "pruned" and "below the target" in v["message"]
    assert verdict(rows, 0.95)["met"]


# -- bad input: one clear error, before any training ----------------------------------------------------
@pytest.fixture
def no_training(monkeypatch):
    import importlib

    d = importlib.import_module("fastft.compress.distill")  # the package's `distill` attribute is the function

    def boom(*a, **k):
        raise AssertionError("training started before the input was checked")

    monkeypatch.setattr(d, "train_student", boom)
    monkeypatch.setattr(d, "cache_teacher", boom)


def test_base_model_without_head_is_refused(tmp_path, no_training):
    from transformers import BertConfig, BertModel

    import fastft

    BertModel(
        BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, vocab_size=30522)
    ).save_pretrained(tmp_path / "base")
    with pytest.raises(FastftError, match="no sequence-classification head"):
        fastft.compress(str(tmp_path / "base"), CompressConfig(output=str(tmp_path / "o"), **FAST))


def test_data_with_other_labels_is_refused(teacher4, tmp_path, no_training):
    import fastft

    rows = [{"text": f"text {i}", "label": "spam" if i % 2 else "ham"} for i in range(40)]
    data = write_jsonl(tmp_path / "spam.jsonl", rows)
    with pytest.raises(FastftError, match="differ from the teacher"):
        fastft.compress(str(teacher4), CompressConfig(data=str(data), output=str(tmp_path / "o"), **FAST))


def test_data_lacking_a_label_of_the_teacher_is_matched_by_name(tmp_path, tiny_data_file, no_training):
    """Data of two of a 3-label teacher's labels was refused as "other labels": each row's label is
    matched by name (the teacher's ids), with a warning naming the label no row has."""
    from fastft.compress.context import prepare

    teacher = save_tiny_model(tmp_path / "t3", tiny_data_file, labels=("positive", "neutral", "negative"))
    with pytest.warns(UserWarning, match="has no row of 'neutral', which the teacher knows"):
        ctx = prepare(str(teacher), CompressConfig(data=str(tiny_data_file), **FAST))
    rows = [json.loads(line) for line in tiny_data_file.read_text().splitlines()]
    named = {r["text"]: r["label"] for r in rows}
    assert ctx.labels == ["positive", "neutral", "negative"] and set(ctx.y["test"]) == {0, 2}
    assert [ctx.labels[i] for i in ctx.y["test"]] == [named[t] for t in ctx.texts["test"]]


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(layers=5), "--layers"),
        (dict(layers=0), "--layers"),
        (dict(prune_heads=1.0), "--prune-heads"),
        (dict(prune_ffn=-0.1), "--prune-ffn"),
        (dict(last_recovery_epochs=-1), "last_recovery_epochs \\(--last-recovery-epochs\\) must be in \\[0, 10000\\]"),
        (dict(last_recovery_epochs="two"), "last_recovery_epochs \\(--last-recovery-epochs\\) must be a number"),
        (dict(prune_heads=0.9), "would remove all"),
        (dict(quantize="int4"), "quantize"),
        (dict(static=True, quantize=None), "--static"),
        (dict(qat_epochs=0, quantize="int8"), "--qat-epochs"),
        (dict(qat_epochs=2, qat=False, quantize="int8"), "qat_epochs \\(--qat-epochs\\) sets quantization-aware"),
        (dict(qat_epochs=2, quantize="fp16"), "qat_epochs \\(--qat-epochs\\) sets quantization-aware training"),
        (dict(qat_consistency=-0.5, quantize="int8"), "qat_consistency \\(--qat-consistency\\) must be >= 0"),
        (dict(qat_consistency=1.0, qat=False, quantize="int8"), "qat_consistency \\(--qat-consistency\\) weighs"),
    ],
)
def test_bad_options_are_refused(teacher4, tmp_path, no_training, kw, match):
    import fastft

    with pytest.raises(FastftError, match=match):
        fastft.compress(str(teacher4), CompressConfig(output=str(tmp_path / "o"), **{**FAST, **kw}))
    assert not (tmp_path / "o").exists()


def test_cli_int8_with_fp16_is_one_line(teacher4, tmp_path, capsys, no_training):
    from fastft.cli import main

    rc = main(["compress", "--model", str(teacher4), "--int8", "--fp16", "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "--int8 and --fp16" in err


def test_cli_help_lists_options(capsys):
    from fastft.cli import main

    with pytest.raises(SystemExit):
        main(["compress", "--help"])
    out = capsys.readouterr().out
    for opt in (
        "--int8",
        "--fp16",
        "--static",
        "--layers",
        "--student",
        "--prune-heads",
        "--prune-ffn",
        "--target-retained",
        "--epochs",
        "--seed",
        "--overwrite",
        "--json",
    ):
        assert opt in out


def test_prune_first_prunes_the_student_before_distillation(teacher4, tmp_path):
    """--prune-first: the student is pruned before its distillation epochs (QAT in the last one),
    no separate pruned stage or recovery; the report says what was removed."""
    import fastft

    out = tmp_path / "pf"
    report = fastft.compress(
        str(teacher4),
        CompressConfig(
            layers=2,
            prune_heads=0.5,
            prune_ffn=0.5,
            prune_first=True,
            quantize="int8",
            output=str(out),
            **{k: v for k, v in FAST.items() if k != "recovery_epochs"},  # no recovery runs: refused if given
        ),
    )
    assert [r["stage"] for r in report["stages"]] == ["teacher", "distilled", "quantized"]
    first = report["distillation"]["pruned_first"]
    assert first["after_structured"]["heads"] == [2, 2] and first["after_structured"]["intermediate"] == [32, 32]
    assert report["pruning"] is None
    # no recovery run follows, so distillation's last epoch is the quantization-aware one
    dist = report["distillation"]
    assert dist["qat"]["epochs"] == 1 and [bool(e.get("qat")) for e in dist["history"]] == [True]
    assert report["stages"][1]["parameters"] < report["stages"][0]["parameters"]
    assert (out / "model_int8.onnx").is_file()
    from fastft.models.pruned import describe, load_pruned

    assert describe(load_pruned(out))["heads"] == [2, 2]


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(prune_first=True, distill=False), "needs distillation"),
        (dict(prune_first=True, prune_ffn=0.0, prune_heads=0.0), "\\(--prune-heads\\) or prune_ffn \\(--prune-ffn\\)"),
        (dict(prune_steps=2, prune_first=True), "not with prune_first \\(--prune-first\\)"),
        (dict(prune_steps=2, prune_ffn=0.0, prune_heads=0.0), "prune_steps \\(--prune-steps\\) needs"),
        (dict(prune_steps=0), "--prune-steps"),
        (dict(head_allocation="global", prune_heads=0.0), "allocation\\) global needs prune_heads \\(--prune-heads\\)"),
        (dict(head_allocation="all", prune_heads=0.5), "head_allocation \\(--head-allocation\\) must be one of"),
    ],
)
def test_prune_order_options_are_refused(teacher4, tmp_path, no_training, kw, match):
    import fastft

    with pytest.raises(FastftError, match=match):
        fastft.compress(str(teacher4), CompressConfig(output=str(tmp_path / "o"), **{**FAST, **kw}))
    assert not (tmp_path / "o").exists()


def test_prune_steps_prune_in_steps_with_recovery_between(teacher4, tmp_path):
    """--prune-steps 2: half of the heads and neurons go in each step, importance measured again,
    one recovery epoch after the first and --last-recovery-epochs 2 after the last (QAT in its last
    epoch only); the directory reloads with the heads recorded in the original numbering."""
    import fastft
    from fastft.models.pruned import describe, load_pruned

    out = tmp_path / "steps"
    report = fastft.compress(
        str(teacher4),
        CompressConfig(
            layers=2,
            prune_heads=0.5,
            prune_ffn=0.5,
            head_allocation="layer",  # the same count in every layer: what the shapes below check
            prune_steps=2,
            last_recovery_epochs=2,
            quantize="int8",
            output=str(out),
            **FAST,
        ),
    )
    assert [r["stage"] for r in report["stages"]] == ["teacher", "distilled", "pruned", "quantized"]
    pr = report["pruning"]
    assert len(pr["steps"]) == 2 and all("recovery" in s for s in pr["steps"])
    epochs = [[bool(e.get("qat")) for e in s["recovery"]["history"]] for s in pr["steps"]]
    assert epochs == [[False], [False, True]]
    assert [s["heads_removed_per_layer"] for s in pr["steps"]] == [1, 1]
    assert [s["ffn_removed_per_layer"] for s in pr["steps"]] == [16, 16]
    assert pr["after_structured"]["heads"] == [2, 2] and pr["after_structured"]["intermediate"] == [32, 32]
    assert pr["heads_removed_per_layer"] == 2 and all(len(v) == 2 for v in pr["pruned_heads"].values())
    again = load_pruned(out)
    assert describe(again)["heads"] == [2, 2]
    # (transformers 4.x's config turns pruned_heads' keys into ints, 5.x keeps them as fastft.json has them)
    assert {str(k): sorted(v) for k, v in again.config.pruned_heads.items()} == {
        k: sorted(v) for k, v in pr["pruned_heads"].items()
    }


def test_global_head_choice_ranks_across_layers_and_keeps_one_head_per_layer():
    import torch

    from fastft.compress.prune import global_head_choice

    scores = [
        torch.tensor([0.1, 0.9, 0.2, 0.8]),
        torch.tensor([0.5, 0.6, 0.7, 0.4]),
        torch.tensor([0.05, 0.01, 0.3, 0.02]),
    ]
    # the 6 lowest overall: 0.01, 0.02, 0.05 (layer 2: it keeps one head), 0.1, 0.2 (layer 0), 0.4 (layer 1)
    assert global_head_choice(scores, 6) == [[0, 2], [3], [0, 1, 3]]
    assert global_head_choice(scores, 0) == [[], [], []]
    # layer 2 keeps its best head (0.3) and layer 1 its best (0.7) though 0.8 (layer 0) goes
    assert global_head_choice(scores, 9) == [[0, 2, 3], [0, 1, 3], [0, 1, 3]]
    with pytest.raises(FastftError, match="at least one head"):
        global_head_choice(scores, 10)


@pytest.mark.attention_interface
def test_uneven_heads_export_with_one_attention_node_per_layer(ctx, tmp_path):
    """Layers keeping different numbers of heads: the fp32 graph gets fastft's attention node in
    every layer (ORT's fusion takes one head count), matches torch at several shapes and masks,
    and quantises to INT8; the directory reloads."""
    import copy

    import onnx
    import torch

    from fastft.compress.quantize import export_onnx, quantize_int8, session
    from fastft.models.pruned import describe, load_pruned, prune_layer_heads

    net = copy.deepcopy(ctx.teacher).eval()
    for i, heads in enumerate([[0], [1, 2], [], [0, 1, 3]]):
        prune_layer_heads(net.bert.encoder.layer[i], heads)
    net.config.pruned_heads = {"0": [0], "1": [1, 2], "3": [0, 1, 3]}
    assert describe(net)["heads"] == [3, 2, 4, 1]
    net.save_pretrained(tmp_path / "u")
    again = load_pruned(tmp_path / "u")
    assert describe(again)["heads"] == [3, 2, 4, 1]
    info = export_onnx(again, tmp_path / "u.onnx")
    assert info["export"]["attention"]["nodes"] == 4, info["export"]
    graph = onnx.load(str(tmp_path / "u.onnx"))
    ops = [n.op_type for n in graph.graph.node]
    assert ops.count("Attention") == 4 and "Softmax" not in ops
    assert isinstance(info["fusions"], dict)  # the rest of the graph still fused by ORT
    sess = session(tmp_path / "u.onnx")
    gen = torch.Generator().manual_seed(0)
    for batch, seq in ((1, 5), (3, 17), (2, 40)):
        ids = torch.randint(1000, 2000, (batch, seq), generator=gen)
        mask = torch.ones_like(ids)
        mask[0, seq // 2 :] = 0  # padding in the first row
        with torch.no_grad():
            want = again(input_ids=ids, attention_mask=mask).logits.numpy()
        feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": np.zeros_like(ids.numpy())}
        got = sess.run(None, {i.name: feed[i.name] for i in sess.get_inputs()})[0]
        assert np.allclose(got, want, atol=1e-4), (batch, seq, np.abs(got - want).max())
    q = quantize_int8(tmp_path / "u.fused.onnx", tmp_path / "u_int8.onnx")
    assert "QAttention" in [n.op_type for n in onnx.load(str(tmp_path / "u_int8.onnx")).graph.node], q


def test_global_head_allocation_in_the_pipeline(teacher4, tmp_path):
    """--head-allocation global: the same number of heads go in all, chosen across layers; the
    report says so, the directory reloads with its recorded heads and serves its INT8 graph."""
    import fastft
    from fastft.models.pruned import describe, load_pruned

    out = tmp_path / "global"
    report = fastft.compress(
        str(teacher4),
        CompressConfig(
            layers=3,
            prune_heads=0.5,
            prune_ffn=0.5,
            prune_steps=2,
            head_allocation="global",
            quantize="int8",
            output=str(out),
            **FAST,
        ),
    )
    pr = report["pruning"]
    assert all(s["head_allocation"] == "global" for s in pr["steps"])
    heads = pr["after_structured"]["heads"]
    assert sum(heads) == 3 * 2 and min(heads) >= 1
    again = load_pruned(out)
    assert describe(again)["heads"] == heads
    assert {str(k): sorted(v) for k, v in again.config.pruned_heads.items() if v} == {
        k: sorted(v) for k, v in pr["pruned_heads"].items() if v
    }
    assert fastft.load(out).predict(["a fine film", "dull"])


def test_fractions_are_checked_on_every_layer_and_stage_configs_are_validated(tiny_model_dir, tmp_path):
    """Pruning removes the same count from every layer, counted on the first: a model pruned
    before, with a smaller layer further on, had that layer emptied. prune() compared a string
    fraction with a number (a TypeError) and ignored CompressConfig(output=...)."""
    import fastft
    from fastft.compress.prune import check_fractions, encoder_layers, heads_of, prune_layer_heads
    from fastft.models import load_classifier

    net = load_classifier(tiny_model_dir)
    layers = encoder_layers(net)
    n = heads_of(layers[0])
    prune_layer_heads(layers[-1], list(range(n - 1)))  # the last layer keeps one head
    with pytest.raises(FastftError, match="a layer of this model has 1 left"):
        check_fractions(net, 0.5, 0.0)
    with pytest.raises(FastftError, match="prune_ffn \\(--prune-ffn\\) must be a number"):
        fastft.prune(str(tiny_model_dir), fastft.PruneConfig(prune_ffn="0.5"), output=str(tmp_path / "o"))
    with pytest.raises(FastftError, match="quantize: an output directory is required"):
        fastft.quantize(str(tiny_model_dir))
    assert not (tmp_path / "o").exists()


def test_a_teacher_or_student_that_cannot_work_is_refused_before_distilling(tmp_path, tiny_model_dir, tiny_data_file):
    """A teacher that scores 0 (retention undefined: a TypeError in the verdict after the whole
    run), a --student with a smaller vocabulary or fewer positions than the teacher's tokenizer
    needs (a traceback mid-distillation), a fine-tuned student of another task: one line each,
    before any teacher output is computed."""
    import random

    import torch
    from conftest import NEGATIVE, POSITIVE
    from safetensors.torch import load_file, save_file
    from transformers import BertConfig, BertForSequenceClassification

    from fastft.compress import compress
    from fastft.models import load_tokenizer, write_meta

    rng = random.Random(0)
    rows = [{"text": " ".join(rng.sample(POSITIVE, 2)) + f" {i}", "label": "positive"} for i in range(40)]
    rows += [{"text": t, "label": "negative"} for t in NEGATIVE[:3]]  # too few to reach the test split
    data = write_jsonl(tmp_path / "zero.jsonl", rows)
    zero = save_tiny_model(tmp_path / "zero", data)
    sd = load_file(zero / "model.safetensors")
    sd["classifier.bias"] = torch.tensor([50.0, -50.0])  # always "negative": every test row wrong
    save_file(sd, zero / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(FastftError, match="scores 0 on the test split"):
        compress(zero, output=str(tmp_path / "o0"), quantize=None, epochs=1, bench=False, progress=False)

    labels = ["negative", "positive"]
    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, num_labels=2)
    for name, extra, words in (
        ("vocab", dict(vocab_size=1000, max_position_embeddings=128), "a vocabulary of 1000 ids"),
        ("pos", dict(vocab_size=30522, max_position_embeddings=16), "takes at most 16 tokens"),
    ):
        d = tmp_path / name
        BertForSequenceClassification(BertConfig(**common, **extra)).save_pretrained(d)
        load_tokenizer(tiny_model_dir).save_pretrained(d)
        write_meta(d, {"format": 1, "task": "sequence-classification", "labels": labels, "data": {}, "metrics": {}})
        with pytest.raises(ModelError, match=words):
            compress(tiny_model_dir, output=str(tmp_path / "o"), student=str(d), bench=False, progress=False)
    from transformers import DistilBertConfig, DistilBertModel

    distil = tmp_path / "distil"  # another layer structure: pruning cannot slice it (probed, not listed)
    DistilBertModel(DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=64)).save_pretrained(distil)
    load_tokenizer(tiny_model_dir).save_pretrained(distil)
    with pytest.raises(
        ModelError, match="is a distilbert model: structured pruning and quantization-aware training work on BERT-style"
    ):
        compress(tiny_model_dir, output=str(tmp_path / "o"), student=str(distil), bench=False, progress=False)
    three = save_tiny_model(tmp_path / "three", tiny_data_file, labels=("a", "b", "c"))
    with pytest.raises(ModelError, match="sequence-classification model with 3 labels"):
        compress(tiny_model_dir, output=str(tmp_path / "o"), student=str(three), bench=False, progress=False)


@pytest.mark.parametrize("family", ["deberta-v2", "mpnet", "distilbert"])
def test_a_teacher_of_another_layout_is_compressed_as_far_as_it_can_be(
    family, tmp_path, tiny_model_dir, tiny_data_file
):
    """A DeBERTa / MPNet / DistilBERT teacher: what would slice or fake-quantise BERT's layer
    Linears is refused in one line naming the options that turn it off (an AttributeError deep in
    pruning or QAT before, and --no-distill --prune-ffn 0 on DistilBERT was refused for pruning it
    did not do, by the report's FLOPs count); with those off it is distilled and quantized."""
    import transformers

    from fastft.compress import CompressConfig, compress
    from fastft.compress.config import DistillConfig, PruneConfig, QuantizeConfig
    from fastft.models import load_tokenizer, write_meta

    small = {"vocab_size": 30522, "max_position_embeddings": 64}
    config = {
        "deberta-v2": transformers.DebertaV2Config(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, **small
        ),
        "mpnet": transformers.MPNetConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, **small
        ),
        "distilbert": transformers.DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=64, **small),
    }[family]
    labels = sorted({json.loads(x)["label"] for x in tiny_data_file.read_text().splitlines()})
    config.id2label, config.label2id = dict(enumerate(labels)), {x: i for i, x in enumerate(labels)}
    teacher = tmp_path / family
    transformers.AutoModelForSequenceClassification.from_config(config).save_pretrained(teacher)
    load_tokenizer(tiny_model_dir).save_pretrained(teacher)
    write_meta(teacher, {"format": 1, "task": "sequence-classification", "labels": labels})
    base = {"data": str(tiny_data_file), "bench": False, "progress": False, "limit": 48}
    if family != "distilbert":  # DistilBERT has no encoder.layer to distil into: quantize only
        with pytest.raises(ModelError, match=f"is a {family} model: structured pruning and quantization-aware") as e:
            compress(str(teacher), CompressConfig(output=str(tmp_path / "o"), **base))
        assert "prune_heads=0, prune_ffn=0, qat=False (--prune-heads 0 --prune-ffn 0 --no-qat)" in str(e.value)
        assert not (tmp_path / "o").exists()
        with pytest.raises(
            ModelError, match=r"quantization-aware training work on BERT-style.*pass qat=False \(--no-qat\),"
        ):
            compress(
                str(teacher),
                CompressConfig(output=str(tmp_path / "o"), prune=PruneConfig(prune_heads=0, prune_ffn=0), **base),
            )
        cfg = CompressConfig(
            output=str(tmp_path / "o"),
            distill=DistillConfig(epochs=1, layers=1),
            prune=PruneConfig(prune_heads=0, prune_ffn=0),
            quantize=QuantizeConfig(qat=False),
            **base,
        )
        if family == "deberta-v2":  # a BERT-style --student is pruned and trained: the teacher only teaches
            student = CompressConfig(
                output=str(tmp_path / "s"), distill=DistillConfig(epochs=1, student=str(tiny_model_dir)), **base
            )
            assert compress(str(teacher), student)["stages"][-1]["stage"] == "quantized"
    else:
        with pytest.raises(
            ModelError,
            match=r"distillation into its own .* pass distill=False, prune_heads=0, .*\(--no-distill --prune-heads 0",
        ):
            compress(str(teacher), CompressConfig(output=str(tmp_path / "o"), **base))
        cfg = CompressConfig(
            output=str(tmp_path / "o"),
            distill=DistillConfig(enabled=False),
            prune=PruneConfig(prune_heads=0, prune_ffn=0),
            **base,
        )
    report = compress(str(teacher), cfg)
    assert (tmp_path / "o" / "model_int8.onnx").is_file()
    assert (
        all(r["gflops_128"] is None for r in report["stages"]) and "| - |" in (tmp_path / "o" / "report.md").read_text()
    )


def _stage(tmp_path, name, accuracy):
    f = tmp_path / f"{name}.onnx"
    f.write_bytes(b"x")
    return {"name": name, "parameters": 1, "file": f, "flops_128": None, "accuracy": accuracy}


def test_report_rows_divide_stage_by_teacher(tmp_path):
    """retained = stage / teacher accuracy; speed-up = teacher p50 / stage p50."""
    from fastft.compress.report import build_rows

    stages = [_stage(tmp_path, "teacher", 0.8), _stage(tmp_path, "int8", 0.6)]
    lat = {
        "teacher": {128: {"p50_ms": 4.0}, 512: {"p50_ms": 10.0}},
        "int8": {128: {"p50_ms": 1.0}, 512: {"p50_ms": 5.0}},
    }
    rows = build_rows(stages, lat)
    assert [r["retained"] for r in rows] == [1.0, 0.75]
    assert [r["speedup_512"] for r in rows] == [1.0, 2.0]
    assert [r["speedup_128"] for r in rows] == [1.0, 4.0]


def _vrow(stage, retained):
    return {"stage": stage, "retained": retained, "p50_ms_512": 1.0}


def test_verdict_is_met_at_exactly_the_target_and_the_teacher_is_no_fallback():
    """retained == target meets it; when the final stage misses, only compressed stages between the
    teacher and the final one can be named as meeting it (the teacher always retains 100%)."""
    from fastft.compress.report import verdict

    assert verdict([_vrow("teacher", 1.0), _vrow("int8", 0.97)], 0.97)["met"] is True
    out = verdict([_vrow("teacher", 1.0), _vrow("pruned", 0.9), _vrow("int8", 0.8)], 0.97)
    assert out["met"] is False and out["nearest_stage_meeting_target"] is None
    out = verdict([_vrow("teacher", 1.0), _vrow("pruned", 0.98), _vrow("int8", 0.8)], 0.97)
    assert out["nearest_stage_meeting_target"] == "pruned"


def test_speedup_against_the_teacher_is_teacher_over_model(monkeypatch):
    """time_against_teacher: speedup_p50 = teacher p50 / the model's p50 at the same length."""
    import importlib
    from types import SimpleNamespace

    from fastft.compress import report

    quantize = importlib.import_module("fastft.compress.quantize")  # the package's quantize() shadows it

    monkeypatch.setattr(quantize, "export_onnx", lambda net, path: None)
    lat = {"teacher": {128: {"p50_ms": 6.0}}, "int8": {128: {"p50_ms": 2.0}}}
    monkeypatch.setattr(report, "measure_latency", lambda files, **k: lat)
    teacher = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=512))
    rows = report.time_against_teacher(teacher, {"int8": "int8.onnx"}, [128], runs=1)
    assert [(r["model"], r["speedup_p50"]) for r in rows] == [("teacher", 1.0), ("int8", 3.0)]


def test_report_rows_carry_exact_sizes_flops_latency_and_shifted_retention(tmp_path):
    """build_rows: file MB (2**20), GFLOPs (1e9), p50 (2 decimals), retained on each shifted split, extra keys kept."""
    from fastft.compress.report import build_rows

    teacher = _stage(tmp_path, "teacher", 0.8)
    (tmp_path / "teacher.onnx").write_bytes(b"x" * (3 * 2**20 // 2))  # 1.5 MiB
    teacher.update(flops_128=2_345_678_901, accuracy_rare=0.5, accuracy_long=0.4)
    small = _stage(tmp_path, "pruned", 0.6)
    small.update(flops_128=1_000_000_000, accuracy_rare=0.45, accuracy_long=0.1, agreement_fp32=0.9)
    lat = {"teacher": {128: {"p50_ms": 4.126}}, "pruned": {128: {"p50_ms": 1.0}}}  # no 512: None, no speed-up
    rows = build_rows([teacher, small], lat)
    assert [(r["file_mb"], r["gflops_128"], r["p50_ms_128"], r["p50_ms_512"]) for r in rows] == [
        (1.5, 2.346, 4.13, None),
        (0.0, 1.0, 1.0, None),
    ]
    assert [(r["retained_rare"], r["retained_long"]) for r in rows] == [(1.0, 1.0), (0.9, 0.25)]
    assert rows[1]["speedup_512"] is None and rows[1]["speedup_128"] == 4.13 and rows[1]["agreement_fp32"] == 0.9
    assert rows[1]["file"] == "pruned.onnx" and rows[1]["latency"] == {"128": {"p50_ms": 1.0}}


def test_verdict_messages_and_the_fastest_stage_meeting_the_target():
    """verdict: the met / missed / undefined messages in full; the nearest stage is the fastest at 512 that met it."""
    from fastft.compress.report import verdict

    rows = [_vrow("teacher", 1.0), _vrow("distilled", 0.99), _vrow("pruned", 0.985), _vrow("quantized", 0.9)]
    rows[1]["p50_ms_512"], rows[2]["p50_ms_512"] = 2.0, 3.0  # the fastest is not the last
    v = verdict(rows, 0.98, "entity F1")
    assert v == {
        "target_retained": 0.98,
        "final_stage": "quantized",
        "final_retained": 0.9,
        "met": False,
        "nearest_stage_meeting_target": "distilled",
        "message": "the final model (quantized) retains 90.00% of the teacher's entity F1, below the target "
        "98.00%; the nearest stage that met it is 'distilled' (99.00%)",
    }
    assert (
        verdict(rows[:2], 0.98)["message"] == "the final model retains 99.00% of the teacher's accuracy (target 98.00%)"
    )
    undefined = verdict([_vrow("teacher", None), _vrow("quantized", None)], 0.98)
    assert undefined["met"] is False and undefined["message"] == "retention is undefined: the teacher's accuracy is 0"


def test_report_table_and_markdown_show_the_rows_settings_and_quantization(tmp_path):
    """table()/markdown(): parameters in M, retained in %, speed-up as x, the latency settings, notes and INT8 lines."""
    from fastft.compress.report import build_rows, markdown, table, verdict

    stages = [_stage(tmp_path, "teacher", 0.8), _stage(tmp_path, "quantized", 0.78)]
    stages[0]["parameters"], stages[1]["parameters"] = 22_700_000, 5_100_000
    lat = {"teacher": {512: {"p50_ms": 30.0}}, "quantized": {512: {"p50_ms": 6.0}}}
    rows = build_rows(stages, lat)
    out = table(rows).splitlines()
    assert out[0].split()[:3] == ["stage", "params", "file"] and "test acc" in out[0]
    assert out[2].split() == ["quantized", "5.10M", "0.00", "-", "-", "6.00", "5.00x", "0.7800", "97.50%", "-"]
    assert "test F1" in table(rows, "entity F1").splitlines()[0]
    report = {
        "teacher": "t",
        "data": "d",
        "test_rows": 12,
        "max_length": 64,
        "stages": rows,
        "verdict": verdict(rows, 0.99),
        "latency_settings": {"runs": 7, "threads": 3, "attention": {"quantized": "onnxruntime"}},
        "shift": {"rare": {"rows": 3, "definition": "rarest"}},
        "notes": ["a note"],
        "quantization": {"mode": "int8", "label_agreement_fp32_test": 0.875, "fp32_nodes": 2, "excluded_nodes": ["m1"]},
    }
    md = markdown(report)
    assert "test split, 12 rows); max length 64." in md and "| quantized | 5.10M |" in md and "| 97.50% |" in md
    assert "p50 of 7 interleaved runs, 3 threads" in md and "Attention: quantized: onnxruntime." in md
    assert "- shifted split `rare` (3 test rows): rarest" in md and "- a note" in md
    assert "INT8 label agreement with the fp32 model on the test split: 87.50%; nodes kept fp32" in md
    assert "accuracy-aware fallback: 2." in md and "- `m1`" in md and "below the target 99.00%" in md


def test_latency_runs_served_stages_as_served_and_skips_lengths_past_the_positions(monkeypatch):
    """measure_latency: only the stages named in ``served`` run on fastft's ops; lengths > max_positions are skipped."""
    import importlib

    from fastft.compress.report import measure_latency
    from fastft.runtime.ort_attention import Swaps

    quantize = importlib.import_module("fastft.compress.quantize")
    modes, shapes = {}, []

    class Session:
        def get_inputs(self):
            return [type("I", (), {"name": "input_ids"})()]

        def run(self, _, feed):
            shapes.append(feed["input_ids"].shape)

    def served(path, threads, ort_attention):
        modes[path] = ort_attention
        return Session(), Swaps(attention=2 if ort_attention == "auto" else 0)

    monkeypatch.setattr(quantize, "served", served)
    lat = measure_latency(
        {"teacher": "t.onnx", "int8": "q.onnx"}, seqs=(16, 128, 512), runs=3, warmup=1, progress=False,
        max_positions=128, served=["int8"],
    )  # fmt: skip
    assert modes == {"t.onnx": "onnxruntime", "q.onnx": "auto"}
    assert set(lat["teacher"]) == {16, 128} and set(shapes) == {(1, 16), (1, 128)} and len(shapes) == 2 * 2 * (1 + 3)
    assert lat["int8"][128]["attention_swapped"] == 2 and lat["teacher"][16]["attention_swapped"] == 0


def test_shifted_accuracy_and_label_agreement_are_argmax_shares():
    """shift_accuracy: accuracy on each subset's rows (empty subsets left out); agreement: share of equal argmaxes."""
    from fastft.compress.report import agreement, shift_accuracy

    logits = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6]])
    assert shift_accuracy({"rare": [0, 1, 2], "long": [3], "none": []}, logits, [0, 1, 1, 0]) == {
        "accuracy_rare": 2 / 3,
        "accuracy_long": 0.0,
    }
    assert agreement(logits, logits[[0, 1, 3, 3]]) == 0.75 and agreement(np.zeros((0, 2)), np.zeros((0, 2))) == 0.0


def test_cli_compress_prints_the_table_verdict_and_quantization_or_only_json(monkeypatch, tmp_path, capsys):
    """fastft compress: a missed target is a WARNING line, the agreement line names the precision; --json only JSON."""
    import importlib

    from fastft.cli import build_parser, main

    report = {
        "metric": "accuracy",
        "stages": [{"stage": "teacher", "accuracy": 0.8, "retained": 1.0}],
        "verdict": {"met": False, "message": "missed"},
        "quantization": {"mode": "fp16", "label_agreement_fp32_test": 0.5, "fp32_nodes": 0},
        "output": "o",
        "timings": {"total_s": 12.4},
    }
    calls = []
    monkeypatch.setattr(
        importlib.import_module("fastft.compress.pipeline"), "compress", lambda *a: calls.append(a) or report
    )
    assert main(["compress", "--model", "m", "--fp16", "-o", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert calls[-1][0] == "m" and calls[-1][1].quantize.mode == "fp16"
    assert out[-3:] == [
        "WARNING: missed",
        "FP16 label agreement with fp32 (test): 50.00%; nodes kept fp32 by the fallback: 0",
        "saved o (report.json, report.md); total 12 s",
    ]
    # --static implies --int8 only where no precision is given: with --fp16 it stays FP16 (then refused)
    from fastft.cli.compress import config_from_args

    parser = build_parser().commands["compress"]
    assert config_from_args(parser.parse_args(["--static", "--fp16"])).quantize.mode == "fp16"
    assert config_from_args(parser.parse_args(["--static"])).quantize.mode == "int8"
    report["verdict"]["met"] = True
    assert main(["compress", "--json", "-o", str(tmp_path / "o")]) == 0
    assert json.loads(capsys.readouterr().out)["verdict"] == {"met": True, "message": "missed"}


def test_compress_report_records_what_each_stage_ran_on(compressed):
    """report.json: INT8's fp32 bar is the pruned stage's validation score, the fallback flag follows the fp32 nodes,
    the latency threads default to the physical cores, only the teacher runs on ORT's own ops, the INT8 note."""
    from fastft.core.system import physical_cores

    out, report = compressed
    rep = json.loads((out / "report.json").read_text())
    q, stages = rep["quantization"], {r["stage"]: r for r in rep["stages"]}
    metrics = json.loads((out / "fastft.json").read_text())["metrics"]  # the served model's, per split
    assert (stages["quantized"]["accuracy"], stages["quantized"]["validation_accuracy"]) == (
        metrics["test"]["accuracy"],
        metrics["validation"]["accuracy"],
    )
    assert q["accuracy_fp32"] == stages["pruned"]["validation_accuracy"]
    assert q["fallback_fired"] is (q["fp32_nodes"] > 0) and q["fp32_nodes"] == len(q["excluded_nodes"])
    assert (
        stages["quantized"]["precision"] == "int8"
        and stages["quantized"]["agreement_fp32"] == (q["label_agreement_fp32_test"])
    )
    lat = rep["latency_settings"]
    assert (lat["threads"], lat["runs"], lat["batch"]) == (physical_cores(), 2, 1)
    assert lat["attention"]["teacher"] == "onnxruntime" and set(lat["attention"]) == set(stages)
    assert rep["accuracy_settings"]["attention"]["teacher"] == "onnxruntime"
    assert rep["notes"] == [
        "the quantized row has the pruned/distilled model's parameter count and FLOPs, run as INT8/FP16 ops"
    ]
    d, cfg = rep["distillation"], rep["config"]["distill"]  # the settings distillation ran with, as resolved
    assert (d["alpha"], d["temperature"], d["kd_loss"], d["epochs"]) == (0.8, 2.0, "kl", 1) and d["alpha"] == cfg[
        "alpha"
    ]


@pytest.mark.filterwarnings("ignore:.*have more than one label")
def test_stage_scores_and_the_int8_bar_come_from_their_own_splits(teacher4, tmp_path):
    """The test-split texts are the validation ones with every label flipped: a stage's accuracy is its test score,
    validation_accuracy its validation score, and INT8's fp32 bar the validation score (the test split stays unseen)."""
    import fastft

    val = make_rows(7, seed=3)  # an odd count: the two scores cannot both be 0.5
    flipped = [{"text": r["text"], "label": "negative" if r["label"] == "positive" else "positive"} for r in val]
    rows = [{**r, "split": "train"} for r in make_rows(40)] + [{**r, "split": "validation"} for r in val]
    data = write_jsonl(tmp_path / "splits.jsonl", rows + [{**r, "split": "test"} for r in flipped])
    cfg = CompressConfig(distill=False, prune_heads=0, prune_ffn=0, quantize="int8", bench=False, progress=False)
    report = fastft.compress(str(teacher4), cfg, data=str(data), output=str(tmp_path / "o"))
    teacher, quantized = report["stages"][0], report["stages"][-1]
    assert teacher["accuracy"] == pytest.approx(1 - teacher["validation_accuracy"])
    assert report["quantization"]["accuracy_fp32"] == teacher["validation_accuracy"]
    assert quantized["accuracy"] + quantized["validation_accuracy"] == pytest.approx(1.0)


# -- mutation-audit pins (compress stages, pruning, INT8) -------------------------------------------
def _with(ctx, **changes):
    """``ctx`` (the module's prepared context) with its CompressConfig changed; nothing reloaded."""
    import dataclasses

    return dataclasses.replace(ctx, cfg=ctx.cfg.updated(**changes), cache=None, augmented=None)


def test_prune_steps_split_the_heads_and_neurons_by_rounding_the_running_total(ctx, monkeypatch):
    """--prune-steps 3 with 2 of 4 heads and 32 of 64 FFN neurons to go per layer: after step i,
    round(k * i / 3) have gone in all, so the steps remove heads 1, 0, 1 (0.67 -> 1, 1.33 -> 1, 2) and
    neurons 11, 10, 11 (10.67 -> 11, 21.33 -> 21, 32). A floor (heads 0, 1, 1) or a ceiling (1, 1, 0)
    of the running total passed every test (two steps of an even count round alike)."""
    import copy

    from fastft.compress import stages
    from fastft.models.pruned import describe

    c = _with(ctx, prune_heads=0.5, prune_ffn=0.5, prune_steps=3, head_allocation="layer")
    monkeypatch.setattr(stages, "_train_on_teacher", lambda *a, **k: {"history": []})  # no recovery training
    net = copy.deepcopy(ctx.teacher)
    info = stages.do_prune(c, net).info
    assert [s.get("heads_removed_per_layer", 0) for s in info["steps"]] == [1, 0, 1]
    assert [s.get("ffn_removed_per_layer", 0) for s in info["steps"]] == [11, 10, 11]
    assert describe(net)["heads"] == [2] * 4 and describe(net)["intermediate"] == [32] * 4
    assert info["heads_removed_per_layer"] == 2 and info["ffn_removed_per_layer"] == 32


def test_importance_reads_prune_batches_training_batches(ctx, monkeypatch):
    """--prune-batches N: head/FFN importance is measured on N training batches of --batch-size rows
    (the training split has more): a limit ignored, or one batch too many, passed every test."""
    import copy

    from fastft.compress import stages
    from fastft.compress.stages import dis  # (fastft.compress.distill is the API function)

    n_train = len(ctx.ids["train"])
    assert n_train > 2 * 16  # three batches of 16 or more: a limit of 1 or 2 shows
    seen = []
    real = stages.importance

    def spy(net, batches, loss_fn, **kw):
        batches = list(batches)
        seen.append(batches)
        return real(net, batches, loss_fn, **kw)

    monkeypatch.setattr(stages, "importance", spy)
    cache = dis.cache_teacher(ctx.teacher, ctx.ids["train"], ctx.pad_id, None, progress=False)
    for limit in (1, 2):
        c = _with(ctx, prune_batches=limit, batch_size=16)
        info = stages._structured_prune(c, copy.deepcopy(ctx.teacher), cache, 1, 8)
        batches = seen[-1]
        assert len(batches) == limit and info["importance_batches"] == limit
        rows = [r for b in batches for r in b]
        assert all(len(b) == 16 for b in batches) and len(set(rows)) == len(rows)
        assert all(0 <= r < n_train for r in rows)


def test_static_int8_calibrates_on_the_first_calib_size_training_rows(ctx, tmp_path, monkeypatch):
    """--static --calib-size N: the calibration reader gets the first N rows of the training split,
    neither the validation nor the test rows (a mutant calibrating on either passed every test)."""
    from fastft.compress.quantize import export_onnx
    from fastft.compress.stages import do_quantize
    from fastft.export import quantize as fx_quant

    c = _with(ctx, static=True, calib_size=5)
    assert ctx.ids["train"][:5] not in (ctx.ids["validation"][:5], ctx.ids["test"][:5])
    seen = []
    real = fx_quant.CalibrationReader.from_ids.__func__

    def spy(cls, ids, *a, **k):
        seen.append([list(x) for x in ids])
        return real(cls, ids, *a, **k)

    monkeypatch.setattr(fx_quant.CalibrationReader, "from_ids", classmethod(spy))
    export_onnx(ctx.teacher, tmp_path / "model.onnx")
    q = do_quantize(c, tmp_path / "model.onnx", tmp_path)
    assert seen and all(rows == ctx.ids["train"][:5] for rows in seen)
    assert q.info["mode"] == "static" and q.info["calibration_rows"] == 5


def test_layer_plan_rounds_to_the_nearest_layer_where_the_ratio_is_not_whole():
    """12 teacher layers into 5: student layer i starts as teacher layer floor(2.4 i) = 0, 2, 4, 7, 9
    and its output is matched to hidden state round(2.4 (i + 1)) = 2, 5, 7, 10, 12 (4.8 -> 5, 9.6 -> 10).
    Every other case tested divides evenly, so flooring the match (2, 4, 7, 9, 12) or rounding the
    initialisation (0, 2, 5, 7, 10) passed them."""
    from fastft.compress.distill import layer_plan

    assert layer_plan(12, 5) == ([0, 2, 4, 7, 9], [2, 5, 7, 10, 12])
    assert layer_plan(4, 3) == ([0, 1, 2], [1, 3, 4])  # 1.33 -> 1, 2.67 -> 3


def _train_scripted(ctx, scores, qat=None, epochs=None):
    """train_student on a 2-layer student for len(scores) epochs, evaluate() returning ``scores`` in
    turn; returns (result, student, the student's weights at each evaluation)."""
    from fastft.compress.distill import cache_teacher, make_student, train_student

    student, _ = make_student(ctx.teacher, "teacher-layers", 2, ctx.labels)
    cache = cache_teacher(ctx.teacher, ctx.ids["train"], ctx.pad_id, None, progress=False)
    snaps, it = [], iter(scores)

    def evaluate(m):
        snaps.append({k: v.detach().clone() for k, v in m.state_dict().items()})
        return next(it)

    res = train_student(
        student,
        cache,
        ctx.ids["train"],
        ctx.y["train"],
        pad_id=ctx.pad_id,
        epochs=epochs or len(scores),
        lr=1e-3,
        batch_size=16,
        temperature=2.0,
        alpha=0.5,
        hidden_weight=0.0,
        evaluate=evaluate,
        progress=False,
        qat=qat,
    )
    return res, student, snaps


def _same_weights(a, b) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_distillation_keeps_the_epoch_with_the_best_validation_score(ctx):
    """Validation scores 0.5, 0.9, 0.7 over three epochs: the student returned has the second epoch's
    weights (not the last epoch's, not the worst's), and the history marks that epoch best."""
    res, student, snaps = _train_scripted(ctx, [0.5, 0.9, 0.7])
    assert len(snaps) == 3 and not _same_weights(snaps[1], snaps[2])  # the epochs did change the weights
    assert _same_weights(student.state_dict(), snaps[1])
    assert [bool(e.get("best")) for e in res["history"]] == [True, True, False]


def test_only_quantization_aware_epochs_compete_for_best(ctx):
    """With QAT in the last of two epochs, the first (fp32) epoch is not scored and cannot be kept even
    though it would have scored higher: the weights quantised next are the ones trained for it."""
    from fastft.compress.qat import QatSpec

    res, student, snaps = _train_scripted(ctx, [0.9, 0.5], qat=QatSpec(epochs=1), epochs=2)
    assert len(snaps) == 1  # one evaluation: the QAT epoch's (0.9 is its score)
    assert "validation_accuracy" not in res["history"][0] and res["history"][1]["qat"]
    assert _same_weights(student.state_dict(), snaps[0])


def test_importance_is_the_summed_taylor_score_of_each_head_and_neuron(ctx):
    """importance() by another road: no gates, the inputs of attention.output.dense (the heads'
    context vectors) and of output.dense (the FFN activations) kept, and per batch
    |sum over tokens (and the head's dims) of value * d loss / d value|, summed over batches, the head
    scores of each layer then divided by their L2 norm. Measured in eval mode (no dropout) whatever
    mode the model is in, which it is left in. A signed sum, the last batch alone, the head scores
    unnormalised, a head gate spread over the wrong dims or dropout left on passed every test."""
    import copy

    import torch

    from fastft.compress.prune import importance
    from fastft.models.pruned import encoder_layers, heads_of

    net = copy.deepcopy(ctx.teacher).train()  # train mode: importance must not score with dropout on
    batches, loss_fn = _score_batches(ctx)
    scores = importance(net, batches, loss_fn)
    assert net.training

    layers = encoder_layers(net)
    ref = copy.deepcopy(net).eval()
    ref_layers = encoder_layers(ref)
    want = {"heads": [0.0] * len(layers), "ffn": [0.0] * len(layers)}
    for rows in batches:
        kept, hooks = [], []
        for layer in ref_layers:
            for mod in (layer.attention.output.dense, layer.output.dense):
                hooks.append(mod.register_forward_pre_hook(lambda m, args, kept=kept: kept.append(args[0])))
        loss = loss_fn(ref, rows)
        for h in hooks:
            h.remove()
        grads = torch.autograd.grad(loss, kept)
        for i, layer in enumerate(ref_layers):
            ctx_v, ctx_g, act, act_g = kept[2 * i], grads[2 * i], kept[2 * i + 1], grads[2 * i + 1]
            n_heads, d = heads_of(layer), layer.attention.self.attention_head_size
            per_head = (ctx_v * ctx_g).sum(dim=(0, 1)).reshape(n_heads, d).sum(-1)
            want["heads"][i] = want["heads"][i] + per_head.abs()
            want["ffn"][i] = want["ffn"][i] + (act * act_g).sum(dim=(0, 1)).abs()
    for i in range(len(layers)):
        h = want["heads"][i] / want["heads"][i].norm()
        assert torch.allclose(scores["heads"][i], h, rtol=1e-4, atol=1e-6), (i, scores["heads"][i], h)
        assert torch.allclose(scores["ffn"][i], want["ffn"][i], rtol=1e-4, atol=1e-8), i


def test_check_fractions_rounds_to_the_nearest_count_and_refuses_emptying_a_pruned_layer(tiny_model_dir):
    """0.4 of 4 heads is 2 (1.6 rounded), 0.3 of 64 neurons 19 (19.2); and a layer left with one head
    by an earlier pruning refuses a fraction that takes exactly one from every layer (0.25 of 4):
    a floor of the count, or a check that only refused taking more than the layer has, passed; a
    fraction of 1 is out of range (a bound of <= 1 let it through to another message)."""
    from fastft.compress.prune import check_fractions, encoder_layers, heads_of, prune_layer_heads
    from fastft.models import load_classifier

    net = load_classifier(tiny_model_dir)
    layers = encoder_layers(net)
    assert heads_of(layers[0]) == 4 and layers[0].intermediate.dense.out_features == 64
    assert check_fractions(net, 0.4, 0.3) == (2, 19)
    assert check_fractions(net, 0.25, 0.0) == (1, 0)
    with pytest.raises(FastftError, match=r"prune_ffn \(--prune-ffn\) must be in \[0, 1\) \(got 1\)"):
        check_fractions(net, 0.0, 1.0)  # all of them: refused as a fraction out of range
    prune_layer_heads(layers[-1], [0, 1, 2])  # one head left in the last layer
    with pytest.raises(FastftError, match="has 1 left"):
        check_fractions(net, 0.25, 0.0)


def test_magnitude_pruning_zeroes_exactly_the_smallest_weights(ctx):
    """--sparsity 0.5: each encoder Linear loses exactly floor(0.5 * size) weights, the smallest in
    magnitude (everything zeroed is no larger than everything kept); the report's 0.49-0.51 band let
    a mutant keeping the k-th smallest weight (one zero fewer per matrix) pass."""
    import copy

    import torch

    from fastft.compress.prune import magnitude_prune
    from fastft.models.pruned import encoder_layers

    net = copy.deepcopy(ctx.teacher)
    before = {n: m.weight.detach().clone() for n, m in net.named_modules() if isinstance(m, torch.nn.Linear)}
    info = magnitude_prune(net, 0.5)
    encoder = {id(m) for layer in encoder_layers(net) for m in layer.modules()}
    total = zeros = 0
    for name, m in net.named_modules():
        if not isinstance(m, torch.nn.Linear):
            continue
        w0, w = before[name], m.weight.detach()
        if id(m) not in encoder:
            assert torch.equal(w, w0), name  # the pooler and classifier are left alone
            continue
        gone = w == 0
        assert int(gone.sum()) == w0.numel() // 2, name
        assert w0.abs()[gone].max() <= w0.abs()[~gone].min() and torch.equal(w[~gone], w0[~gone])
        total, zeros = total + w0.numel(), zeros + int(gone.sum())
    assert info["encoder_linear_zeros"] == zeros and info["encoder_linear_weights"] == total


def test_accuracy_aware_int8_stops_at_a_drop_equal_to_the_budget_and_keeps_the_given_fp32_bar(ctx, tmp_path):
    """With a score that INT8 does not move, a drop of exactly the budget (0 against 0) is within it:
    the first attempt stands, nothing is kept fp32; and a given fp32 score (the pipeline passes the
    fp32 stage's validation score) is the bar the drop is measured from, not re-scored from the graph."""
    from fastft.compress.quantize import accuracy_aware_int8, torch_export

    torch_export(ctx.teacher, tmp_path / "m.onnx")
    common = dict(
        val_ids=ctx.ids["validation"],
        val_labels=ctx.y["validation"],
        pad_id=ctx.pad_id,
        progress=False,
        score_fn=lambda sess: 0.5,
    )
    info = accuracy_aware_int8(tmp_path / "m.onnx", tmp_path / "a.onnx", budget=0.0, **common)
    assert info["accuracy_fp32"] == 0.5 and info["drop"] == 0.0
    assert info["excluded_nodes"] == [] and len(info["rounds"]) == 1 and info["within_budget"] is True
    info = accuracy_aware_int8(tmp_path / "m.onnx", tmp_path / "b.onnx", budget=0.3, base_acc=0.75, **common)
    assert info["accuracy_fp32"] == 0.75 and info["drop"] == pytest.approx(0.25)
    assert info["excluded_nodes"] == [] and info["within_budget"] is True


def test_the_best_epoch_is_chosen_on_the_validation_split(ctx, monkeypatch):
    """The score each distillation/recovery epoch is kept by is the validation accuracy: here the test
    split is the validation texts with every label flipped, so the two scores of the teacher sum to 1
    and a selection on the test split (a leak a mutant made unseen) shows."""
    import copy
    import dataclasses

    import torch

    from fastft.compress import stages
    from fastft.compress.stages import dis  # (fastft.compress.distill is the API function)

    val_ids, val_y = ctx.ids["train"][:7], ctx.y["train"][:7]  # an odd count: the scores cannot be equal
    c = dataclasses.replace(
        ctx,
        ids={**ctx.ids, "validation": val_ids, "test": val_ids},
        y={**ctx.y, "validation": val_y, "test": [1 - v for v in val_y]},
    )
    seen = {}
    monkeypatch.setattr(dis, "train_student", lambda *a, **k: seen.update(k) or {})
    stages._train_on_teacher(c, copy.deepcopy(ctx.teacher), None, epochs=1, seed=0, desc="t")
    x, m = dis.pad_batch(val_ids, ctx.pad_id)
    with torch.no_grad():
        pred = ctx.teacher.eval()(input_ids=x, attention_mask=m).logits.argmax(-1).tolist()
    want = sum(p == y for p, y in zip(pred, val_y)) / 7
    assert seen["evaluate"](ctx.teacher) == pytest.approx(want)


def test_a_last_prune_step_that_removes_nothing_still_recovers_with_qat(ctx, monkeypatch):
    """One head per layer in three steps: round(1/3) = 0, round(2/3) = 1, 1, so only the second step
    removes anything. It is followed by a recovery run, the first is not, and the last step, empty as
    it is, still gets the --last-recovery-epochs run that is quantization-aware (skipping it, as a
    mutant did, left the INT8 stage without QAT)."""
    import copy

    from fastft.compress import stages

    c = _with(ctx, prune_heads=0.25, prune_ffn=0.0, prune_steps=3, head_allocation="layer", last_recovery_epochs=2)
    runs = []
    monkeypatch.setattr(
        stages, "_train_on_teacher", lambda ctx, net, cache, **k: runs.append((k["epochs"], k["qat"])) or {}
    )
    info = stages.do_prune(c, copy.deepcopy(ctx.teacher)).info
    assert [s.get("heads_removed_per_layer", 0) for s in info["steps"]] == [0, 1, 0]
    assert [e for e, _ in runs] == [c.cfg.prune.recovery_epochs, 2]
    assert runs[0][1] is None and runs[1][1] is not None  # QAT in the last run only
    assert ["recovery" in s for s in info["steps"]] == [False, True, True]


def test_importance_is_measured_on_the_distillation_loss_against_the_teacher(ctx, monkeypatch):
    """The loss whose gradients score heads and neurons is the distillation loss of the run:
    alpha * T^2 * KL(teacher || student at temperature T) + (1 - alpha) * CE against the labels,
    the teacher's logits from the cache (computed here with torch's own kl_div and cross_entropy);
    a mutant scoring on the label term alone passed every test."""
    import copy

    import torch
    import torch.nn.functional as F

    from fastft.compress import stages
    from fastft.compress.stages import dis  # (fastft.compress.distill is the API function)

    c = _with(ctx, alpha=0.7, temperature=3.0)
    caught = {}

    def spy(net, batches, loss_fn, **kw):
        caught.update(net=net, batches=list(batches), loss_fn=loss_fn)
        return {"heads": [torch.zeros(4)] * 4, "ffn": [torch.arange(64.0)] * 4}

    monkeypatch.setattr(stages, "importance", spy)
    cache = dis.cache_teacher(ctx.teacher, ctx.ids["train"], ctx.pad_id, None, progress=False)
    net = copy.deepcopy(ctx.teacher).eval()
    stages._structured_prune(c, net, cache, 0, 8)
    rows = caught["batches"][0]
    student = caught["net"]
    x, m = dis.pad_batch([ctx.ids["train"][r] for r in rows], ctx.pad_id)
    with torch.no_grad():
        got = caught["loss_fn"](student, rows).item()
        s = student(input_ids=x, attention_mask=m).logits
    t, y, T = cache.logits[rows], torch.tensor([ctx.y["train"][r] for r in rows]), 3.0
    kl = F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1), reduction="batchmean") * T * T
    want = 0.7 * kl + 0.3 * F.cross_entropy(s, y)
    assert got == pytest.approx(want.item(), rel=1e-5)


def test_augmented_copies_follow_the_seed_of_the_run(ctx):
    """The perturbed copies are made once per (copies, seed) and kept on the context: asked again
    with another seed, the context makes that seed's copies (the ones a fresh context makes), not the
    old ones (a cache keyed on the copy count alone, as a mutant had it)."""
    import dataclasses

    from fastft.compress.stages import train_rows

    a = _with(ctx, augment=1, seed=1)
    ids_a, _ = train_rows(a)
    b = dataclasses.replace(a, cfg=a.cfg.updated(seed=2))  # a's copies still on it
    ids_b, _ = train_rows(b)
    fresh, _ = train_rows(_with(ctx, augment=1, seed=2))
    n = len(ctx.ids["train"])
    assert len(ids_a) == 2 * n and ids_a[:n] == ctx.ids["train"]
    assert ids_b == fresh and ids_b[n:] != ids_a[n:]


def test_a_teacher_with_broken_weights_is_refused_when_its_outputs_are_cached(ctx):
    """cache_teacher refuses a teacher whose scores are not finite (one line) instead of letting
    distillation stop at its first step as 'diverged'; a mutant without the check passed."""
    import copy

    import torch

    from fastft.compress.distill import cache_teacher

    bad = copy.deepcopy(ctx.teacher)
    with torch.no_grad():
        bad.classifier.bias[0] = float("nan")
    with pytest.raises(ModelError, match="not finite"):
        cache_teacher(bad, ctx.ids["train"][:4], ctx.pad_id, None, progress=False)


def test_a_student_of_another_hidden_size_distils_the_logits_only(ctx, tmp_path, capsys):
    """A --student directory whose hidden size differs from the teacher's: no hidden-state layers are
    matched (None; the MSE of states of two widths cannot be taken) and stderr says so; one of the
    same width is matched as layer_plan says (2 of 4 layers: hidden states 2 and 4)."""
    from fastft.compress.distill import make_student

    narrow = save_tiny_model(tmp_path / "narrow", layers=2, hidden=16, heads=2)
    same = save_tiny_model(tmp_path / "same", layers=2, hidden=32, heads=4)
    net, match = make_student(ctx.teacher, str(narrow), None, ctx.labels)
    assert match is None and net.config.hidden_size == 16
    assert "differs from the teacher's 32: distilling logits only" in capsys.readouterr().err
    assert make_student(ctx.teacher, str(same), None, ctx.labels)[1] == [2, 4]


def test_a_fraction_of_an_epoch_runs_its_steps_rounded_up(ctx):
    """--epochs 0.5 over the 48 training rows in batches of 16 (3 steps an epoch) is 1.5 steps, run
    as 2 in one epoch; a count rounded down (1 step) passed every test."""
    assert len(ctx.ids["train"]) == 48
    res, _, snaps = _train_scripted(ctx, [0.5], epochs=0.5)
    assert res["steps"] == 2 and len(res["history"]) == 1 and len(snaps) == 1


def test_int8_per_channel_choice_reaches_the_graph(ctx, tmp_path):
    """quantize_int8(per_channel=...): per channel, a quantised weight has one scale per output column;
    per tensor, one scale (a mutant that dropped the option and took this CPU's default passed every
    test). --static without calibration rows is a one-line error."""
    import onnx
    from onnx import numpy_helper

    from fastft.compress.quantize import quantize_int8, torch_export

    torch_export(ctx.teacher, tmp_path / "m.onnx")
    for per_channel in (True, False):
        out = tmp_path / f"q{int(per_channel)}.onnx"
        info = quantize_int8(tmp_path / "m.onnx", out, per_channel=per_channel, embeddings=False)
        scales = [numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer if t.name.endswith("_scale")]
        assert info["per_channel"] is per_channel and info["nodes_quantized"] > 0 and scales
        assert any(s.size > 1 for s in scales) is per_channel, [s.shape for s in scales]
    with pytest.raises(FastftError, match=r"static \(--static\) needs calibration data"):
        quantize_int8(tmp_path / "m.onnx", tmp_path / "s.onnx", static=True, calib_ids=[])


def test_accuracy_aware_int8_scores_the_int8_graph_one_text_per_call(ctx, tmp_path, monkeypatch):
    """A dynamic INT8 graph quantises its activations over each call's tensor and fastft serves it one
    text per call: its validation score is taken the same way (every feed one row), the fp32 graph's
    in batches. A mutant scoring the INT8 graph in batches of 64 passed every test."""
    import importlib
    from pathlib import Path

    cq = importlib.import_module("fastft.compress.quantize")  # (fastft.compress.quantize is the API function)
    feeds, real = [], cq.served

    class Spy:
        def __init__(self, sess, name):
            self.sess, self.name = sess, name

        def get_inputs(self):
            return self.sess.get_inputs()

        def run(self, names, feed):
            feeds.append((self.name, feed["input_ids"].shape[0]))
            return self.sess.run(names, feed)

    monkeypatch.setattr(cq, "served", lambda path, *a, **k: (Spy(real(path, *a, **k)[0], Path(path).name), None))
    cq.torch_export(ctx.teacher, tmp_path / "m.onnx")
    n = len(ctx.ids["validation"])
    cq.accuracy_aware_int8(
        tmp_path / "m.onnx",
        tmp_path / "q.onnx",
        val_ids=ctx.ids["validation"],
        val_labels=ctx.y["validation"],
        pad_id=ctx.pad_id,
        budget=1.0,
        progress=False,
    )
    fp32 = [b for name, b in feeds if name == "m.onnx"]
    int8 = [b for name, b in feeds if name != "m.onnx"]
    assert n > 1 and fp32 == [n] and int8 == [1] * n


def test_teacher_cache_holds_each_rows_own_outputs_without_padding(ctx):
    """cache_teacher runs length-sorted padded batches; what it keeps for a row is what the teacher
    gives that row alone: its logits, and its hidden states at the matched layers for its real
    tokens (fp16), zeros on padding in hidden_batch. A mutant taking the states from the padded end
    of the batch passed every test (the distillation loss still fell)."""
    import torch

    from fastft.compress.distill import cache_teacher

    ids = ctx.ids["train"][:10]
    assert len({len(x) for x in ids}) > 1  # rows of different lengths: padding in the batches
    cache = cache_teacher(ctx.teacher, ids, ctx.pad_id, [2, 4], batch_size=4, progress=False)
    for r, row in enumerate(ids):
        with torch.no_grad():
            out = ctx.teacher(input_ids=torch.tensor([row]), output_hidden_states=True)
        assert torch.allclose(cache.logits[r], out.logits[0], atol=1e-4), r
        a, b = int(cache.offsets[r]), int(cache.offsets[r + 1])
        assert b - a == len(row)
        for k, j in enumerate((2, 4)):
            assert torch.allclose(cache.hidden[a:b, k].float(), out.hidden_states[j][0], atol=1e-2), (r, j)
    longest = max(len(x) for x in ids)
    short = min(range(len(ids)), key=lambda r: len(ids[r]))
    batch = cache.hidden_batch([short], longest)
    assert batch.shape == (1, longest, 2, 32) and not batch[0, len(ids[short]) :].any()
