"""Where the p99 of the ORT serving path comes from: one exported model, session variants, interleaved.

    python bench/bench_tails.py --model runs/bench-teacher-onnx --seq 512 --calls 300
    python bench/bench_tails.py --model DIR --file model_int8.onnx --result bench/results/tails_int8.json

Each variant is one ``onnxruntime.InferenceSession`` on the same file (batch 1, the same
threads), called the way ``fastft.load(dir).predict`` calls it, in blocks that rotate between
variants so load from other processes hits them alike. Variants isolate one suspect each:

- ``default``: fastft's serving options (spinning off, arena on, memory pattern on).
- ``spin``: intra-op spinning on (thread wake-ups between parallel sections).
- ``no-arena``: the CPU memory arena off (every call allocates from the system).
- ``no-pattern``: memory-pattern planning off.
- ``gc-frozen``: Python's garbage collector frozen and disabled around the timed calls.
- ``bound``: inputs and output pre-allocated once and bound with IOBinding (no per-call
  allocation of feeds or the result array).
- ``pinned``: the intra-op worker threads pinned to cores (``session.intra_op_thread_affinities``).
- ``threads-1``: one intra-op thread (no worker wake-ups or barriers at all; slower median).
- ``gemm-floor``: not ORT: one fixed fp32 matrix product on one thread (torch), the machine's
  own noise floor. If its p99/p50 matches the sessions', the tail is the machine's (other
  tenants, frequency), not something a session setting can remove.

The result holds p50/p90/p99/max and p99/p50 for each variant, and the share of the calls
slower than 1.2x the variant's median.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

import numpy as np

from fastft.bench.runner import quantiles, random_feeds, write_result

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("default", "spin", "no-arena", "no-pattern", "gc-frozen", "bound", "pinned", "threads-1", "gemm-floor")


def make_session(path: Path, variant: str, threads: int):
    import onnxruntime as ort

    from fastft.runtime.session import session_options

    if variant == "threads-1":
        threads = 1
    opts = session_options(threads=threads, spinning=(variant == "spin"), level="basic")
    if variant == "no-arena":
        opts.enable_cpu_mem_arena = False
    if variant == "no-pattern":
        opts.enable_mem_pattern = False
    if variant == "pinned" and threads > 1:
        # the caller thread is worker 0; pin workers 1..n-1 to cores 1..n-1 (1-based ids)
        opts.add_session_config_entry(
            "session.intra_op_thread_affinities", ";".join(str(i + 1) for i in range(1, threads))
        )
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def gemm_call():
    """A fixed single-thread fp32 matrix product (~50-100 ms on one AVX2 core)."""
    import torch

    torch.set_num_threads(1)
    a = torch.randn(1024, 2048)
    b = torch.randn(2048, 1024)

    def call():
        return torch.mm(a, b)

    return call


def make_call(sess, variant: str, seq: int, batch: int, rng):
    import onnxruntime as ort

    names = [i.name for i in sess.get_inputs()]
    feeds = random_feeds(names, batch, seq, rng)
    out = sess.get_outputs()[0].name
    if variant == "bound":
        binding = sess.io_binding()
        for k, v in feeds.items():
            binding.bind_ortvalue_input(k, ort.OrtValue.ortvalue_from_numpy(v))
        binding.bind_output(out, "cpu")

        def call():
            sess.run_with_iobinding(binding)

        return call

    def call():
        # as the predictor does: fresh feeds per call (tokenised text), logits copied out
        f = {k: v.copy() for k, v in feeds.items()}
        return sess.run([out], f)[0].astype(np.float32, copy=False)

    return call


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "runs" / "bench-teacher-onnx"), help="an exported model directory")
    ap.add_argument("--file", default="model.onnx", help="ONNX file inside --model [model.onnx]")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calls", type=int, default=300, help="timed calls per variant")
    ap.add_argument("--block", type=int, default=25, help="calls per variant before rotating")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--result", default=str(ROOT / "bench" / "results" / "tails_ort.json"))
    args = ap.parse_args()

    path = Path(args.model) / args.file
    if not path.is_file():
        print(f"fastft: error: {path} does not exist (export a model first: fastft export ...)", file=sys.stderr)
        return 2
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        print(f"fastft: error: unknown variant(s) {', '.join(bad)}; choose from {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    rng = np.random.default_rng(0)
    calls = {}
    for v in variants:
        if v == "gemm-floor":
            calls[v] = gemm_call()
            continue
        sess = make_session(path, v, args.threads)
        calls[v] = make_call(sess, v, args.seq, args.batch, rng)
        for _ in range(10):  # warm-up: arena growth, first-run kernels
            calls[v]()
    times: dict[str, list[float]] = {v: [] for v in variants}
    blocks = -(-args.calls // args.block)
    t_start = time.time()
    for b in range(blocks):
        order = variants[b % len(variants) :] + variants[: b % len(variants)]
        for v in order:
            frozen = v == "gc-frozen"
            if frozen:
                gc.collect()
                gc.freeze()
                gc.disable()
            time.sleep(0.05)  # let the previous variant's threads go to sleep
            fn = calls[v]
            for _ in range(args.block):
                t0 = time.perf_counter()
                fn()
                times[v].append((time.perf_counter() - t0) * 1e3)
            if frozen:
                gc.enable()
                gc.unfreeze()
        print(f"block {b + 1}/{blocks}", file=sys.stderr, flush=True)
    rows = []
    for v in variants:
        t = np.asarray(times[v])
        q = quantiles(t / 1e3)
        med = float(np.median(t))
        rows.append(
            {
                "variant": v,
                "seq": args.seq,
                **q,
                "max_ms": round(float(t.max()), 3),
                "p99_over_p50": round(q["p99_ms"] / q["p50_ms"], 3),
                "share_over_1.2x_median": round(float((t > 1.2 * med).mean()), 4),
            }
        )
    print(f"{'variant':<12}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}{'p99/p50':>9}{'>1.2x':>8}")
    for r in rows:
        print(
            f"{r['variant']:<12}{r['p50_ms']:>9.2f}{r['p90_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['max_ms']:>9.2f}"
            f"{r['p99_over_p50']:>9.3f}{r['share_over_1.2x_median']:>8.3f}"
        )
    write_result(
        args.result,
        {
            "benchmark": "ORT tail latency by session variant",
            "model": str(path),
            "seq": args.seq,
            "batch": args.batch,
            "threads": args.threads,
            "calls_per_variant": args.calls,
            "block": args.block,
            "wall_s": round(time.time() - t_start, 1),
            "env": {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS") if os.environ.get(k)},
            "rows": rows,
            "raw_ms": {v: [round(x, 3) for x in times[v]] for v in variants},
        },
        csv_rows=rows,
    )
    print(f"wrote {args.result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
