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
import csv
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

RESULTS = Path(__file__).resolve().parent / "results"


# ---------------------------------------------------------------------------------------
# machine description
# ---------------------------------------------------------------------------------------
def cpu_info() -> dict:
    info = {"machine": platform.machine(), "logical_cpus": os.cpu_count()}
    try:
        info["affinity_cpus"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("model name") and "model" not in info:
                info["model"] = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                info["flags"] = sorted(
                    f
                    for f in flags
                    if f
                    in {
                        "sse4_2",
                        "avx",
                        "avx2",
                        "fma",
                        "f16c",
                        "avx512f",
                        "avx512bw",
                        "avx512vl",
                        "avx512_vnni",
                        "avx_vnni",
                        "avx512_bf16",
                        "amx_tile",
                        "amx_bf16",
                    }
                )
                break
    except OSError:
        pass
    return info


def versions() -> dict:
    import fastft
    from fastft import _native
    from fastft.ops import cpu_backend

    v = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "fastft": fastft.__version__,
        "fastft_build": _native.build_info(),
        "fastft_cpu_backend": cpu_backend(),
    }
    try:
        import triton

        v["triton"] = triton.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        v["cuda"] = torch.version.cuda
        v["gpu"] = torch.cuda.get_device_name()
    return v


def quantiles(ts: list[float]) -> dict:
    ts = sorted(ts)

    def q(p):
        i = p * (len(ts) - 1)
        lo, hi = int(i), min(int(i) + 1, len(ts) - 1)
        return ts[lo] + (ts[hi] - ts[lo]) * (i - lo)

    return {"median_ms": statistics.median(ts) * 1e3, "p10_ms": q(0.1) * 1e3, "p90_ms": q(0.9) * 1e3}


# ---------------------------------------------------------------------------------------
# CPU
# ---------------------------------------------------------------------------------------
def make_inputs(batch, heads, seq, head_dim, masked, device="cpu", dtype=torch.float32, valid=0.75):
    gen = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(batch, heads, seq, head_dim, generator=gen).to(device, dtype) for _ in range(3))
    mask = None
    if masked:
        mask = torch.zeros(batch, seq, dtype=torch.bool)
        mask[:, : max(1, int(seq * valid))] = True
        mask = mask.to(device)
    return q, k, v, mask


def cpu_backends(q, k, v, mask):
    from fastft.ops import fused_attention

    scale = q.shape[-1] ** -0.5
    attn_bool = mask[:, None, None, :] if mask is not None else None
    additive = None
    if mask is not None:
        additive = torch.zeros(mask.shape, dtype=q.dtype).masked_fill(~mask, float("-inf"))[:, None, None, :]

    def fastft_default():
        return fused_attention(q, k, v, mask)

    from fastft.ops import fused_attention_varlen

    seq = q.shape[2]
    flat = [t[0].transpose(0, 1) for t in (q, k, v)]  # (seq, heads, d) views of the same memory
    slots = torch.tensor([0, seq], dtype=torch.int32)
    valid = torch.tensor([int(mask[0].sum()) if mask is not None else seq], dtype=torch.int32)
    n_valid = int(valid[0])

    def fastft_varlen():
        return fused_attention_varlen(*flat, slots, slots, seq, seq, seqused_q=valid, seqused_k=valid)

    def sdpa_unpadded():
        return F.scaled_dot_product_attention(q[:, :, :n_valid], k[:, :, :n_valid], v[:, :, :n_valid])

    def fastft_avx2():
        old = os.environ.get("FASTFT_ATTN_ISA")
        os.environ["FASTFT_ATTN_ISA"] = "avx2"
        try:
            return fused_attention(q, k, v, mask)
        finally:
            if old is None:
                del os.environ["FASTFT_ATTN_ISA"]
            else:
                os.environ["FASTFT_ATTN_ISA"] = old

    def sdpa():
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bool)

    def eager():
        s = torch.matmul(q, k.transpose(-1, -2)) * scale
        if additive is not None:
            s = s + additive
        return torch.matmul(torch.softmax(s, dim=-1), v)

    fns = {"fastft": fastft_default}
    from fastft import _native

    if (
        _native.available()
        and "avx2" in _native._C.attention_isas()
        and _native._C.attention_isa() != "avx2"
        and os.environ.get("FASTFT_ATTN_ISA", "auto") in ("", "auto")
    ):
        fns["fastft_avx2"] = fastft_avx2
    if mask is not None:
        fns["fastft_varlen"] = fastft_varlen
    fns["sdpa"] = sdpa
    if mask is not None:
        fns["sdpa_unpadded"] = sdpa_unpadded
    fns["eager"] = eager
    return fns


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
    for fn in fns.values():  # warm up
        fn()
        fn()
    t_round = 0.0
    for fn in fns.values():
        t0 = time.perf_counter()
        fn()
        t_round += time.perf_counter() - t0
    reps = 3 if args.quick else max(args.min_reps, min(args.max_reps, int(args.seconds / t_round)))
    names = list(fns)
    wall = {name: [] for name in names}
    cpu = {name: [] for name in names}
    load0 = os.getloadavg()[0]
    for r in range(reps):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            c0, t0 = time.process_time(), time.perf_counter()
            fns[name]()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    load1 = os.getloadavg()[0]
    flops = 4 * 1 * args.heads * seq * seq * d
    gemm_gflops = gemm_flops / (statistics.median(wall.pop("gemm_1024"))) / 1e9
    cpu.pop("gemm_1024")
    stats = {name: quantiles(ts) for name, ts in wall.items()}
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


def _rss_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _mem_child(backend: str, seq: int, head_dim: int, threads: list[int]) -> None:
    torch.set_num_threads(threads[0])
    cpu_backends(*make_inputs(1, 12, 64, head_dim, True))[backend]()  # one-time init (imports, pools)
    q, k, v, mask = make_inputs(1, 12, seq, head_dim, True)
    fns = cpu_backends(q, k, v, mask)
    try:  # reset the peak-RSS watermark (VmHWM) to the current RSS (Linux >= 4.0)
        Path("/proc/self/clear_refs").write_text("5")
        before, how = _rss_kib("VmRSS"), "VmHWM after the call - VmRSS before (watermark reset)"
    except OSError:
        before, how = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss delta"
    out = fns[backend]()
    after = _rss_kib("VmHWM") if how.startswith("VmHWM") else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
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


# ---------------------------------------------------------------------------------------
# targets (issue: AVX2 path, batch 1, 12 heads, 2 threads, seq 512, head_dim 32 and 64)
# ---------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------------------
def write(result: dict, stem: str, out_dir: Path, plot: bool) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    rows = result["rows"]
    if rows:
        keys = list(rows[0])
        with open(out_dir / f"{stem}.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            for r in rows:
                w.writerow({k: (json.dumps(v) if isinstance(v, list) else v) for k, v in r.items()})
    if plot and rows:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return
        t0 = rows[0].get("threads")
        rows = [r for r in rows if r.get("threads") == t0]
        dims = sorted({r["head_dim"] for r in rows})
        masks = sorted({r["mask"] for r in rows})
        fig, axes = plt.subplots(len(dims), len(masks), figsize=(5 * len(masks), 3.6 * len(dims)), squeeze=False)
        for i, d in enumerate(dims):
            for j, m in enumerate(masks):
                ax = axes[i][j]
                for be in dict.fromkeys(r["backend"] for r in rows):
                    sel = [r for r in rows if r["backend"] == be and r["head_dim"] == d and r["mask"] == m]
                    ax.errorbar(
                        [r["seq"] for r in sel],
                        [r["median_ms"] for r in sel],
                        yerr=[[r["median_ms"] - r["p10_ms"] for r in sel], [r["p90_ms"] - r["median_ms"] for r in sel]],
                        marker="o",
                        capsize=3,
                        label=be,
                    )
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
                ax.set_title(f"head_dim {d}, mask {m}")
                ax.set_xlabel("seq")
                ax.set_ylabel("ms (median, p10-p90)")
                ax.legend(fontsize=8)
        fig.suptitle(f"fused attention, CPU, batch 1, 12 heads, {t0} threads (wall time)")
        fig.tight_layout()
        fig.savefig(out_dir / f"{stem}.png", dpi=90)


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
        result["peak_memory"]["command"] = " ".join([Path(sys.executable).name] + sys.argv)
        result["peak_memory"]["date"] = time.strftime("%Y-%m-%d %H:%M:%S %z")
        path.write_text(json.dumps(result, indent=1) + "\n")
        print(f"updated {path}")
        return 0

    t0 = time.time()
    header = {
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "cpu": cpu_info(),
        "versions": versions(),
        "threads": args.threads,
        "flop_convention": "4*B*H*Sq*Sk*D, all keys counted (masked too), softmax not counted",
        "env": {k: os.environ.get(k) for k in ("FASTFT_ATTN_ISA", "OMP_WAIT_POLICY", "OMP_NUM_THREADS")},
        "loadavg_start": os.getloadavg(),
    }
    result = {**header, **run_cpu(args)}
    stem = args.stem
    result["loadavg_end"] = os.getloadavg()
    result["targets"] = targets(result["rows"])
    result["wall_s"] = round(time.time() - t0, 1)
    if args.quick and args.out is None:
        print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))
        return 0
    write(result, stem, args.out or RESULTS, plot=not args.no_plot)
    print(f"wrote {(args.out or RESULTS) / stem}.json/.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
