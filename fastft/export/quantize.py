"""INT8 quantisation of an exported graph with ``onnxruntime.quantization``.

An :class:`Int8Recipe` says how: dynamic or static (calibrated on training text), which
nodes (``scope``), U8U8 or U8S8, ``reduce_range``, per-channel, QOperator or QDQ.
:func:`default_recipe` picks one from the CPU's flags (see bench/bench_int8.py and
bench/results/int8_choices.json for the measurements behind it).

Quantising works on the fused graph: it first runs ORT's symbolic shape inference
(:func:`fastft.export.optimize.infer_shapes`), because onnx's own shape inference leaves
the outputs feeding contrib ops untyped and the quantiser then fails with "Unable to find
data type for weight_name=...MatMul_output_0".
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from fastft.core.errors import FastftError
from fastft.core.stale import scratch_dir
from fastft.export.calibration import CalibrationReader, as_ort_reader
from fastft.export.calibration import TextCalibrationReader as TextCalibrationReader  # re-exported

SCOPES = ("all", "weights", "ffn", "no-attention")
CALIB_METHODS = ("minmax", "entropy", "percentile")


@dataclass(frozen=True)
class Int8Recipe:
    """How to quantise.

    mode: ``dynamic`` (activations quantised at run time) or ``static`` (calibrated scales).
    scope: ``all`` = every MatMul and fused Attention (QKV projection); ``weights`` = only
        MatMuls/Attention with a constant weight (never activation x activation, i.e. the
        attention scores of an unfused graph); ``ffn`` = only the two feed-forward MatMuls;
        ``no-attention`` = weight MatMuls except the attention block (QKV, scores, output).
    weight_type: ``int8`` (U8S8) or ``uint8`` (U8U8); activations are uint8 for dynamic.
    reduce_range: 7-bit weights, avoids the U8S8 int16 saturation of non-VNNI AVX2 kernels.
    embeddings: also quantise the embedding tables (QOperator only): ORT's QEmbedLayerNormalization
        (word, position and token-type tables, LayerNorm gamma/beta: uint8 per tensor) for a fused
        graph, a quantised Gather for a plain one. The word table is most of a small encoder's file
        (minilm-l6: 47 of 87 MB); measured on the movie-snippets teacher: file 56.4 -> 22.3 MB,
        label agreement with fp32 97.8% -> 97.7% (bench/results/int8_embeddings.json).
    """

    mode: str = "dynamic"
    scope: str = "all"
    weight_type: str = "int8"
    activation_type: str = "uint8"
    per_channel: bool = False
    reduce_range: bool = False
    quant_format: str = "QOperator"
    calib_method: str = "minmax"
    calib_size: int = 256
    reason: str = ""
    embeddings: bool = True
    exclude: tuple = ()
    extra_options: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if not (k == "extra_options" and not v)}
        d["exclude"] = list(self.exclude)
        return d

    @property
    def name(self) -> str:
        w = {"int8": "s8", "uint8": "u8"}[self.weight_type]
        a = {"int8": "s8", "uint8": "u8"}[self.activation_type]
        parts = [
            self.mode,
            self.scope,
            f"{a}{w}",
            "perchannel" if self.per_channel else "pertensor",
            self.quant_format.lower(),
        ]
        if self.reduce_range:
            parts.append("rr")
        if self.embeddings and self.quant_format.lower() == "qoperator":
            parts.append("emb8")
        if self.exclude:
            parts.append(f"fp32x{len(self.exclude)}")
        return "-".join(parts)


def default_recipe(cpu: dict | None = None, *, static: bool = False) -> Int8Recipe:
    """The INT8 recipe for this kind of CPU (from ``fastft.env.cpu_info()``).

    Measured on minilm-l6 at batch 1, 2 threads (bench/results/int8_choices.json, CPU time):
    on this AVX-512 VNNI CPU, U8S8 dynamic INT8 of every weight MatMul + fused Attention is
    2.0x (seq 128) / 1.7x (seq 512) faster than fp32; U8U8 only 1.4x / 1.3x; leaving the
    attention block or the FFN in fp32 is slower; per-channel and reduce_range cost nothing;
    static (QDQ or QOperator) is slower than dynamic. On the teacher, per-channel gives the
    best agreement with fp32 (bench/results/int8_accuracy_teacher.json) and reduce_range
    per-tensor the worst. Hence U8S8 per-channel on VNNI CPUs. Without VNNI, ORT's U8S8
    AVX2 path (vpmaddubsw) sums pairs in int16 and can saturate: ORT documents reduce_range
    (7-bit weights) as the fix, which keeps the fast U8S8 kernels; per-channel wins back the
    lost bit (per-channel + reduce_range matched per-channel's agreement here). U8U8 is the
    other saturation-free choice but was 1.3-1.6x slower wherever we could measure it.
    """
    if cpu is None:
        from fastft.core.system import cpu_info

        cpu = cpu_info()
    flags = set(cpu.get("flags") or [])
    vnni = bool(cpu.get("vnni")) or bool(flags & {"avx512_vnni", "avx_vnni", "avx512vnni", "avxvnni"})
    mode = "static" if static else "dynamic"
    if vnni:
        return Int8Recipe(
            mode=mode,
            scope="weights",
            weight_type="int8",
            per_channel=True,
            reduce_range=False,
            quant_format="QOperator" if not static else "QDQ",
            reason="VNNI CPU: U8S8 runs on vpdpbusd (no int16 saturation) and measured 1.3-1.6x "
            "faster than U8U8; per-channel weights cost nothing in speed and gave the best "
            "fp32 agreement (bench/results/int8_choices.json)",
        )
    return Int8Recipe(
        mode=mode,
        scope="weights",
        weight_type="int8",
        per_channel=True,
        reduce_range=True,
        quant_format="QOperator" if not static else "QDQ",
        reason="no VNNI: ORT's U8S8 AVX2 kernels (vpmaddubsw) can saturate int16, so weights are "
        "7-bit (reduce_range, ORT's documented fix) and per-channel to win back the lost bit; "
        "U8U8 avoids saturation too but was 1.3-1.6x slower in our measurements",
    )


def _qtype(name: str):
    from onnxruntime.quantization import QuantType

    try:
        return {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}[name]
    except KeyError:
        raise FastftError(f"quantisation type must be int8 or uint8 (got {name!r})") from None


def select_nodes(model, scope: str) -> tuple[list[str], list[str]]:
    """(node names to quantise, op types) for ``scope`` in an onnx ModelProto."""
    if scope not in SCOPES:
        raise FastftError(f"quantisation scope must be one of {', '.join(SCOPES)} (got {scope!r})")
    inits = {i.name for i in model.graph.initializer}
    consts = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    const = inits | consts
    picked, types = [], set()
    for n in model.graph.node:
        if n.op_type not in ("MatMul", "Attention", "Gemm"):
            continue
        if n.op_type == "Gemm":
            continue  # pooler/classifier: tiny, and most sensitive to quantisation error
        has_weight = n.op_type == "Attention" or (len(n.input) > 1 and n.input[1] in const)
        name = n.name.lower()
        in_attention = n.op_type == "Attention" or "attention" in name or "/self/" in name
        is_ffn = ("intermediate" in name or "/output/dense" in name) and "attention/output" not in name
        ok = {
            "all": True,
            "weights": has_weight,
            "ffn": has_weight and is_ffn,
            "no-attention": has_weight and not in_attention,
        }[scope]
        if ok:
            picked.append(n.name)
            types.add(n.op_type)
    return picked, sorted(types)


def embedding_nodes(model) -> tuple[list[str], list[str]]:
    """(node names, op types) of the embedding lookups in an onnx ModelProto: fused
    EmbedLayerNormalization nodes, and Gathers whose data is a 2-D float initializer (a table)."""
    tables = {i.name for i in model.graph.initializer if len(i.dims) == 2 and i.data_type == 1}
    picked, types = [], set()
    for n in model.graph.node:
        if n.op_type == "EmbedLayerNormalization" or (n.op_type == "Gather" and n.input and n.input[0] in tables):
            picked.append(n.name)
            types.add(n.op_type)
    return picked, sorted(types)


def quantize_onnx(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    recipe: Int8Recipe,
    calibration: CalibrationReader | None = None,
    *,
    shaped: str | os.PathLike | None = None,
    allow_empty: bool = False,
) -> dict:
    """Quantise ``src`` (fp32, fused or not) into ``dst`` following ``recipe``; returns what was done.

    shaped: ``src`` after :func:`~fastft.export.optimize.infer_shapes` (computed when None; pass
    it to save time over many calls). allow_empty: when ``recipe.exclude`` leaves nothing to
    quantise, copy ``src`` instead of failing.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        quantize_dynamic,
        quantize_static,
    )

    from fastft.export.onnx import set_ir_version
    from fastft.export.optimize import infer_shapes, op_counts, quiet_ort_logging

    if recipe.mode not in ("dynamic", "static"):
        raise FastftError(f"quantisation mode must be dynamic or static (got {recipe.mode!r})")
    if recipe.mode == "static" and calibration is None:
        raise FastftError("static quantisation needs calibration data")
    with scratch_dir("quant") as tmp:  # pid and namespace in its name: see clean_stale
        if shaped is None:
            shaped = Path(tmp) / "shaped.onnx"
            shape_method = infer_shapes(src, shaped)
        else:
            shape_method = "given"
        model = onnx.load(str(shaped))
        nodes, op_types = select_nodes(model, recipe.scope)
        nodes = [n for n in nodes if n not in set(recipe.exclude)]
        emb = []
        if recipe.embeddings and recipe.quant_format.lower() == "qoperator":
            emb, emb_types = embedding_nodes(model)
            emb = [n for n in emb if n not in set(recipe.exclude)]
            op_types = sorted(set(op_types) | set(emb_types)) if emb else op_types
        if not nodes and not emb and allow_empty:  # everything kept fp32
            shutil.copy2(src, dst)
            return {**recipe.to_dict(), "recipe": recipe.name, "nodes_quantized": 0, "op_types": op_types}
        if not nodes and not emb:
            raise FastftError(f"nothing to quantise in {Path(src).name} with scope {recipe.scope!r}")
        extra = {"MatMulConstBOnly": recipe.scope != "all", **recipe.extra_options}
        fmt = {"qoperator": QuantFormat.QOperator, "qdq": QuantFormat.QDQ}.get(recipe.quant_format.lower())
        if fmt is None:
            raise FastftError(f"quant format must be QOperator or QDQ (got {recipe.quant_format!r})")
        common = {
            "op_types_to_quantize": op_types,
            "nodes_to_quantize": nodes + emb,
            "per_channel": recipe.per_channel,
            "reduce_range": recipe.reduce_range,
            "weight_type": _qtype(recipe.weight_type),
        }
        try:
            with warnings.catch_warnings(), quiet_ort_logging():
                warnings.simplefilter("ignore")
                if recipe.mode == "dynamic":
                    if fmt != QuantFormat.QOperator:
                        raise FastftError("dynamic quantisation writes QOperator graphs; use QDQ with --static")
                    quantize_dynamic(str(shaped), str(dst), extra_options=extra, **common)
                else:
                    method = {
                        "minmax": CalibrationMethod.MinMax,
                        "entropy": CalibrationMethod.Entropy,
                        "percentile": CalibrationMethod.Percentile,
                    }.get(recipe.calib_method)
                    if method is None:
                        raise FastftError(
                            f"--calib-method must be one of {', '.join(CALIB_METHODS)} (got {recipe.calib_method!r})"
                        )
                    if method != CalibrationMethod.MinMax:  # histograms: one array over every batch
                        calibration = calibration.one_shape()
                    calibration.rewind()
                    reader = as_ort_reader(calibration)
                    quantize_static(
                        str(shaped),
                        str(dst),
                        reader,
                        quant_format=fmt,
                        activation_type=_qtype(recipe.activation_type),
                        calibrate_method=method,
                        extra_options={**extra, "CalibTensorRangeSymmetric": False},
                        **common,
                    )
        except FastftError:
            raise
        except Exception as exc:
            raise FastftError(f"INT8 quantisation failed ({type(exc).__name__}: {str(exc)[:200]})") from exc
    set_ir_version(dst)
    return {
        **recipe.to_dict(),
        "recipe": recipe.name,
        "shape_inference": shape_method,
        "nodes_quantized": len(nodes),
        "embedding_nodes_quantized": len(emb),
        "op_types": op_types,
        "ops": op_counts(dst),
    }


def recipe_from_options(
    cpu: dict | None = None,
    *,
    static: bool = False,
    per_channel: bool | None = None,
    calib_method: str = "minmax",
    calib_size: int = 256,
    **overrides,
) -> Int8Recipe:
    """The default recipe for this CPU with the user's explicit choices applied on top."""
    r = default_recipe(cpu, static=static)
    changes = {k: v for k, v in overrides.items() if v is not None}
    if per_channel is not None:
        changes["per_channel"] = per_channel
    if static:
        changes.update(calib_method=calib_method, calib_size=calib_size)
    return replace(r, **changes) if changes else r


def iter_names(recipes: Iterable[Int8Recipe]) -> list[str]:
    return [r.name for r in recipes]
