"""Quantization of a compressed model through fastft.export's stages: INT8 (dynamic, or static
with calibration) and FP16.

Accuracy-aware INT8 is :func:`fastft.export.int8.accuracy_aware` with the
:class:`~fastft.export.int8.KLSensitivity` policy: quantize every weight MatMul; if the
validation accuracy drops by more than ``accuracy_budget``, measure each quantizable node's
sensitivity (quantize that node alone; mean KL of the logits against fp32 on a calibration
subset) and keep the most sensitive nodes in fp32 (``nodes_to_exclude``), more of them each
round, until the drop fits. What stayed fp32 is recorded.

FP16 (``onnxruntime.transformers.float16``, inputs/outputs kept int64/fp32) is meant for GPUs;
the ONNX Runtime CPU provider runs it too (casting where it lacks fp16 kernels), so it is
validated on CPU here, but it is not faster on CPU.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np

from fastft.core.checks import arg
from fastft.core.errors import FastftError
from fastft.data.collate import pad_rows, sorted_batches
from fastft.export import int8 as fx_int8
from fastft.export import onnx as fx_onnx
from fastft.export import optimize as fx_opt
from fastft.export import quantize as fx_quant
from fastft.export import stages as fx_stages
from fastft.runtime.session import create_session, session_options


def onnx_inputs(path) -> list[str]:
    import onnx

    return [i.name for i in onnx.load(str(path), load_external_data=False).graph.input]


def export_onnx(net, out_file: Path, work: Path | None = None, opset: int = 17) -> dict:
    """Write the fp32 ONNX classifier for the in-memory ``net`` with fastft.export's fp32 stage.

    Its exporter, ORT transformer fusions (for head-pruned models with the pruned head count and
    attention width) and the offline ORT pass, as ``fastft export`` does (without the op's fused
    Attention nodes); the fused, un-offline-optimised graph is kept beside ``out_file`` as
    ``<stem>.fused.onnx`` for quantization. Exporting from memory also covers head-pruned
    models, which transformers 5 cannot reload.
    """
    out_file = Path(out_file)
    plain = out_file.with_name(out_file.stem + ".plain.onnx")
    try:
        return fx_stages.write_fp32(
            net, out_file, fused_path(out_file), plain, input_names=fx_onnx.model_input_names(net), opset=opset
        )
    finally:
        plain.unlink(missing_ok=True)


def fused_path(onnx_file: Path) -> Path:
    return Path(onnx_file).with_name(Path(onnx_file).stem + ".fused.onnx")


def quant_source(onnx_file: Path) -> Path:
    """The graph INT8/fp16 quantisation starts from: the fused graph :func:`export_onnx` kept, else the file."""
    fused = fused_path(onnx_file)
    return fused if fused.is_file() else Path(onnx_file)


def torch_export(net, out_file: Path, opset: int = 17) -> None:
    """Plain ``torch.onnx.export`` with dynamic batch and sequence axes (inputs: ids, mask); no fusions.

    Not on the compress path (that is :func:`export_onnx`): a minimal graph for checks.
    """
    import torch

    net = net.eval()
    ids = torch.ones((2, 8), dtype=torch.long)
    mask = torch.ones((2, 8), dtype=torch.long)
    axes = {
        "input_ids": {0: "batch", 1: "sequence"},
        "attention_mask": {0: "batch", 1: "sequence"},
        "logits": {0: "batch"},
    }
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (ids, mask),
            str(out_file),
            input_names=["input_ids", "attention_mask"],
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
        )


def session(path, threads: int | None = None):
    return create_session(path, session_options(threads=threads, spinning=False, level="all"))


def served(path, threads: int | None = None, ort_attention: str = "auto"):
    """(session, Swaps: its nodes on fastft's kernels): ``path`` as ``fastft.load`` serves it
    (``ort_attention="onnxruntime"``: on ORT's own kernels, as :func:`session`)."""
    from fastft.runtime.ort import served_session

    opts = session_options(threads=threads, spinning=False, level="all")
    return served_session(Path(path), opts, ort_attention=ort_attention)


def scoring_batch(path, batch_size: int = 64) -> int:
    """The batch size to score ``path`` with as it is served: one text per call for a graph that
    quantises activations per call (``fastft.load`` runs those one text per call), else ``batch_size``."""
    from fastft.runtime.ort import quantises_per_call

    return 1 if quantises_per_call(Path(path)) else batch_size


def ort_logits(sess, ids: list[list[int]], pad_id: int, batch_size: int = 64) -> np.ndarray:
    """Logits of an ONNX classifier over pre-tokenized rows (length-sorted batches, input order out)."""
    names = [i.name for i in sess.get_inputs()]
    out = None
    for rows in sorted_batches([len(x) for x in ids], batch_size):
        x, m = pad_rows(ids, rows, pad_id)
        feeds = {"input_ids": x, "attention_mask": m, "token_type_ids": np.zeros_like(x)}
        y = sess.run(None, {k: feeds[k] for k in names})[0].astype(np.float32)
        if out is None:
            out = np.zeros((len(ids), y.shape[1]), dtype=np.float32)
        out[rows] = y
    return out


def accuracy(logits: np.ndarray, labels) -> float:
    return float((logits.argmax(1) == np.asarray(labels)).mean()) if len(labels) else 0.0


def quantizable_nodes(path) -> list[str]:
    """Names of the nodes INT8 quantizes: fastft.export's weight MatMuls/Attention."""
    import onnx

    return fx_quant.select_nodes(onnx.load(str(path), load_external_data=False), "weights")[0]


def quantize_int8(
    src: Path,
    dst: Path,
    *,
    exclude=(),
    static: bool = False,
    calib_ids=None,
    pad_id: int = 0,
    per_channel: bool | None = None,
    embeddings: bool = True,
    calib_method: str = "minmax",
    shaped: Path | None = None,
) -> dict:
    """INT8 ``src`` -> ``dst`` with fastft.export's quantisation stage; ``exclude``: node names kept fp32.

    fastft.export's recipe for this CPU (U8S8 with VNNI, U8U8 without; QOperator for dynamic,
    QDQ for static), calibrated on the pre-tokenized ``calib_ids``. ``shaped``: ``src`` after
    symbolic shape inference (computed when None; pass it to save time over many calls).
    """
    with tempfile.TemporaryDirectory(prefix="fastft-q-", dir=Path(dst).parent) as tmpdir:
        if shaped is None:
            shaped = Path(tmpdir) / "shaped.onnx"
            fx_opt.infer_shapes(src, shaped)
        base = fx_quant.recipe_from_options(
            static=static, per_channel=per_channel, calib_method=calib_method, embeddings=embeddings
        )
        recipe = replace(base, exclude=tuple(exclude))
        reader = None
        if static:
            if not calib_ids:
                raise FastftError(f"{arg('static')} needs calibration data (the training split)")
            reader = fx_quant.CalibrationReader.from_ids(calib_ids, pad_id, onnx_inputs(shaped))
        q = fx_quant.quantize_onnx(shaped, dst, recipe, reader, shaped=shaped, allow_empty=True)
    settings = {
        "recipe": base.name,
        "weight_type": recipe.weight_type,
        "per_channel": recipe.per_channel,
        "reduce_range": recipe.reduce_range,
        "format": recipe.quant_format,
        "mode": "static" if static else "dynamic",
        "nodes_quantized": q["nodes_quantized"],
        "embedding_nodes_quantized": q.get("embedding_nodes_quantized", 0),
        "nodes_excluded": len(set(exclude)),
    }
    if static:
        settings.update(calibration_rows=len(calib_ids), calib_method=calib_method)
    return settings


def quantize_fp16(src: Path, dst: Path) -> dict:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    m = onnx.load(str(src))
    m16 = convert_float_to_float16(m, keep_io_types=True)
    onnx.save(m16, str(dst))
    return {
        "mode": "fp16",
        "keep_io_types": True,
        "note": "for GPUs; ONNX Runtime's CPU provider runs it (inserting casts) but not faster",
    }


def accuracy_aware_int8(
    src: Path,
    dst: Path,
    *,
    val_ids,
    val_labels,
    pad_id: int,
    budget: float,
    base_acc: float | None = None,
    static: bool = False,
    calib_ids=None,
    calib_method: str = "minmax",
    per_channel: bool | None = None,
    embeddings: bool = True,
    sensitivity_rows: int = 256,
    threads: int | None = None,
    progress: bool = True,
    logits_fn=None,
    score_fn=None,
    metric: str = "accuracy",
) -> dict:
    """Quantize ``src`` (the fp32 graph), then keep the most sensitive nodes fp32 until the
    validation accuracy drop is within ``budget``; the result is written to ``dst``.

    Another task plugs in its own score (``compress.token_kd.int8_scoring``): score_fn(session)
    -> the validation score (``metric`` names it), logits_fn(session, ids, pad_id) -> 2-D logits
    compared by the sensitivity ranking [accuracy and :func:`ort_logits`].

    Returns {"accuracy_fp32", "accuracy_int8", "drop", "excluded_nodes", "sensitivity", "rounds", ...}.
    """
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="fastft-aa-", dir=Path(dst).parent))
    try:
        shaped = work / "shaped.onnx"
        fx_opt.infer_shapes(src, shaped)
        settings = {}

        def build(exclude=(), probe: bool = False) -> Path:
            out = work / ("probe.onnx" if probe else "int8.onnx")
            s = quantize_int8(
                src,
                out,
                exclude=exclude,
                static=static,
                calib_ids=calib_ids,
                pad_id=pad_id,
                per_channel=per_channel,
                embeddings=embeddings,
                calib_method=calib_method,
                shaped=shaped,
            )
            if not probe and not settings:
                settings.update(s)
            return out

        logits_of = logits_fn or ort_logits

        def val_acc(path) -> float:
            # scored as served, as the pipeline scores the fp32 stage whose accuracy is base_acc
            sess = served(path, threads)[0]
            if score_fn is not None:
                return score_fn(sess)
            return accuracy(ort_logits(sess, val_ids, pad_id, scoring_batch(path)), val_labels)

        if base_acc is None:
            base_acc = val_acc(src)

        def check(path, exclude) -> tuple[bool, dict]:
            acc = val_acc(path)
            return base_acc - acc <= budget, {"excluded": len(exclude), "accuracy": acc, "drop": base_acc - acc}

        def report(a) -> None:
            acc, k = a.record["accuracy"], a.record["excluded"]
            if not k:
                _log(
                    f"int8 ({settings['mode']}): validation {metric} {acc:.4f} vs fp32 {base_acc:.4f} "
                    f"(drop {base_acc - acc:+.4f}, budget {budget:.4f})",
                    progress,
                )
            else:
                _log(
                    f"int8 with the {k} most sensitive node(s) in fp32: validation {metric} {acc:.4f} "
                    f"(drop {base_acc - acc:+.4f})",
                    progress,
                )

        sub = val_ids[:sensitivity_rows]
        policy = fx_int8.KLSensitivity(
            quantizable_nodes(shaped),
            lambda: logits_of(session(src, threads), sub, pad_id),
            lambda path: logits_of(session(path, threads), sub, pad_id),
            progress=progress,
        )
        search = fx_int8.accuracy_aware(build, check, policy, on_attempt=report)
        acc = search.final.record["accuracy"]
        info = {
            **settings,
            "accuracy_fp32": base_acc,
            "accuracy_int8": acc,
            "drop": base_acc - acc,
            "budget": budget,
            "excluded_nodes": search.final.excluded,
            "rounds": [a.record for a in search.attempts],
        }
        if not search.attempts[0].passed:
            info["sensitivity"] = search.ranking
        info.update(within_budget=base_acc - acc <= budget)
        # as fastft export does: save the graph ORT builds at "extended"
        info["ort_offline"] = fx_opt.ort_offline_optimize(search.final.path, dst, fx_stages.INT8_ORT_LEVEL)
        info["runtime_graph_optimization_level"] = "basic"
    finally:
        shutil.rmtree(work, ignore_errors=True)
    info["time_s"] = round(time.perf_counter() - t0, 2)
    return info


def _log(msg: str, progress: bool, end: str = "\n") -> None:
    if progress:
        print(msg, file=sys.stderr, end=end, flush=True)
