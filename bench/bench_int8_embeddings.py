"""INT8 embeddings: file size, accuracy, label agreement and latency with and without them.

    python bench/bench_int8_embeddings.py                    # the cached default teacher
    python bench/bench_int8_embeddings.py --model runs/compressed --limit 200   # any classifier dir

One fp32 export of the model (the fused graph ``fastft compress`` quantises), then the INT8 recipe
of this CPU twice: weight MatMuls only, and with the embedding tables too (ORT's
QEmbedLayerNormalization). Each file is evaluated on the test split with ONNX Runtime (accuracy,
label agreement with fp32) and timed interleaved (batch 1, seq 128 and 512).
Writes bench/results/int8_embeddings.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from fastft.bench.runner import write_result  # first: notes the machine's load at the start

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="classifier directory [the cached default teacher]")
    ap.add_argument("--limit", type=int, default=None, help="rows per split (smoke runs)")
    ap.add_argument("--runs", type=int, default=20, help="interleaved latency rounds [20]")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "int8_embeddings.json"))
    args = ap.parse_args()

    import numpy as np

    import fastft.compress  # noqa: F401  (binds the submodules below)
    from fastft.compress.config import CompressConfig
    from fastft.compress.context import prepare
    from fastft.compress.report import measure_latency

    cq = sys.modules["fastft.compress.quantize"]
    ctx = prepare(args.model, CompressConfig(limit=args.limit, bench=False, progress=False))
    rows, files = [], {}
    with tempfile.TemporaryDirectory(prefix="fastft-emb-") as tmp:
        work = Path(tmp)
        fp32 = work / "model.onnx"
        cq.export_onnx(ctx.teacher, fp32)
        files["fp32"] = fp32
        for emb in (False, True):
            dst = work / f"model_int8{'_emb' if emb else ''}.onnx"
            info = cq.accuracy_aware_int8(
                cq.fused_path(fp32),
                dst,
                val_ids=ctx.ids["validation"],
                val_labels=ctx.y["validation"],
                pad_id=ctx.pad_id,
                budget=1.0,  # no fallback: the whole graph quantised, as recorded
                embeddings=emb,
                progress=False,
            )
            files["int8+emb" if emb else "int8"] = (dst, info)
        ref = cq.ort_logits(cq.session(fp32), ctx.ids["test"], ctx.pad_id)
        paths = {k: (v[0] if isinstance(v, tuple) else v) for k, v in files.items()}
        lat = measure_latency(paths, runs=args.runs, progress=False)
        base_mb = fp32.stat().st_size / 2**20
        for name, path in paths.items():
            lg = ref if name == "fp32" else cq.ort_logits(cq.session(path), ctx.ids["test"], ctx.pad_id)
            info = files[name][1] if isinstance(files[name], tuple) else {}
            rows.append(
                {
                    "variant": name,
                    "file_mb": round(path.stat().st_size / 2**20, 2),
                    "size_vs_fp32": round(path.stat().st_size / 2**20 / base_mb, 4),
                    "test_accuracy": float((lg.argmax(1) == np.asarray(ctx.y["test"])).mean()),
                    "label_agreement_fp32": float((lg.argmax(1) == ref.argmax(1)).mean()),
                    "p50_ms_128": round(lat[name][128]["p50_ms"], 2),
                    "p50_ms_512": round(lat[name][512]["p50_ms"], 2),
                    "recipe": info.get("recipe"),
                    "embedding_nodes_quantized": info.get("embedding_nodes_quantized"),
                    "latency": {str(k): v for k, v in lat[name].items()},
                }
            )
    payload = {
        "benchmark": "INT8 with and without 8-bit embedding tables (QEmbedLayerNormalization)",
        "model": str(ctx.teacher_dir),
        "test_rows": len(ctx.ids["test"]),
        "settings": {"limit": args.limit, "runs": args.runs, "batch": 1, "interleaved": True},
        "rows": rows,
    }
    write_result(args.out, payload, csv_rows=rows, csv_columns=[k for k in rows[0] if k != "latency"])
    for r in rows:
        print(
            f"{r['variant']:<9} {r['file_mb']:7.2f} MB ({r['size_vs_fp32']:.1%})  acc {r['test_accuracy']:.4f}  "
            f"agree {r['label_agreement_fp32']:.2%}  p50 {r['p50_ms_128']:.2f} ms@128 {r['p50_ms_512']:.2f} ms@512"
        )
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
