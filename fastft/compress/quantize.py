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

from fastft.core.errors import FastftError

QUANT_OPS = ("MatMul", "Gemm", "Attention", "Gather", "EmbedLayerNormalization")


def onnx_inputs(path) -> list[str]:
    import onnx

    return [i.name for i in onnx.load(str(path), load_external_data=False).graph.input]


def _fx():
    """fastft.export's composable functions, or None where that stage is absent."""
    try:
        from fastft.export import onnx as fx_onnx
        from fastft.export import optimize as fx_opt
        from fastft.export import quantize as fx_quant

        return fx_onnx, fx_opt, fx_quant
    except ImportError:
        return None


def export_onnx(net, out_file: Path, work: Path | None = None, opset: int = 17) -> dict:
    """Write the fp32 ONNX classifier for the in-memory ``net``: (fused graph kept for quantization).

    With fastft.export present: its exporter, ORT transformer fusions (for head-pruned models
    with the pruned head count and attention width) and the offline ORT pass, as ``fastft export``
    does; the fused, un-offline-optimised graph is kept beside ``out_file`` as
    ``<stem>.fused.onnx`` for quantization. Without it: plain ``torch.onnx.export``.
    Exporting from memory also covers head-pruned models, which transformers 5 cannot reload.
    """
    import shutil

    out_file = Path(out_file)
    fused = fused_path(out_file)
    fx = _fx()
    if fx is None:
        torch_export(net, out_file, opset)
        shutil.copy2(out_file, fused)
        return {"exporter": "torch.onnx.export (TorchScript)", "runtime_graph_optimization_level": "all"}
    fx_onnx, fx_opt, _ = fx
    plain = out_file.with_name(out_file.stem + ".plain.onnx")
    info = {"export": fx_onnx.export_onnx(net, plain, input_names=fx_onnx.model_input_names(net), opset=opset)}
    heads = _head_counts(net) if getattr(net.config, "pruned_heads", None) else None
    if heads and len(set(heads)) == 1:  # uniform head pruning: fuse with the pruned attention width
        d = int(net.config.hidden_size // net.config.num_attention_heads)
        info["fusions"] = fx_opt.fuse_transformer(
            plain, fused, net.config, num_heads=heads[0], hidden_size=heads[0] * d
        )
    elif heads:
        shutil.copy2(plain, fused)
        info["fusions"] = "skipped (head counts differ between layers)"
    else:
        info["fusions"] = fx_opt.fuse_transformer(plain, fused, net.config)
    plain.unlink(missing_ok=True)
    info["ort_offline"] = fx_opt.ort_offline_optimize(fused, out_file, "basic")
    info["runtime_graph_optimization_level"] = "basic"
    return info


def _head_counts(net) -> list[int] | None:
    try:
        from fastft.compress.prune import _layers, heads_of

        return [heads_of(layer) for layer in _layers(net)]
    except Exception:  # noqa: BLE001 - not a BERT-style encoder
        return None


def fused_path(onnx_file: Path) -> Path:
    return Path(onnx_file).with_name(Path(onnx_file).stem + ".fused.onnx")


def torch_export(net, out_file: Path, opset: int = 17) -> None:
    """Plain ``torch.onnx.export`` with dynamic batch and sequence axes (inputs: ids, mask)."""
    import warnings

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
    from fastft.runtime.session import create_session, session_options

    return create_session(path, session_options(threads=threads, spinning=False, level="all"))


def ort_logits(sess, ids: list[list[int]], pad_id: int, batch_size: int = 64) -> np.ndarray:
    """Logits of an ONNX classifier over pre-tokenized rows (length-sorted batches, input order out)."""
    names = [i.name for i in sess.get_inputs()]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = None
    for s in range(0, len(order), batch_size):
        rows = order[s : s + batch_size]
        n = max(len(ids[r]) for r in rows)
        x = np.full((len(rows), n), pad_id, dtype=np.int64)
        m = np.zeros((len(rows), n), dtype=np.int64)
        for i, r in enumerate(rows):
            x[i, : len(ids[r])] = ids[r]
            m[i, : len(ids[r])] = 1
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
    """Names of the nodes INT8 quantizes: fastft.export's weight MatMuls/Attention, else weight MatMul/Gemm."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    fx = _fx()
    if fx is not None:
        return fx[2].select_nodes(m, "weights")[0]
    inits = {t.name for t in m.graph.initializer}
    return [n.name for n in m.graph.node if n.op_type in ("MatMul", "Gemm") and any(i in inits for i in n.input)]


def quantize_int8(
    src: Path,
    dst: Path,
    *,
    exclude=(),
    static: bool = False,
    calib_ids=None,
    pad_id: int = 0,
    per_channel: bool | None = None,
    shaped: Path | None = None,
) -> dict:
    """INT8 ``src`` -> ``dst`` with ONNX Runtime; ``exclude``: node names kept fp32.

    Follows fastft.export's recipe for this CPU (U8S8 with VNNI, U8U8 without; QOperator for
    dynamic, QDQ for static) when that stage is present. ``shaped``: ``src`` after symbolic
    shape inference (computed when None; pass it to save time over many calls).
    """
    import logging
    import shutil
    import tempfile

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # onnxruntime.quantization warns on the root logger ("pre-processing")
    tmpdir = None
    try:
        fx = _fx()
        if shaped is None and fx is not None:
            tmpdir = tempfile.mkdtemp(prefix="fastft-q-", dir=Path(dst).parent)
            shaped = Path(tmpdir) / "shaped.onnx"
            fx[1].infer_shapes(src, shaped)
        return _quantize_int8(
            shaped or src,
            dst,
            exclude=set(exclude),
            static=static,
            calib_ids=calib_ids,
            pad_id=pad_id,
            per_channel=per_channel,
            fx=fx,
        )
    finally:
        root.setLevel(level)
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)


def _quantize_int8(src, dst, *, exclude, static, calib_ids, pad_id, per_channel, fx) -> dict:
    import shutil
    import warnings

    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    qtype = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    if fx is not None:
        recipe = fx[2].recipe_from_options(static=static, per_channel=per_channel)
        nodes, op_types = fx[2].select_nodes(onnx.load(str(src), load_external_data=False), recipe.scope)
        settings = {
            "recipe": recipe.name,
            "weight_type": recipe.weight_type,
            "per_channel": recipe.per_channel,
            "reduce_range": recipe.reduce_range,
            "format": recipe.quant_format,
        }
        wtype, atype, pc, rr = (
            qtype[recipe.weight_type],
            qtype[recipe.activation_type],
            recipe.per_channel,
            recipe.reduce_range,
        )
        fmt = QuantFormat.QDQ if static else QuantFormat.QOperator
    else:
        nodes, op_types = quantizable_nodes(src), ["MatMul", "Gemm"]
        pc = bool(per_channel) if per_channel is not None else static
        wtype, atype, rr, fmt = QuantType.QInt8, QuantType.QUInt8, False, QuantFormat.QDQ if static else None
        settings = {"weight_type": "int8", "per_channel": pc}
    nodes = [n for n in nodes if n not in exclude]
    settings.update(mode="static" if static else "dynamic", nodes_quantized=len(nodes), nodes_excluded=len(exclude))
    if not nodes:  # everything kept fp32
        shutil.copy2(src, dst)
        return settings
    common = dict(
        op_types_to_quantize=op_types, nodes_to_quantize=nodes, per_channel=pc, reduce_range=rr, weight_type=wtype
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not static:
            quantize_dynamic(str(src), str(dst), extra_options={"MatMulConstBOnly": True}, **common)
            return settings
        if not calib_ids:
            raise FastftError("--static needs calibration data (the training split)")
        quantize_static(
            str(src),
            str(dst),
            _calib_reader(calib_ids, pad_id, onnx_inputs(src)),
            quant_format=fmt,
            activation_type=atype,
            extra_options={"MatMulConstBOnly": True},
            **common,
        )
    settings["calibration_rows"] = len(calib_ids)
    return settings


def _calib_reader(ids, pad_id, names):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(_CalibReader, CalibrationDataReader):
        pass

    return Reader(ids, pad_id, names)


class _CalibReader:
    """onnxruntime CalibrationDataReader over pre-tokenized rows, batches of 16."""

    def __init__(self, ids, pad_id, names):
        self.batches = []
        for s in range(0, len(ids), 16):
            rows = ids[s : s + 16]
            n = max(len(r) for r in rows)
            x = np.full((len(rows), n), pad_id, dtype=np.int64)
            m = np.zeros_like(x)
            for i, r in enumerate(rows):
                x[i, : len(r)] = r
                m[i, : len(r)] = 1
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
    per_channel: bool | None = None,
    sensitivity_rows: int = 256,
    threads: int | None = None,
    progress: bool = True,
) -> dict:
    """Quantize ``src`` (the fp32 graph), then keep the most sensitive nodes fp32 until the
    validation accuracy drop is within ``budget``; the result is written to ``dst``.

    Returns {"accuracy_fp32", "accuracy_int8", "drop", "excluded_nodes", "sensitivity", "rounds", ...}.
    """
    import shutil
    import tempfile

    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="fastft-aa-", dir=Path(dst).parent))
    try:
        fx = _fx()
        shaped = None
        if fx is not None:
            shaped = work / "shaped.onnx"
            fx[1].infer_shapes(src, shaped)
        raw = work / "int8.onnx"

        def build(exclude=(), out=raw) -> dict:
            return quantize_int8(
                src,
                out,
                exclude=exclude,
                static=static,
                calib_ids=calib_ids,
                pad_id=pad_id,
                per_channel=per_channel,
                shaped=shaped,
            )

        def val_acc(path) -> float:
            return accuracy(ort_logits(session(path, threads), val_ids, pad_id), val_labels)

        if base_acc is None:
            base_acc = val_acc(src)
        settings = build()
        acc = val_acc(raw)
        rounds = [{"excluded": 0, "accuracy": acc, "drop": base_acc - acc}]
        info = {
            **settings,
            "accuracy_fp32": base_acc,
            "accuracy_int8": acc,
            "drop": base_acc - acc,
            "budget": budget,
            "excluded_nodes": [],
            "rounds": rounds,
        }
        _log(
            f"int8 ({settings['mode']}): validation accuracy {acc:.4f} vs fp32 {base_acc:.4f} "
            f"(drop {base_acc - acc:+.4f}, budget {budget:.4f})",
            progress,
        )
        if base_acc - acc > budget:
            # sensitivity: each node quantized alone; mean KL of its logits from fp32's on a subset
            nodes = quantizable_nodes(shaped or src)
            sub = val_ids[:sensitivity_rows]
            ref = ort_logits(session(src, threads), sub, pad_id)
            probe = work / "probe.onnx"
            sens = {}
            for i, node in enumerate(nodes):
                build([n for n in nodes if n != node], probe)
                sens[node] = _kl(ref, ort_logits(session(probe, threads), sub, pad_id))
                _log(f"sensitivity {i + 1}/{len(nodes)}: {node} KL {sens[node]:.3g}      ", progress, end="\r")
            _log("", progress)
            ranked = sorted(nodes, key=lambda n: -sens[n])
            k = 1
            while base_acc - acc > budget and k <= len(ranked):
                excluded = ranked[:k]
                build(excluded)
                acc = val_acc(raw)
                rounds.append({"excluded": k, "accuracy": acc, "drop": base_acc - acc})
                _log(
                    f"int8 with the {k} most sensitive node(s) in fp32: validation accuracy {acc:.4f} "
                    f"(drop {base_acc - acc:+.4f})",
                    progress,
                )
                info["excluded_nodes"] = excluded
                if k == len(ranked):
                    break
                k = min(len(ranked), k * 2)
            info["sensitivity"] = dict(sorted(sens.items(), key=lambda kv: -kv[1]))
        info.update(accuracy_int8=acc, drop=base_acc - acc, within_budget=base_acc - acc <= budget)
        if fx is not None:  # as fastft export does: save the graph ORT builds at "extended"
            info["ort_offline"] = fx[1].ort_offline_optimize(raw, dst, "extended")
            info["runtime_graph_optimization_level"] = "basic"
        else:
            shutil.copy2(raw, dst)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    info["time_s"] = round(time.perf_counter() - t0, 2)
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
