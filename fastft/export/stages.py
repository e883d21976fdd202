"""The stages of ``fastft export``, each usable alone (``fastft compress`` calls them too).

* :func:`export_graph`: torch -> ONNX, with the op's fused Attention nodes where the family is
  swappable (or plain), recording why it fell back to plain.
* :func:`fuse_graph`: ORT's transformer fusions, with the pruned head count and attention width
  for uniformly head-pruned models.
* :func:`write_fp32`: both, then ONNX Runtime's offline optimisation at ``basic``: the fp32
  file that is served, plus the fused graph that INT8 quantisation starts from.
* :func:`int8_stage`: INT8 with the accuracy-aware fallback of :mod:`fastft.export.int8`.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from fastft.export import onnx as fx_onnx
from fastft.export.int8 import accuracy_aware
from fastft.export.optimize import fuse_transformer, infer_shapes, op_counts, ort_offline_optimize
from fastft.export.quantize import quantize_onnx
from fastft.models.pruned import encoder_layers, heads_of

# where the graph optimisation happens: python transformer fusions, then ORT offline at this level
FP32_ORT_LEVEL = "basic"
INT8_ORT_LEVEL = "extended"


def _log(msg: str, progress: bool) -> None:
    if progress:
        print(f"fastft export: {msg}", file=sys.stderr, flush=True)


def export_graph(net, plain: Path, *, input_names=None, opset: int = 17, fused_attention: bool = False) -> dict:
    """torch -> ONNX at ``plain``; ``fused_attention``: one com.microsoft Attention node per layer
    written by the exporter itself (:mod:`fastft.export.attention`), plain graph where it cannot."""
    names = input_names or fx_onnx.model_input_names(net)
    info, reason = None, None
    if fused_attention:
        from fastft.export.attention import try_export_fused_onnx

        info, reason = try_export_fused_onnx(net, plain, input_names=names, opset=opset)
        if reason:
            _log(f"fused attention unavailable ({reason}): writing the plain graph", True)
    if info is None:
        info = fx_onnx.export_onnx(net, plain, input_names=names, opset=opset)  # looked up now: patchable
        if reason:
            info["fused_attention_fallback"] = reason
    return info


def head_counts(net) -> list[int] | None:
    """Attention heads per layer of a BERT-style encoder (None for other architectures)."""
    try:
        return [heads_of(layer) for layer in encoder_layers(net)]
    except Exception:  # noqa: BLE001 - not a BERT-style encoder
        return None


def pruned_head_counts(net) -> list[int] | None:
    """Heads per layer of a head-pruned model (None when no head was pruned)."""
    return head_counts(net) if getattr(net.config, "pruned_heads", None) else None


def fuse_graph(net, plain: Path, fused: Path, exporter_attention: bool = False) -> dict | str:
    """ORT transformer fusions of ``plain`` into ``fused`` (head-pruned models: their pruned widths).

    Head counts that differ between layers: ORT's attention fusion takes one count, so the fusions
    run only where the exporter already wrote one attention node per layer (``exporter_attention``),
    for the rest of the graph."""
    heads = pruned_head_counts(net)
    if heads and len(set(heads)) == 1:  # uniform head pruning: fuse with the pruned attention width
        d = int(net.config.hidden_size // net.config.num_attention_heads)
        return fuse_transformer(plain, fused, net.config, num_heads=heads[0], hidden_size=heads[0] * d)
    if heads and not exporter_attention:
        shutil.copy2(plain, fused)
        return "skipped (head counts differ between layers, attention not fused by the exporter)"
    return fuse_transformer(plain, fused, net.config)


def write_fp32(
    net, out_file: Path, fused: Path, plain: Path, *, input_names=None, opset: int = 17, fused_attention: bool = False
) -> dict:
    """Export, fuse and ORT-offline-optimise ``net`` into ``out_file``; the fused graph stays at ``fused``.

    Head counts that differ between layers are exported with fastft's own attention nodes
    (``fused_attention``): ORT's attention fusion takes one head count for the whole graph.

    Returns {"export", "fusions", "ort_offline", "runtime_graph_optimization_level"}.
    """
    heads = pruned_head_counts(net)
    fused_attention = fused_attention or bool(heads and len(set(heads)) > 1)
    info = {"export": export_graph(net, plain, input_names=input_names, opset=opset, fused_attention=fused_attention)}
    # export_graph records "attention" only where its exporter wrote the nodes (not on its fallback)
    info["fusions"] = fuse_graph(net, plain, fused, exporter_attention="attention" in info["export"])
    info["ort_offline"] = ort_offline_optimize(fused, out_file, FP32_ORT_LEVEL)
    # the graph is saved optimised: opening it at "basic" redoes nothing expensive
    info["runtime_graph_optimization_level"] = "basic"
    return info


@dataclass
class Int8Result:
    """The chosen INT8 graph (ORT-offline-optimised), what quantisation did, and the fallback attempts."""

    path: Path
    info: dict
    attempts: list[dict]
    fp32_nodes: list[str]
    check: dict | None
    ranking: dict = field(default_factory=dict)  # node -> sensitivity, when the policy ranked


def int8_stage(fused: Path, scratch: Path, recipe, reader=None, *, check=None, policy=None) -> Int8Result:
    """Quantise ``fused`` with ``recipe``; with ``check(path, exclude) -> (passed, record)`` and a
    sensitivity ``policy`` (:class:`fastft.export.int8.KLSensitivity`), keep the nodes it ranks most
    sensitive in fp32, more each time, until the check passes."""
    from dataclasses import replace

    infos: dict[Path, dict] = {}
    shaped = scratch / "int8-shaped.onnx"

    def build(exclude, probe: bool = False) -> Path:
        k = len(exclude)
        r = replace(recipe, exclude=tuple(exclude)) if k else recipe
        if probe:  # ranked by the policy, never served: shapes inferred once, no offline pass
            if not shaped.is_file():
                infer_shapes(fused, shaped)
            quantize_onnx(fused, scratch / "int8-probe.onnx", r, reader, shaped=shaped, allow_empty=True)
            return scratch / "int8-probe.onnx"
        qtmp = scratch / f"int8-{k}.onnx"
        q = quantize_onnx(fused, qtmp, r, reader)
        qfinal = scratch / f"int8-{k}-ext.onnx"
        q["ort_offline"] = ort_offline_optimize(qtmp, qfinal, INT8_ORT_LEVEL)
        infos[qfinal] = q
        return qfinal

    search = accuracy_aware(build, check, policy if check is not None else None)
    final = search.final
    attempts = [{"fp32_nodes": len(a.excluded), **a.record} for a in search.attempts] if check is not None else []
    record = final.record if check else None
    return Int8Result(final.path, infos[final.path], attempts, final.excluded, record, search.ranking)


__all__ = [
    "FP32_ORT_LEVEL",
    "INT8_ORT_LEVEL",
    "Int8Result",
    "export_graph",
    "fuse_graph",
    "head_counts",
    "int8_stage",
    "op_counts",
    "write_fp32",
]
