"""Quantization through ONNX Runtime: INT8 (dynamic, or static with calibration) and FP16.

Accuracy-aware INT8: quantize every weight MatMul; if the validation accuracy drops by more
than ``accuracy_budget``, measure each quantizable node's sensitivity (quantize that node
alone; mean KL of the logits against fp32 on a calibration subset) and keep the most
sensitive nodes in fp32 (``nodes_to_exclude``), more of them each round, until the drop fits.
What stayed fp32 is recorded.

FP16 (``onnxruntime.transformers.float16``, inputs/outputs kept int64/fp32) is meant for GPUs;
the ONNX Runtime CPU provider runs it too (casting where it lacks fp16 kernels), so it is
validated on CPU here, but it is not faster on CPU.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from fastft.errors import FastftError

QUANT_OPS = ("MatMul", "Gemm", "Attention", "Gather", "EmbedLayerNormalization")


def onnx_inputs(path) -> list[str]:
    import onnx

    return [i.name for i in onnx.load(str(path), load_external_data=False).graph.input]


def export_onnx(model_dir: Path, net, out_file: Path, opset: int = 17) -> dict:
    """Write an fp32 ONNX classifier for ``net`` (saved in ``model_dir``) to ``out_file``.

    Uses ``fastft.export`` (export + ORT graph optimisation) when present and the directory
    loads with plain transformers; a head-pruned model (which transformers 5 cannot reload)
    is exported from memory with ``torch.onnx.export``.
    """
    info = {}
    pruned_heads = bool(getattr(net.config, "pruned_heads", None))
    if not pruned_heads:
        try:
            from fastft.export import export as fx_export
        except ImportError:
            fx_export = None
        if fx_export is not None:
            import shutil
            import tempfile

            tmp = Path(tempfile.mkdtemp(prefix="fastft-export-", dir=out_file.parent))
            try:
                res = fx_export(str(model_dir), str(tmp / "out"), int8=False, opset=opset, overwrite=True,
                                validate=False)
                src = tmp / "out" / "model.onnx"
                if not src.is_file():
                    raise FastftError(f"fastft.export wrote no model.onnx in {tmp / 'out'}")
                shutil.move(str(src), out_file)
                info = {"exporter": "fastft.export", "onnx_meta": (res or {}).get("onnx") if isinstance(res, dict)
                        else None}
                return info
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    torch_export(net, out_file, opset)
    return {"exporter": "torch.onnx.export (TorchScript)"}


def torch_export(net, out_file: Path, opset: int = 17) -> None:
    """Plain ``torch.onnx.export`` with dynamic batch and sequence axes (inputs: ids, mask)."""
    import warnings

    import torch

    net = net.eval()
    ids = torch.ones((2, 8), dtype=torch.long)
    mask = torch.ones((2, 8), dtype=torch.long)
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
            "logits": {0: "batch"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (ids, mask), str(out_file), input_names=["input_ids", "attention_mask"],
                          output_names=["logits"], dynamic_axes=axes, opset_version=opset, dynamo=False)


def session(path, threads: int | None = None):
    from fastft.runtime.session import create_session, session_options

    return create_session(path, session_options(threads=threads, spinning=False, level="all"))


def ort_logits(sess, ids: list[list[int]], pad_id: int, batch_size: int = 64) -> np.ndarray:
    """Logits of an ONNX classifier over pre-tokenized rows (length-sorted batches, input order out)."""
    names = [i.name for i in sess.get_inputs()]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = None
    for s in range(0, len(order), batch_size):
        rows = order[s:s + batch_size]
        n = max(len(ids[r]) for r in rows)
        x = np.full((len(rows), n), pad_id, dtype=np.int64)
        m = np.zeros((len(rows), n), dtype=np.int64)
        for i, r in enumerate(rows):
            x[i, :len(ids[r])] = ids[r]
            m[i, :len(ids[r])] = 1
        feeds = {"input_ids": x, "attention_mask": m, "token_type_ids": np.zeros_like(x)}
        y = sess.run(None, {k: feeds[k] for k in names})[0].astype(np.float32)
        if out is None:
            out = np.zeros((len(ids), y.shape[1]), dtype=np.float32)
        out[rows] = y
    return out


def accuracy(logits: np.ndarray, labels) -> float:
    return float((logits.argmax(1) == np.asarray(labels)).mean()) if len(labels) else 0.0


def _kl(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    def logsm(x):
        x = x - x.max(1, keepdims=True)
        return x - np.log(np.exp(x).sum(1, keepdims=True))

    lp, lq = logsm(p_logits), logsm(q_logits)
    return float((np.exp(lp) * (lp - lq)).sum(1).mean())


def quantizable_nodes(path) -> list[str]:
    """Names of nodes dynamic INT8 would quantize: weight MatMul/Gemm/Attention/Gather nodes."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    inits = {t.name for t in m.graph.initializer}
    out = []
    for n in m.graph.node:
        if n.op_type in QUANT_OPS and any(i in inits for i in n.input):
            out.append(n.name)
    return out


def quantize_int8(src: Path, dst: Path, *, exclude=(), static: bool = False, calib_ids=None, pad_id: int = 0,
                  per_channel: bool | None = None) -> dict:
    """INT8 ``src`` -> ``dst`` with ONNX Runtime; ``exclude``: node names kept fp32."""
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # onnxruntime.quantization warns on the root logger ("pre-processing")
    try:
        return _quantize_int8(src, dst, exclude=exclude, static=static, calib_ids=calib_ids, pad_id=pad_id,
                              per_channel=per_channel)
    finally:
        root.setLevel(level)


def _quantize_int8(src, dst, *, exclude, static, calib_ids, pad_id, per_channel) -> dict:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    exclude = list(exclude)
    if not static:
        pc = bool(per_channel) if per_channel is not None else False
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=pc,
                         nodes_to_exclude=exclude or None, extra_options={"MatMulConstBOnly": True})
        return {"mode": "dynamic", "weight_type": "QInt8", "per_channel": pc}
    if not calib_ids:
        raise FastftError("--static needs calibration data (the training split)")
    pc = True if per_channel is None else bool(per_channel)
    names = onnx_inputs(src)
    reader = _CalibReader(calib_ids, pad_id, names)
    quantize_static(str(src), str(dst), reader, quant_format=QuantFormat.QDQ, per_channel=pc,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, nodes_to_exclude=exclude or None,
                    op_types_to_quantize=["MatMul", "Gemm"],
                    extra_options={"ActivationSymmetric": True, "MatMulConstBOnly": True})
    return {"mode": "static", "format": "QDQ", "per_channel": pc, "calibration_rows": len(calib_ids)}


class _CalibReader:
    """onnxruntime CalibrationDataReader over pre-tokenized rows, batches of 16."""

    def __init__(self, ids, pad_id, names):
        self.batches = []
        for s in range(0, len(ids), 16):
            rows = ids[s:s + 16]
            n = max(len(r) for r in rows)
            x = np.full((len(rows), n), pad_id, dtype=np.int64)
            m = np.zeros_like(x)
            for i, r in enumerate(rows):
                x[i, :len(r)] = r
                m[i, :len(r)] = 1
            feeds = {"input_ids": x, "attention_mask": m, "token_type_ids": np.zeros_like(x)}
            self.batches.append({k: feeds[k] for k in names})
        self.it = iter(self.batches)

    def get_next(self):
        return next(self.it, None)

    def rewind(self):
        self.it = iter(self.batches)


def quantize_fp16(src: Path, dst: Path) -> dict:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    m = onnx.load(str(src))
    m16 = convert_float_to_float16(m, keep_io_types=True)
    onnx.save(m16, str(dst))
    return {"mode": "fp16", "keep_io_types": True,
            "note": "for GPUs; ONNX Runtime's CPU provider runs it (inserting casts) but not faster"}


def accuracy_aware_int8(src: Path, dst: Path, *, val_ids, val_labels, pad_id: int, budget: float,
                        base_acc: float | None = None, static: bool = False, calib_ids=None,
                        per_channel: bool | None = None, sensitivity_rows: int = 256, threads: int | None = None,
                        progress: bool = True) -> dict:
    """Quantize, then keep the most sensitive nodes fp32 until the validation drop is within ``budget``.

    Returns {"accuracy_fp32", "accuracy_int8", "drop", "excluded_nodes", "sensitivity", "rounds", ...}.
    """
    t0 = time.perf_counter()
    if base_acc is None:
        base_acc = accuracy(ort_logits(session(src, threads), val_ids, pad_id), val_labels)
    settings = quantize_int8(src, dst, static=static, calib_ids=calib_ids, pad_id=pad_id, per_channel=per_channel)
    acc = accuracy(ort_logits(session(dst, threads), val_ids, pad_id), val_labels)
    rounds = [{"excluded": 0, "accuracy": acc, "drop": base_acc - acc}]
    info = {**settings, "accuracy_fp32": base_acc, "accuracy_int8": acc, "drop": base_acc - acc,
            "budget": budget, "excluded_nodes": [], "rounds": rounds}
    _log(f"int8 ({settings['mode']}): validation accuracy {acc:.4f} vs fp32 {base_acc:.4f} "
         f"(drop {base_acc - acc:+.4f}, budget {budget:.4f})", progress)
    if base_acc - acc <= budget:
        info["time_s"] = round(time.perf_counter() - t0, 2)
        return info
    # sensitivity: each node quantized alone, KL of its logits from fp32 on a subset
    nodes = quantizable_nodes(src)
    sub = val_ids[:sensitivity_rows]
    ref = ort_logits(session(src, threads), sub, pad_id)
    tmp = dst.with_name(dst.stem + ".probe.onnx")
    sens = {}
    for i, node in enumerate(nodes):
        others = [n for n in nodes if n != node]
        quantize_int8(src, tmp, exclude=others, static=static, calib_ids=calib_ids, pad_id=pad_id,
                      per_channel=per_channel)
        sens[node] = _kl(ref, ort_logits(session(tmp, threads), sub, pad_id))
        _log(f"sensitivity {i + 1}/{len(nodes)}: {node} KL {sens[node]:.3g}", progress, end="\r")
    _log("", progress)
    ranked = sorted(nodes, key=lambda n: -sens[n])
    k = 1
    while base_acc - acc > budget and k <= len(ranked):
        excluded = ranked[:k]
        quantize_int8(src, dst, exclude=excluded, static=static, calib_ids=calib_ids, pad_id=pad_id,
                      per_channel=per_channel)
        acc = accuracy(ort_logits(session(dst, threads), val_ids, pad_id), val_labels)
        rounds.append({"excluded": k, "accuracy": acc, "drop": base_acc - acc})
        _log(f"int8 with {k} most sensitive node(s) in fp32: validation accuracy {acc:.4f} "
             f"(drop {base_acc - acc:+.4f})", progress)
        info["excluded_nodes"] = excluded
        if k == len(ranked):
            break
        k = min(len(ranked), k * 2)
    tmp.unlink(missing_ok=True)
    info.update(accuracy_int8=acc, drop=base_acc - acc, within_budget=base_acc - acc <= budget,
                sensitivity=dict(sorted(sens.items(), key=lambda kv: -kv[1])),
                time_s=round(time.perf_counter() - t0, 2))
    return info


def _log(msg: str, progress: bool, end: str = "\n") -> None:
    if progress:
        print(msg, file=sys.stderr, end=end, flush=True)


def quantize(model, config=None, **overrides):
    """Quantize the model directory ``model`` (INT8 or FP16 ONNX); see :class:`CompressConfig`.

        res = fastft.quantize("runs/student", CompressConfig(quantize="int8"), output="runs/student-int8")

    Returns a :class:`fastft.compress.recipe.StageResult`; the output directory holds model.onnx
    (fp32) and model_int8.onnx (or model_fp16.onnx).
    """
    from fastft.compress.recipe import run_stage

    return run_stage("quantize", model, config, **overrides)
