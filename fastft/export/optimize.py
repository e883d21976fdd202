"""Graph optimisation for ONNX Runtime, done once at export and saved with the model.

Three steps:

1. ``onnxruntime.transformers.optimizer`` (python pattern fusions, ``opt_level=0`` so no
   ORT session pass is mixed in): Attention, EmbedLayerNormalization,
   SkipLayerNormalization, BiasGelu/FastGelu. These are com.microsoft contrib ops that the
   CPU and CUDA providers both implement, so the graph stays portable across them.
2. ORT's own offline optimiser (``SessionOptions.optimized_model_filepath``) at ``basic``
   or ``extended``: extended adds CPU-provider-specific fusions (e.g. MatMulIntegerToFloat,
   DynamicQuantizeMatMul for INT8) — the saved graph is then for the CPU provider only,
   which is recorded (``"providers": ["CPUExecutionProvider"]``).
3. After ORT's pass, :mod:`fastft.export.layernorm` splits SkipLayerNormalization back into
   Add + LayerNormalization where a probe on this machine finds that faster (ORT 1.32's CPU
   kernel for it is 2.6-3.3x slower than Add + LayerNormalization at seq 512).

The result says what was baked in, so the runtime can open the file at a cheaper level
(``runtime_graph_optimization_level``) instead of re-optimising at every start.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from pathlib import Path

from fastft.core.errors import FastftError, first_line

ORT_LEVELS = ("disable", "basic", "extended", "all")
# bumped whenever the saved graph changes for the same model (caches of exports key on it)
GRAPH_REVISION = 2  # 2: SkipLayerNormalization split where it pays
FUSED_OPS = (
    "Attention",
    "MultiHeadAttention",
    "EmbedLayerNormalization",
    "SkipLayerNormalization",
    "LayerNormalization",
    "BiasGelu",
    "FastGelu",
    "Gelu",
    "QAttention",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
    "FusedMatMul",
)


def op_counts(model) -> dict:
    """``{op_type: count}`` of an onnx ModelProto or file."""
    import onnx

    if not hasattr(model, "graph"):
        model = onnx.load(str(model), load_external_data=False)
    return dict(Counter(n.op_type for n in model.graph.node).most_common())


def contrib_ops(model) -> list[str]:
    """Op types from the com.microsoft domain (ORT contrib ops)."""
    import onnx

    if not hasattr(model, "graph"):
        model = onnx.load(str(model), load_external_data=False)
    return sorted({n.op_type for n in model.graph.node if n.domain == "com.microsoft"})


def fuse_transformer(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    config=None,
    *,
    model_type: str = "bert",
    num_heads: int | None = None,
    hidden_size: int | None = None,
) -> dict:
    """Run ORT's transformer fusions on ``src`` and save to ``dst``; returns what was fused.

    ``num_heads``/``hidden_size`` default to the HF ``config``'s (0 lets ORT guess, which
    fails for Attention on graphs exported from transformers 5.x).
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    from fastft.export.onnx import set_ir_version

    heads = num_heads if num_heads is not None else int(getattr(config, "num_attention_heads", 0) or 0)
    hidden = hidden_size if hidden_size is not None else int(getattr(config, "hidden_size", 0) or 0)
    options = FusionOptions(model_type)
    # BERT's default is a 1-D "mask index" (count of ones) that is only right for right-padded
    # batches; the raw 2-D mask is right for any mask (left padding, holes) at no measurable cost.
    options.use_raw_attention_mask(True)
    before = op_counts(src)
    try:
        with warnings.catch_warnings(), _quiet_ort_logging():
            warnings.simplefilter("ignore")
            opt = optimize_model(
                str(src),
                model_type=model_type,
                num_heads=heads,
                hidden_size=hidden,
                optimization_options=options,
                opt_level=0,
                use_gpu=False,
            )
            opt.save_model_to_file(str(dst))
    except Exception as exc:
        raise FastftError(f"ONNX graph optimisation failed ({type(exc).__name__}: {str(exc)[:200]})") from exc
    set_ir_version(dst)
    after = op_counts(dst)
    return {
        "tool": "onnxruntime.transformers.optimizer",
        "model_type": model_type,
        "num_heads": heads,
        "hidden_size": hidden,
        "fused": {op: n for op, n in after.items() if op in FUSED_OPS and n > before.get(op, 0)},
        "nodes_before": sum(before.values()),
        "nodes_after": sum(after.values()),
        "attention_mask_format": "raw 2-D mask",
    }


def ort_offline_optimize(src: str | os.PathLike, dst: str | os.PathLike, level: str = "basic") -> dict:
    """Save the graph ONNX Runtime builds at ``level`` (basic/extended/all) for the CPU provider,
    with its SkipLayerNormalization nodes split where that runs faster here (:mod:`fastft.export.layernorm`)."""
    import onnxruntime as ort

    from fastft.export.onnx import set_ir_version

    if level not in ORT_LEVELS[1:]:
        raise FastftError(f"graph optimisation level must be one of {', '.join(ORT_LEVELS[1:])} (got {level!r})")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort_level(level)
    so.optimized_model_filepath = str(dst)
    so.log_severity_level = 3
    try:
        ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise FastftError(f"ONNX Runtime could not optimise {Path(src).name} ({first_line(exc, 200)})") from exc
    set_ir_version(dst)
    from fastft.export.layernorm import maybe_split

    split = maybe_split(dst)  # after ORT's passes, which would fuse the split form back
    return {
        "tool": "onnxruntime.SessionOptions.optimized_model_filepath",
        "level": level,
        "providers": ["CPUExecutionProvider"] if level in ("extended", "all") else None,
        "contrib_ops": contrib_ops(dst),
        "skip_layernorm": split,
    }


def ort_level(name: str):
    import onnxruntime as ort

    return {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[name]


def infer_shapes(src: str | os.PathLike, dst: str | os.PathLike) -> str:
    """Annotate every tensor with its type/shape, contrib ops included; returns the method used.

    Quantising a fused graph needs this: onnx's own shape inference does not know the
    com.microsoft ops (SkipLayerNormalization, Attention...), so the tensors feeding them
    have no type and ``quantize_dynamic`` stops with "Unable to find data type for
    weight_name=...MatMul_output_0". ORT's symbolic shape inference knows the contrib ops.
    """
    import onnx

    from fastft.export.onnx import save_model

    model = onnx.load(str(src))
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True, guess_output_rank=True)
        method = "onnxruntime symbolic_shape_infer"
    except Exception:  # noqa: BLE001 - fall back to onnx's inference (enough for unfused graphs)
        inferred = onnx.shape_inference.infer_shapes(model)
        method = "onnx.shape_inference"
    save_model(inferred, dst)
    return method


class _quiet_ort_logging:
    """Silence the ``logging`` chatter of onnxruntime.transformers/quantization."""

    def __enter__(self):
        import logging

        self._loggers = [
            logging.getLogger(n) for n in ("", "onnxruntime", "fusion", "onnx_model", "onnxruntime.transformers")
        ]
        self._levels = [lg.level for lg in self._loggers]
        for lg in self._loggers:
            lg.setLevel(logging.ERROR)
        return self

    def __exit__(self, *exc):
        for lg, lvl in zip(self._loggers, self._levels):
            lg.setLevel(lvl)
        return False


quiet_ort_logging = _quiet_ort_logging
