"""Where a served graph's time goes: ONNX Runtime's own profiler, per operator type.

    python bench/bench_ort_profile.py --export runs/bench-teacher-onnx --seqs 128,512 --threads 1,2 \\
        --result bench/results/ort_profile.json

One ``fastft export`` directory's ``--file`` (model_int8.onnx by default), opened as ``fastft.load``
serves it (``served``: attention, residual LayerNorm and GELU on libfastft_ort's ops where built)
and as exported (``onnxruntime``: ORT's own kernels), each with ORT's profiling on, for every
``--threads`` count. Each session runs ``--reps`` calls on batch 1 of random token ids at each
``--seqs`` length (full mask; after ``--warmup`` calls), back to back; the result holds, per
(variant, threads, seq), the p50 of the calls and the mean time per call of every operator type
(the sum over its nodes), as ORT's profile records it. Profiling adds a little per node: read
the shares, and take speed from the interleaved benches (``fastft bench``, bench_ort_op.py).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from fastft.bench.runner import int_list, script_main, write_result  # noqa: E402
from fastft.core.errors import FastftError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {"served": "auto", "onnxruntime": "onnxruntime"}


def profile(path: Path, variant: str, threads: int, seq: int, reps: int, warmup: int, tmp: str) -> dict:
    from fastft.runtime.ort import served_session
    from fastft.runtime.session import session_options

    opts = session_options(threads=threads)
    opts.enable_profiling = True
    opts.profile_file_prefix = str(Path(tmp) / f"{variant}-{threads}-{seq}")
    sess, swapped = served_session(path, opts, ort_attention=VARIANTS[variant])
    ids = np.random.default_rng(seq).integers(1000, 20000, (1, seq)).astype(np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    feeds = {i.name: feeds[i.name] for i in sess.get_inputs()}
    for _ in range(warmup):
        sess.run(None, feeds)
    wall = []
    for _ in range(reps):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        wall.append(time.perf_counter() - t0)
    events = json.loads(Path(sess.end_profiling()).read_text())
    per_op, nodes, runs = Counter(), Counter(), 0
    for e in events:
        if e.get("cat") == "Session" and e.get("name") == "model_run":
            runs += 1
        elif e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"]
            nodes[e["args"]["op_name"]] += 1
    runs = max(runs, 1)
    ops = {k: {"ms_per_call": round(v / runs / 1e3, 4), "nodes": nodes[k] // runs} for k, v in per_op.most_common()}
    total = sum(v["ms_per_call"] for v in ops.values())
    row = {
        "variant": variant,
        "attention_swapped": swapped.attention,
        "fastft_ops": swapped._asdict(),
        "threads": threads,
        "seq": seq,
        "p50_ms": round(float(np.median(wall)) * 1e3, 3),
        "kernels_ms_per_call": round(total, 3),
        "ops": ops,
    }
    top = ", ".join(f"{k} {v['ms_per_call']:.3f}" for k, v in list(ops.items())[:6])
    print(f"{variant:<12} threads {threads} seq {seq:>4}: p50 {row['p50_ms']:7.3f} ms; {top}", flush=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export", required=True, help="a `fastft export` directory")
    ap.add_argument("--file", default="model_int8.onnx", help="the graph in it [model_int8.onnx]")
    ap.add_argument("--seqs", default="128,512", help="lengths, tokens [128,512]")
    ap.add_argument("--threads", default="1,2", help="intra-op thread counts [1,2]")
    ap.add_argument("--reps", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--result", default=str(ROOT / "bench" / "results" / "ort_profile.json"))
    args = ap.parse_args()
    path = Path(args.export) / args.file
    if not path.is_file():
        raise FastftError(f"{path} does not exist")
    seqs, threads = int_list("--seqs", args.seqs, lo=1), int_list("--threads", args.threads, lo=1)
    if args.reps < 1 or args.warmup < 0:
        raise FastftError("--reps must be >= 1 and --warmup >= 0")
    rows = []
    with tempfile.TemporaryDirectory(prefix="fastft-profile-") as tmp:
        for seq in seqs:
            for n in threads:
                for variant in VARIANTS:
                    rows.append(profile(path, variant, n, seq, args.reps, args.warmup, tmp))
    flat = [
        {k: v for k, v in r.items() if k != "ops"} | {f"op:{k}": v["ms_per_call"] for k, v in r["ops"].items()}
        for r in rows
    ]
    write_result(
        args.result,
        {
            "benchmark": "ORT profile per operator type, served by fastft vs ORT's own kernels",
            "export": str(args.export),
            "file": args.file,
            "reps": args.reps,
            "warmup": args.warmup,
            "rows": rows,
        },
        csv_rows=flat,
    )
    print(f"wrote {args.result}")
    return 0


if __name__ == "__main__":
    sys.exit(script_main(main))
