"""Baselines for benchmarks: the peer pipeline (as Optimum does it) and a plain export.

``peer_pipeline`` reproduces Optimum's ONNX Runtime recipe without installing Optimum:

1. plain torch.onnx export (same exporter as fastft, eager attention so the fusions apply —
   the strongest version of the peer);
2. ``onnxruntime.transformers.optimizer.optimize_model(model_type="bert", num_heads,
   hidden_size from the config, opt_level=2)`` — Optimum's "O2" (ORT extended + fusions,
   default FusionOptions);
3. ``quantize_dynamic`` with Optimum's default dynamic config (``AutoQuantizationConfig.
   avx512_vnni(is_static=False)``): per-tensor, U8S8, QOperator, all MatMuls + Attention.

Step 3 on the fused graph fails today with "Unable to find data type for weight_name=..."
(onnx shape inference does not type the tensors feeding contrib ops). The pipeline catches
it and re-runs the quantiser on the same graph after ORT's symbolic shape inference, which
is the fix Optimum's users apply; ``record["quantize_fallback"]`` says when that happened.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path


def _load(model_dir):
    from fastft.models.model_dir import load_model_dir

    return load_model_dir(model_dir)[0]


def plain_export(model_dir: str | os.PathLike, path: str | os.PathLike, *, opset: int = 17) -> dict:
    """The "plain ONNX Runtime" baseline: torch.onnx export, no graph optimisation baked in."""
    from fastft.export.onnx import export_onnx

    net = _load(model_dir)
    info = export_onnx(net, path, opset=opset)
    return {"path": str(path), **info, "optimization": None}


def peer_pipeline(model_dir: str | os.PathLike, workdir: str | os.PathLike, *, opset: int = 17) -> dict:
    """Run the peer pipeline; returns ``{"fp32_optimized": path, "int8": path, "plain": path, "record": {...}}``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    from fastft.export.onnx import export_onnx, set_ir_version
    from fastft.export.optimize import infer_shapes, op_counts, quiet_ort_logging

    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    net = _load(model_dir)
    plain, fused, int8 = work / "peer_plain.onnx", work / "peer_optimized.onnx", work / "peer_int8.onnx"
    record = {"export": export_onnx(net, plain, opset=opset)}
    heads, hidden = int(net.config.num_attention_heads), int(net.config.hidden_size)
    with warnings.catch_warnings(), quiet_ort_logging():
        warnings.simplefilter("ignore")
        opt = optimize_model(
            str(plain), model_type="bert", num_heads=heads, hidden_size=hidden, opt_level=2, use_gpu=False
        )
        opt.save_model_to_file(str(fused))
    set_ir_version(fused)
    record["optimize"] = {
        "tool": "onnxruntime.transformers.optimizer",
        "model_type": "bert",
        "opt_level": 2,
        "num_heads": heads,
        "hidden_size": hidden,
        "ops": op_counts(fused),
    }
    qargs = {
        "per_channel": False,
        "reduce_range": False,
        "weight_type": QuantType.QInt8,
        "op_types_to_quantize": ["MatMul", "Attention"],
    }
    record["quantize"] = {
        "tool": "onnxruntime.quantization.quantize_dynamic",
        "format": "QOperator",
        "activation_type": "uint8",
        "weight_type": "int8",
        "per_channel": False,
        "reduce_range": False,
        "op_types": qargs["op_types_to_quantize"],
    }
    with warnings.catch_warnings(), quiet_ort_logging():
        warnings.simplefilter("ignore")
        try:
            quantize_dynamic(str(fused), str(int8), **qargs)
            record["quantize_fallback"] = None
        except RuntimeError as exc:
            if "Unable to find data type" not in str(exc):
                raise
            shaped = work / "peer_optimized_shaped.onnx"
            method = infer_shapes(fused, shaped)
            quantize_dynamic(str(shaped), str(int8), **qargs)
            shaped.unlink(missing_ok=True)
            record["quantize_fallback"] = f"'Unable to find data type' on the fused graph; quantised after {method}"
    set_ir_version(int8)
    record["int8_ops"] = op_counts(int8)
    return {"fp32_optimized": str(fused), "int8": str(int8), "plain": str(plain), "record": record}
