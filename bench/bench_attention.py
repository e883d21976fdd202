"""Benchmark fastft.ops.fused_attention against PyTorch, CPU (default) or CUDA.

    python bench/bench_attention.py                 # CPU -> bench/results/attention_cpu.{json,csv,png}
    python bench/bench_attention.py --quick         # smoke run (small shapes, few reps, no files
                                                    #   unless --out is given)
    python bench/bench_attention.py --device cuda   # GPU: runs bench/bench_attention_gpu.py (Triton vs
                                                    #   SDPA flash/efficient/math) -> attention_gpu.{json,csv}

CPU: fastft's C++ kernel (default SIMD path, and AVX2 forced) vs
torch.nn.functional.scaled_dot_product_attention vs eager matmul-softmax-matmul; batch 1,
12 heads, head_dim 32/64, seq 128..2048, with no mask and with a key padding mask (75% of
keys valid, a prefix). One pass per --threads value (default 2, then 1), set with
torch.set_num_threads for every backend.

With the mask two more rows: ``fastft_varlen`` is the padding-free form
(fastft.ops.fused_attention_varlen) on the very same (1, 12, seq, head_dim) tensors SDPA gets,
viewed as packed tokens with ``seqused`` = the valid length (no copy; padded keys are not
read, padded query rows not computed, their output rows zeroed); ``sdpa_unpadded`` is SDPA on
the valid tokens alone (what an ideal padding-free SDPA would cost; not a drop-in: it returns
only the valid rows). ``--isa avx2`` (or FASTFT_ATTN_ISA) forces the C++ kernel's SIMD copy for
every fastft row; ``--stem`` names the result files (e.g. attention_cpu_avx2).

Method: per shape, every backend is warmed up, then the repetitions run round-robin over
the backends (one call each per round, the order rotated every round), so load from other
processes hits all of them alike; a 1024^3 fp32 torch.mm runs in the same rounds and gives
the machine's GEMM rate at that moment. Reported per backend: median, p10, p90 (ms),
GFLOP/s, fraction of the GEMM rate, ratio to SDPA and to eager (median/median). Also the
median process CPU time per call (time.process_time: all threads, spin-waiting included) and
the ratios of those: on a loaded machine wall times of multi-threaded calls depend on the
scheduler (and on how each threading runtime waits), CPU time much less so; the 1-thread
CPU-time ratios are the closest to "work done by the kernel".

FLOP convention: 4 * batch * heads * seq_q * seq_k * head_dim (two matmuls, one multiply-add
= 2 flops), counting every key, masked or not, and ignoring softmax; with a mask a kernel
that skips masked keys therefore shows a higher "GFLOP/s" than the work it did.

Peak memory: each backend runs once at seq 2048 (head_dim 64, mask) in a fresh subprocess;
after creating the inputs the peak-RSS watermark is reset (/proc/self/clear_refs), and we
report VmHWM after the call minus VmRSS before it (extra peak resident memory of one call,
MiB; includes the output tensor). --memory-only redoes just this part into an existing
result file.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from attention_cases import cpu_backends, make_inputs  # beside this script

from fastft.bench.memory import reset_peak_rss, rss_status
from fastft.bench.plot import plot_attention
from fastft.bench.runner import command_line, interleave, quantiles, write_result

RESULTS = Path(__file__).resolve().parent / "results"


def versions() -> dict:
    """What this benchmark adds to the shared versions (which hold the C++ build): the CPU path in use."""
    from fastft.ops import cpu_backend

    return {"fastft_cpu_backend": cpu_backend()}


def stats_ms(ts: list[float]) -> dict:
    q = quantiles(ts)
    return {"median_ms": q["p50_ms"], "p10_ms": q["p10_ms"], "p90_ms": q["p90_ms"]}


# CPU
def run_cpu(args) -> dict:
    seqs = [128, 256] if args.quick else args.seqs
    dims = [32] if args.quick else args.head_dims
    a = torch.randn(1024, 1024)
    b = torch.randn(1024, 1024)
    gemm = lambda: torch.mm(a, b)  # noqa: E731
    gemm_flops = 2 * 1024**3
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for d in dims:
            for seq in seqs:
                for masked in (False, True):
                    rows += bench_cpu_shape(args, threads, d, seq, masked, gemm, gemm_flops)
    result = {"rows": rows}
    if not args.quick:
        torch.set_num_threads(args.threads[0])
        result["peak_memory"] = peak_memory(args)
    return result


def bench_cpu_shape(args, threads, d, seq, masked, gemm, gemm_flops) -> list[dict]:
    q, k, v, mask = make_inputs(1, args.heads, seq, d, masked)
    fns = cpu_backends(q, k, v, mask)
    if not args.quick:  # correctness guard: every backend computes the same thing (valid rows)
        ref = fns["eager"]()
        n_valid = int(mask[0].sum()) if mask is not None else seq
        for name, fn in fns.items():
            out = fn()
            if name == "fastft_varlen":
                out = out.transpose(0, 1)[None]
            err = (out[:, :, :n_valid] - ref[:, :, :n_valid]).abs().max().item()
            assert err < 1e-4, f"{name} differs from eager by {err}"
    fns["gemm_1024"] = gemm
    # warm up: two calls each, then round-robin for --warmup-seconds (thread pools, page faults
    # and the clock settle before timing; the first shape of a process otherwise runs cold)
    for fn in fns.values():
        fn()
        fn()
    t_end = time.perf_counter() + (0 if args.quick else args.warmup_seconds)
    while time.perf_counter() < t_end:
        for fn in fns.values():
            fn()
    t_round = 0.0
    for fn in fns.values():
        t0 = time.perf_counter()
        fn()
        t_round += time.perf_counter() - t0
    reps = 3 if args.quick else max(args.min_reps, min(args.max_reps, int(args.seconds / t_round)))
    load0 = os.getloadavg()[0]
    timed = interleave(fns, reps, warmup=0, order="rotate")
    wall, cpu = timed.wall, timed.cpu
    load1 = os.getloadavg()[0]
    flops = 4 * 1 * args.heads * seq * seq * d
    gemm_gflops = gemm_flops / (statistics.median(wall.pop("gemm_1024"))) / 1e9
    cpu.pop("gemm_1024")
    stats = {name: stats_ms(ts) for name, ts in wall.items()}
    cpu_med = {name: statistics.median(ts) * 1e3 for name, ts in cpu.items()}
    rows = []
    for name, st in stats.items():
        gf = flops / (st["median_ms"] * 1e-3) / 1e9
        row = {
            "backend": name,
            "threads": threads,
            "batch": 1,
            "heads": args.heads,
            "seq": seq,
            "head_dim": d,
            "mask": "75% valid" if masked else "none",
            "reps": reps,
            **{key: round(val, 4) for key, val in st.items()},
            "gflops": round(gf, 2),
            "gemm_gflops": round(gemm_gflops, 2),
            "frac_of_gemm": round(gf / gemm_gflops, 3),
            "vs_sdpa": round(stats["sdpa"]["median_ms"] / st["median_ms"], 3),
            "vs_eager": round(stats["eager"]["median_ms"] / st["median_ms"], 3),
            "cpu_median_ms": round(cpu_med[name], 4),
            "vs_sdpa_cpu": round(cpu_med["sdpa"] / max(cpu_med[name], 1e-9), 3),
            "vs_eager_cpu": round(cpu_med["eager"] / max(cpu_med[name], 1e-9), 3),
            "loadavg_1m": [round(load0, 2), round(load1, 2)],
        }
        rows.append(row)
        print(
            f"t={threads} d={d:3d} seq={seq:5d} mask={row['mask']:9s} {name:12s} "
            f"{row['median_ms']:9.3f} ms [{row['p10_ms']:.3f}, {row['p90_ms']:.3f}] "
            f"{gf:7.1f} GFLOP/s  x{row['vs_sdpa']:.2f} vs sdpa  x{row['vs_eager']:.2f} vs eager | "
            f"cpu {row['cpu_median_ms']:.3f} ms x{row['vs_sdpa_cpu']:.2f} vs sdpa "
            f"x{row['vs_eager_cpu']:.2f} vs eager (gemm {gemm_gflops:.0f} GFLOP/s, load {load0:.1f}, "
            f"reps {reps})",
            flush=True,
        )
    return rows


def _mem_child(backend: str, seq: int, head_dim: int, threads: list[int]) -> None:
    torch.set_num_threads(threads[0])
    cpu_backends(*make_inputs(1, 12, 64, head_dim, True))[backend]()  # one-time init (imports, pools)
    q, k, v, mask = make_inputs(1, 12, seq, head_dim, True)
    fns = cpu_backends(q, k, v, mask)
    if reset_peak_rss():  # the peak-RSS watermark (VmHWM) is now the current RSS
        before, how = rss_status()["VmRSS"], "VmHWM after the call - VmRSS before (watermark reset)"
    else:
        before, how = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss delta"
    out = fns[backend]()
    after = rss_status()["VmHWM"] if how.startswith("VmHWM") else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "backend": backend,
                "extra_peak_mib": round((after - before) / 1024, 2),
                "output_mib": out.numel() * out.element_size() / 2**20,
                "how": how,
            }
        )
    )


def peak_memory(args) -> dict:
    seq, d = 2048, 64
    res = {
        "method": "fresh subprocess per backend, inputs created, peak-RSS watermark reset "
        "(/proc/self/clear_refs 5); extra = VmHWM after one call - VmRSS before "
        "(includes the output tensor); one small warm-up call first",
        "shape": {"batch": 1, "heads": 12, "seq": seq, "head_dim": d, "mask": "75% valid"},
        "backends": {},
    }
    for backend in ("fastft", "sdpa", "eager"):
        cmd = [
            sys.executable,
            __file__,
            "--mem-child",
            backend,
            "--mem-seq",
            str(seq),
            "--mem-head-dim",
            str(d),
            "--threads",
            str(args.threads[0]),
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        res["backends"][backend] = json.loads(out)
        print("memory:", out, flush=True)
    # what the kernel allocates by design (csrc/attention_common.h), per thread and independent
    # of the sequence length: Q^T block + key-major scores + accumulators + a padded V block +
    # 4 row vectors; plus, with a mask, a per-key bias (4 B) and per-block flags per batch row
    bq, bk_max, kr_max, dp = 48, 256, 8, -(-d // 16) * 16
    per_thread = 4 * (d * bq + (bk_max + kr_max) * bq + bq * dp + bk_max * dp + 4 * bq)
    res["fastft_workspace_by_design_mib"] = {
        "per_thread": round(per_thread / 2**20, 3),
        "threads": args.threads[0],
        "plus_key_bias_bytes": 4 * seq + -(-seq // 64),
    }
    return res


# targets (issue: AVX2 path, batch 1, 12 heads, 2 threads, seq 512, head_dim 32 and 64)
TARGETS = (("none", "fastft", 1.2), ("75% valid", "fastft_varlen", 1.5))


def targets(rows: list[dict]) -> list[dict]:
    """Each target, met or missed, from the rows of this run (median wall-time ratio to SDPA
    in the same interleaved rounds; the CPU-time ratio alongside)."""
    out = []
    for d in (32, 64):
        for mask, backend, bar in TARGETS:
            sel = [
                r
                for r in rows
                if r["threads"] == 2
                and r["seq"] == 512
                and r["head_dim"] == d
                and r["mask"] == mask
                and r["backend"] == backend
            ]
            if not sel:
                continue
            r = sel[0]
            out.append(
                {
                    "seq": 512,
                    "head_dim": d,
                    "threads": 2,
                    "mask": mask,
                    "backend": backend,
                    "target_vs_sdpa": bar,
                    "vs_sdpa": r["vs_sdpa"],
                    "vs_sdpa_cpu": r["vs_sdpa_cpu"],
                    "met": r["vs_sdpa"] >= bar,
                }
            )
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--quick", action="store_true", help="smoke run: small shapes, few repetitions")
    p.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=[2, 1],
        help="torch.set_num_threads values, one pass each (first: memory, plot)",
    )
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--seqs", type=int, nargs="+", default=[128, 512, 1024, 2048])
    p.add_argument("--head-dims", type=int, nargs="+", default=[32, 64])
    p.add_argument("--seconds", type=float, default=6.0, help="target time per shape (CPU)")
    p.add_argument("--warmup-seconds", type=float, default=2.0, help="untimed round-robin calls per shape [2]")
    p.add_argument("--min-reps", type=int, default=9)
    p.add_argument("--max-reps", type=int, default=60)
    p.add_argument("--out", type=Path, default=None, help=f"result folder (default {RESULTS})")
    p.add_argument("--stem", default="attention_cpu", help="result file name stem (default attention_cpu)")
    p.add_argument(
        "--isa",
        choices=["auto", "avx512", "avx2", "generic"],
        default=None,
        help="force the C++ kernel's SIMD copy for every fastft row (sets FASTFT_ATTN_ISA)",
    )
    p.add_argument("--no-plot", action="store_true")
    p.add_argument(
        "--memory-only",
        action="store_true",
        help="only (re)measure peak memory and merge it into the existing CPU result file",
    )
    p.add_argument("--mem-child", help=argparse.SUPPRESS)
    p.add_argument("--mem-seq", type=int, default=2048, help=argparse.SUPPRESS)
    p.add_argument("--mem-head-dim", type=int, default=64, help=argparse.SUPPRESS)
    args, rest = p.parse_known_args(argv)
    if args.device == "cuda":  # one GPU benchmark, kept in its own script
        sys.path.insert(0, str(Path(__file__).parent))
        import bench_attention_gpu

        return bench_attention_gpu.main((["--quick"] if args.quick else []) + rest)
    if rest:
        p.error(f"unrecognized arguments: {' '.join(rest)}")

    if args.mem_child:
        _mem_child(args.mem_child, args.mem_seq, args.mem_head_dim, args.threads)
        return 0

    if args.isa:
        os.environ["FASTFT_ATTN_ISA"] = args.isa
    if args.memory_only:
        path = (args.out or RESULTS) / f"{args.stem}.json"
        result = json.loads(path.read_text())
        result["peak_memory"] = peak_memory(args)
        result["peak_memory"]["command"] = command_line()
        result["peak_memory"]["date"] = time.strftime("%Y-%m-%d %H:%M:%S %z")
        path.write_text(json.dumps(result, indent=1) + "\n")
        print(f"updated {path}")
        return 0

    t0 = time.time()
    header = {
        "benchmark": "fastft.ops.fused_attention vs torch SDPA and eager attention, CPU",
        "versions": versions(),
        "threads": args.threads,
        "flop_convention": "4*B*H*Sq*Sk*D, all keys counted (masked too), softmax not counted",
        "env": {k: os.environ.get(k) for k in ("FASTFT_ATTN_ISA", "OMP_WAIT_POLICY", "OMP_NUM_THREADS")},
    }
    result = {**header, **run_cpu(args)}
    stem = args.stem
    result["targets"] = targets(result["rows"])
    result["wall_s"] = round(time.time() - t0, 1)
    if args.quick and args.out is None:
        print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))
        return 0
    out_dir = args.out or RESULTS
    write_result(out_dir / f"{stem}.json", result, csv_rows=result["rows"] or None)
    if not args.no_plot and result["rows"]:
        plot_attention(result["rows"], out_dir / f"{stem}.png")
    print(f"wrote {(args.out or RESULTS) / stem}.json/.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
