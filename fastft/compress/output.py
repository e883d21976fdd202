"""What ``fastft compress`` writes into the output directory's ``fastft.json``.

``onnx_section`` lays the ``onnx`` section out as ``fastft export`` does (the runtime reads it);
``write_compress_meta`` adds labels, metrics, the compress config, verdict and stage table.
"""

from __future__ import annotations

import time
from pathlib import Path

from fastft.compress.context import Context
from fastft.core.schema import read_meta, write_meta
from fastft.core.system import versions


def onnx_section(fp32_info: dict, qinfo: dict | None, precision: str | None) -> dict:
    """fastft.json's ``onnx`` section, in fastft export's layout (the runtime reads it)."""
    level = fp32_info.get("runtime_graph_optimization_level", "all")
    sec = {
        "file": "model.onnx",
        "default": "model.onnx",
        "opset": 17,
        "export": fp32_info.get("export"),
        "optimization": {"fusions": fp32_info.get("fusions"), "runtime_graph_optimization_level": level},
    }
    if qinfo:
        keep = {k: v for k, v in qinfo.items() if k not in ("sensitivity", "rounds", "ort_offline")}
        key = "int8" if precision == "int8" else precision
        sec[key] = {**keep, "runtime_graph_optimization_level": qinfo.get("runtime_graph_optimization_level", "all")}
        sec["default"] = qinfo["file"]
    return sec


def write_compress_meta(ctx: Context, out: Path, onnx: dict, metrics: dict, report: dict) -> None:
    meta = read_meta(out)
    meta.update(
        {
            "labels": ctx.labels,
            "max_length": ctx.max_length,
            "data": ctx.data_spec,
            "metrics": metrics,
            "onnx": onnx,
            "compress": {
                "teacher": str(ctx.teacher_dir),
                "config": ctx.cfg.to_dict(),
                "verdict": report["verdict"],
                "stages": [
                    {
                        k: r.get(k)
                        for k in (
                            "stage",
                            "parameters",
                            "file_mb",
                            "gflops_128",
                            "p50_ms_128",
                            "p50_ms_512",
                            "accuracy",
                            "retained",
                            "retained_rare",
                            "retained_long",
                        )
                    }
                    for r in report["stages"]
                ],
                "excluded_nodes": (report.get("quantization") or {}).get("excluded_nodes", []),
                "int8_fallback_fp32_nodes": (report.get("quantization") or {}).get("fp32_nodes"),
                "int8_label_agreement_fp32": (report.get("quantization") or {}).get("label_agreement_fp32_test"),
            },
            "versions": versions(),
        }
    )
    hist = [h for h in meta.get("history", []) if not str(h.get("stage", "")).startswith("compress:")]
    meta["history"] = hist + [{"stage": "compress", "time": time.strftime("%Y-%m-%dT%H:%M:%S")}]
    write_meta(out, meta)
