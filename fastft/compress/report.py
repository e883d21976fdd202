"""The compress report: one row per stage, as a table, report.json and report.md.

Latency is measured with ONNX Runtime, batch 1, at sequence lengths 128 and 512, all stages
interleaved in one run (round-robin, so load changes on a shared machine hit every stage
alike), sessions with physical-core threads and ``session.intra_op.allow_spinning = 0``. The
teacher's row is its plain ORT graph, the baseline; every other stage runs as ``fastft.load``
serves it (attention on fastft's C++ kernel inside ORT where the install built libfastft_ort).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Collection
from pathlib import Path

import numpy as np

from fastft.core.io import write_json
from fastft.core.stats import quantiles

SEQS = (128, 512)
COLUMNS = [
    ("stage", "stage"),
    ("parameters", "params"),
    ("file_mb", "file MB"),
    ("gflops_128", "GFLOPs@128"),
    ("p50_ms_128", "p50 ms@128"),
    ("p50_ms_512", "p50 ms@512"),
    ("speedup_512", "speed-up@512"),
    ("accuracy", "test acc"),
    ("retained", "retained"),
    ("retained_rare", "retained rare"),
]


def measure_latency(
    files: dict[str, Path],
    seqs=SEQS,
    runs: int = 20,
    threads: int | None = None,
    warmup: int = 2,
    progress: bool = True,
    vocab: int = 30522,
    max_positions: int = 512,
    served: Collection[str] = (),
) -> dict:
    """{name: {seq: quantiles}} for ONNX classifiers, batch 1, measured interleaved.

    Lengths beyond ``max_positions`` (the model's position embeddings) are skipped. The files
    named in ``served`` run as ``fastft.load`` serves them: each attention node on fastft's C++
    kernel inside ONNX Runtime, and each residual LayerNorm and GELU on fastft's ops, where this
    install built them (``attention_swapped`` and ``fastft_ops`` in their quantiles say how
    many); the others, the teacher's baseline among them, on ORT's own.
    """
    from fastft.compress.quantize import served as served_session  # loads onnxruntime: only when timing

    seqs = [s for s in seqs if s <= max_positions]
    sessions, swapped = {}, {}
    for name, path in files.items():
        mode = "auto" if name in served else "onnxruntime"
        sessions[name], swapped[name] = served_session(path, threads, ort_attention=mode)
    rng = np.random.default_rng(0)
    feeds = {}
    for seq in seqs:
        ids = rng.integers(1000, min(vocab, 30000), size=(1, seq)).astype(np.int64)
        ids[0, 0], ids[0, -1] = 101, 102
        feeds[seq] = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}

    def run(name, seq):
        s = sessions[name]
        s.run(None, {i.name: feeds[seq][i.name] for i in s.get_inputs()})

    for name in sessions:
        for seq in seqs:
            for _ in range(warmup):
                run(name, seq)
    times = {name: {seq: [] for seq in seqs} for name in sessions}
    t_start = time.perf_counter()
    for r in range(runs):
        for name in sessions:
            for seq in seqs:
                t0 = time.perf_counter()
                run(name, seq)
                times[name][seq].append(time.perf_counter() - t0)
        if progress:
            print(f"latency round {r + 1}/{runs}", file=sys.stderr, end="\r", flush=True)
    if progress:
        print(f"latency: {runs} interleaved rounds in {time.perf_counter() - t_start:.0f} s", file=sys.stderr)
    return {
        name: {
            seq: {**quantiles(v), "attention_swapped": swapped[name].attention, "fastft_ops": swapped[name]._asdict()}
            for seq, v in per.items()
        }
        for name, per in times.items()
    }


def attention_of(latency: dict) -> str:
    """What ran a model's attention (and fastft's other ops) in :func:`measure_latency` ({seq:
    quantiles} of one model; an older report holds only ``attention_swapped``)."""
    from fastft.runtime.ort_attention import Swaps, describe

    for q in latency.values():
        if q.get("fastft_ops"):
            return describe(Swaps(**q["fastft_ops"]))
    return describe(max((q.get("attention_swapped", 0) for q in latency.values()), default=0))


def time_against_teacher(
    teacher, files: dict[str, Path], seqs, runs: int, threads: int | None = None, plain: Collection[str] = ()
) -> list[dict]:
    """The ``teacher`` net's ORT fp32 graph (exported as the report's teacher row) and the ONNX
    ``files`` timed together, interleaved (:func:`measure_latency`; the files as served, those
    named in ``plain`` on ORT's own attention): one row per model and length with its quantiles
    (ms, 3 decimals) and ``speedup_p50`` over the teacher, the teacher first."""
    import tempfile

    from fastft.compress.quantize import export_onnx

    with tempfile.TemporaryDirectory(prefix="fastft-speedup-") as tmp:
        t_onnx = Path(tmp) / "teacher.onnx"
        export_onnx(teacher, t_onnx)
        lat = measure_latency(
            {"teacher": t_onnx, **files},
            seqs=seqs,
            runs=runs,
            threads=threads,
            max_positions=teacher.config.max_position_embeddings,
            served=[n for n in files if n not in plain],
        )
    rows = []
    for name in ["teacher", *files]:
        for seq, q in lat[name].items():
            row = {"model": name, "seq": seq, **{k: round(v, 3) if isinstance(v, float) else v for k, v in q.items()}}
            row["speedup_p50"] = round(lat["teacher"][seq]["p50_ms"] / q["p50_ms"], 3)
            rows.append(row)
    return rows


SHIFT_DEFINITIONS = {
    "rare": "the quarter of test texts whose words are rarest in the training split (mean log(1 + count))",
    "long": "the quarter of longest test texts (words)",
}


def shift_subsets(ctx) -> dict[str, list[int]]:
    """Test-row indices of the shifted splits (:func:`fastft.compress.augment.shift_split`); {} without texts."""
    from fastft.compress.augment import shift_split

    texts = getattr(ctx, "texts", None) or {}
    if not texts.get("train") or not texts.get("test"):
        return {}
    return shift_split(texts["train"], texts["test"])


def shift_accuracy(shift: dict, logits, labels) -> dict:
    """{"accuracy_<name>": ...} of test logits on each shifted subset."""
    y = np.asarray(labels)
    pred = np.asarray(logits).argmax(1)
    return {f"accuracy_{k}": float((pred[idx] == y[idx]).mean()) for k, idx in shift.items() if len(idx)}


def agreement(a, b) -> float:
    """Fraction of rows whose argmax labels agree."""
    return float((np.asarray(a).argmax(1) == np.asarray(b).argmax(1)).mean()) if len(a) else 0.0


def build_rows(stages: list[dict], latency: dict | None) -> list[dict]:
    """stages: dicts with name, parameters, file (Path), flops_128, accuracy."""
    teacher = stages[0]
    rows = []
    for st in stages:
        lat = (latency or {}).get(st["name"], {})
        row = {
            "stage": st["name"],
            "parameters": st["parameters"],
            "file": Path(st["file"]).name,
            "file_mb": round(Path(st["file"]).stat().st_size / 2**20, 2),
            "flops_128": st["flops_128"],
            "gflops_128": None if st["flops_128"] is None else round(st["flops_128"] / 1e9, 3),
            "p50_ms_128": round(lat[128]["p50_ms"], 2) if 128 in lat else None,
            "p50_ms_512": round(lat[512]["p50_ms"], 2) if 512 in lat else None,
            "latency": {str(k): v for k, v in lat.items()},
            "accuracy": st["accuracy"],
            "retained": round(st["accuracy"] / teacher["accuracy"], 4) if teacher["accuracy"] else None,
        }
        for k, v in st.items():
            if k not in row and k not in ("name", "file"):
                row[k] = v
        for k in ("rare", "long"):
            if st.get(f"accuracy_{k}") is not None and teacher.get(f"accuracy_{k}"):
                row[f"retained_{k}"] = round(st[f"accuracy_{k}"] / teacher[f"accuracy_{k}"], 4)
        rows.append(row)
    t512, t128 = rows[0]["p50_ms_512"], rows[0]["p50_ms_128"]
    for row in rows:
        row["speedup_512"] = round(t512 / row["p50_ms_512"], 2) if t512 and row["p50_ms_512"] else None
        row["speedup_128"] = round(t128 / row["p50_ms_128"], 2) if t128 and row["p50_ms_128"] else None
    return rows


def metric_name(task: str) -> str:
    """What a stage's score (the ``accuracy`` column) is for a task."""
    return "entity F1" if task == "token-classification" else "accuracy"


def verdict(rows: list[dict], target: float, metric: str = "accuracy") -> dict:
    """Did the final stage meet ``target`` retained ``metric``? If not, the nearest stage that did."""
    final = rows[-1]
    met = final["retained"] is not None and final["retained"] >= target
    out = {"target_retained": target, "final_stage": final["stage"], "final_retained": final["retained"], "met": met}
    if final["retained"] is None:
        out["message"] = f"retention is undefined: the teacher's {metric} is 0"
        return out
    if not met:
        ok = [r for r in rows[1:-1] if r["retained"] is not None and r["retained"] >= target]
        if ok:
            best = min(ok, key=lambda r: r["p50_ms_512"] or float("inf"))
            out["nearest_stage_meeting_target"] = best["stage"]
            out["message"] = (
                f"the final model ({final['stage']}) retains {final['retained']:.2%} of the teacher's "
                f"{metric}, below the target {target:.2%}; the nearest stage that met it is "
                f"'{best['stage']}' ({best['retained']:.2%})"
            )
        else:
            out["nearest_stage_meeting_target"] = None
            out["message"] = (
                f"the final model ({final['stage']}) retains {final['retained']:.2%} of the teacher's "
                f"{metric}, below the target {target:.2%}; no compressed stage met it"
            )
    else:
        out["message"] = (
            f"the final model retains {final['retained']:.2%} of the teacher's {metric} (target {target:.2%})"
        )
    return out


def _fmt(key: str, v) -> str:
    if v is None:
        return "-"
    if key == "parameters":
        return f"{v / 1e6:.2f}M"
    if key.startswith("retained"):
        return f"{v:.2%}"
    if key == "accuracy":
        return f"{v:.4f}"
    if key == "speedup_512":
        return f"{v:.2f}x"
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v)


def _headers(metric: str = "accuracy") -> list[str]:
    return [("test F1" if metric == "entity F1" and k == "accuracy" else h) for k, h in COLUMNS]


def table(rows: list[dict], metric: str = "accuracy") -> str:
    cells = [_headers(metric)] + [[_fmt(k, r.get(k)) for k, _ in COLUMNS] for r in rows]
    w = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(line)) for line in cells
    )


def markdown(report: dict) -> str:
    rows = report["stages"]
    lines = [
        "# fastft compress report",
        "",
        f"Teacher: `{report['teacher']}`; data: `{report['data']}` (test split, {report.get('test_rows')} rows); "
        f"max length {report.get('max_length')}.",
        "",
        "| " + " | ".join(_headers(report.get("metric", "accuracy"))) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(COLUMNS))) + "|",
    ]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(k, r.get(k)) for k, _ in COLUMNS) + " |")
    v = report["verdict"]
    lines += ["", f"**Target:** {v['message']}.", ""]
    acc = (report.get("accuracy_settings") or {}).get("attention") or {}
    if acc:
        lines += [
            "Scores: each stage's ONNX file on the splits, attention: "
            + "; ".join(f"{k}: {v}" for k, v in acc.items())
            + ".",
            "",
        ]
    lat = report.get("latency_settings") or {}
    if lat:
        lines += [
            f"Latency: ONNX Runtime, batch 1, p50 of {lat.get('runs')} interleaved runs, "
            f"{lat.get('threads')} threads, spinning off. FLOPs: encoder matmuls at sequence length 128.",
            "",
        ]
        attn = lat.get("attention") or {}
        if attn:
            lines += ["Attention: " + "; ".join(f"{k}: {v}" for k, v in attn.items()) + ".", ""]
    for name, sh in (report.get("shift") or {}).items():
        lines.append(f"- shifted split `{name}` ({sh['rows']} test rows): {sh['definition']}")
    for note in report.get("notes", []):
        lines.append(f"- {note}")
    q = report.get("quantization") or {}
    if q.get("label_agreement_fp32_test") is not None:
        lines += [
            "",
            f"{'FP16' if q.get('mode') == 'fp16' else 'INT8'} label agreement with the fp32 model on the test "
            f"split: {q['label_agreement_fp32_test']:.2%}; "
            f"nodes kept fp32 by the accuracy-aware fallback: {q.get('fp32_nodes', 0)}.",
        ]
    if q.get("excluded_nodes"):
        lines += ["", "Nodes kept in fp32 by the accuracy-aware INT8 pass:", ""]
        lines += [f"- `{n}`" for n in q["excluded_nodes"]]
    return "\n".join(lines) + "\n"


def write(out_dir: Path, report: dict) -> None:
    write_json(Path(out_dir) / "report.json", report)
    (Path(out_dir) / "report.md").write_text(markdown(report))


def load(out_dir: Path) -> dict:
    return json.loads((Path(out_dir) / "report.json").read_text())
