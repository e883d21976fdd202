"""Benchmark the Triton fused-attention forward against torch SDPA on one CUDA GPU.

    python bench/bench_attention_gpu.py            # full grid -> bench/results/attention_gpu.{json,csv}
    python bench/bench_attention_gpu.py --quick    # smoke run: seq 512/1024, fp16, few rounds
    python bench/bench_attention_gpu.py --seqs 1024 4096 --dtypes bf16 --out-dir /tmp/r

Backends: ``triton`` (fastft.kernels.attention.attention_fwd, autotuned) and
``scaled_dot_product_attention`` pinned to one backend each with
``torch.nn.attention.sdpa_kernel``: ``sdpa_flash``, ``sdpa_efficient``, ``sdpa_math``.
A backend that refuses a case (flash takes no attn_mask, math out of memory) is
recorded as N/A with the reason.

Grid: fp16 and bf16; head_dim 64 (12 heads) and 128 (16 heads); seq 512..8192 with
batch = max(1, 16384 // seq) so every case has ~16k tokens; three cases per shape:
no mask, key padding mask (a prefix of length uniform in [seq/2, seq] per sequence, the
same mask for every backend), causal (no mask).

Method: per case every backend is warmed up (Triton autotunes here; the config it picked
is recorded), then ``--rounds`` rounds run over the backends round-robin, the order
rotated every round, so clock and load drift hit all of them alike. In a round each
backend runs ``inner`` back-to-back calls between two CUDA events (inner chosen so one
timing spans >= ~2 ms); time per call = elapsed / inner. Reported: median, p10, p90
(ms) over the rounds, TFLOP/s of the median, and the ratio to each SDPA backend
(their median / ours, > 1 = Triton faster).

FLOP convention: 4 * batch * heads * seq_q * seq_k * head_dim (two matmuls), halved for
causal; with a padding mask every key is counted, masked or not (a kernel that skips
padded keys therefore shows more TFLOP/s than the work it did).

Also recorded per case: the largest |triton - sdpa| over the output (a sanity check;
SDPA efficient, else math, is the comparison).

Needs a CUDA device: without one it prints "no CUDA device: ..." and exits 2, writing
nothing.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

from fastft.bench.runner import quantiles, write_result

RESULTS = Path(__file__).resolve().parent / "results"
DTYPES = {"fp16": "float16", "bf16": "bfloat16"}
HEADS = {64: 12, 128: 16}
SDPA_BACKENDS = ("sdpa_flash", "sdpa_efficient", "sdpa_math")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="seq 512/1024, fp16, 5 rounds (smoke run)")
    p.add_argument("--seqs", type=int, nargs="+", default=None, help="default 512 1024 2048 4096 8192")
    p.add_argument("--head-dims", type=int, nargs="+", default=[64, 128], choices=sorted(HEADS))
    p.add_argument("--dtypes", nargs="+", default=None, choices=sorted(DTYPES), help="default fp16 bf16")
    p.add_argument("--cases", nargs="+", default=["none", "padding", "causal"], choices=["none", "padding", "causal"])
    p.add_argument("--tokens", type=int, default=16384, help="batch = max(1, tokens // seq)")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds per case (default 25; quick: 5)")
    p.add_argument("--min-ms", type=float, default=2.0, help="each timing spans at least this long")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    p.add_argument("--stem", default="attention_gpu", help="result files <out-dir>/<stem>.{json,csv}")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.seqs is None:
        args.seqs = [512, 1024] if args.quick else [512, 1024, 2048, 4096, 8192]
    if args.dtypes is None:
        args.dtypes = ["fp16"] if args.quick else ["fp16", "bf16"]
    if args.rounds is None:
        args.rounds = 5 if args.quick else 25
    return args


def _exit_no_cuda(reason: str):
    print(f"no CUDA device: {reason}", file=sys.stderr)
    sys.exit(2)


def cuda_or_exit():
    """Import torch and check for a usable CUDA device; exit 2 with one line if there is none."""
    try:
        import torch
    except ImportError as exc:
        _exit_no_cuda(f"torch is not importable ({exc})")
    if os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes"):
        _exit_no_cuda("TRITON_INTERPRET is set (Triton interpreter mode); unset it to benchmark the GPU")
    if not torch.cuda.is_available():
        reason = "torch.cuda.is_available() is False"
        if torch.version.cuda is None:
            reason += f" (torch {torch.__version__} is a CPU-only build)"
        _exit_no_cuda(reason + "; nothing written")
    return torch


def machine(torch) -> dict:
    """What this benchmark adds to the shared machine and versions records: the GPU's details."""
    import triton

    props = torch.cuda.get_device_properties(0)
    info = {
        "gpu_name": torch.cuda.get_device_name(0),
        "capability": f"{props.major}.{props.minor}",
        "gpu_memory_gib": round(props.total_memory / 2**30, 1),
        "sm_count": props.multi_processor_count,
        "gpu_count": torch.cuda.device_count(),
    }
    versions = {"cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(), "triton": triton.__version__}
    return {"machine": info, "versions": versions}


# ---------------------------------------------------------------------------------------
# cases and backends
# ---------------------------------------------------------------------------------------
def make_case(torch, dtype, batch, heads, seq, head_dim, case, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    shape = (batch, heads, seq, head_dim)
    q, k, v = (torch.randn(shape, device="cuda", dtype=dtype, generator=g) for _ in range(3))
    mask = None
    if case == "padding":
        lengths = torch.randint(seq // 2, seq + 1, (batch,), device="cuda", generator=g)
        lengths[0] = seq  # at least one full row, so the longest case is always present
        mask = torch.arange(seq, device="cuda")[None, :] < lengths[:, None]
    return q, k, v, mask


def backends(torch, q, k, v, mask, causal):
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from fastft.kernels.attention import attention_fwd

    attn_mask = mask[:, None, None, :] if mask is not None else None
    fns = {"triton": lambda: attention_fwd(q, k, v, mask, causal=causal)}
    for name, be in zip(SDPA_BACKENDS, (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH)):

        def fn(be=be):
            with sdpa_kernel(be):
                return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=causal)

        fns[name] = fn
    return fns


def time_interleaved(torch, fns: dict, rounds: int, min_ms: float) -> dict:
    """Per backend: a list of per-call times (ms), one per round, round-robin with rotation."""
    inner = {}
    for name, fn in fns.items():  # calibrate: back-to-back calls spanning >= min_ms
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(3):
            fn()
        e.record()
        e.synchronize()
        per_call = max(s.elapsed_time(e) / 3, 1e-3)
        inner[name] = int(min(200, max(1, math.ceil(min_ms / per_call))))
    names = list(fns)
    times = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        events = []
        for name in order:
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            for _ in range(inner[name]):
                fns[name]()
            e.record()
            events.append((name, s, e))
        torch.cuda.synchronize()
        for name, s, e in events:
            times[name].append(s.elapsed_time(e) / inner[name])
    return {"times": times, "inner": inner}


def stats(ts_ms: list) -> dict:
    q = quantiles([t / 1e3 for t in ts_ms])
    return {"median_ms": q["p50_ms"], "p10_ms": q["p10_ms"], "p90_ms": q["p90_ms"], "n": q["n"]}


def triton_config() -> str | None:
    from fastft.kernels import attention as A

    cfg = getattr(A._attn_fwd_tuned, "best_config", None)
    if cfg is None:
        return None
    return (
        f"BLOCK_M={cfg.kwargs.get('BLOCK_M')} BLOCK_N={cfg.kwargs.get('BLOCK_N')} "
        f"warps={cfg.num_warps} stages={cfg.num_stages}"
    )


def run_case(torch, args, dtype_name, head_dim, seq, case) -> list[dict]:
    dtype = getattr(torch, DTYPES[dtype_name])
    heads = HEADS[head_dim]
    batch = max(1, args.tokens // seq)
    causal = case == "causal"
    q, k, v, mask = make_case(torch, dtype, batch, heads, seq, head_dim, case, args.seed)
    fns = backends(torch, q, k, v, mask, causal)
    status, outs = {}, {}
    for name, fn in list(fns.items()):
        try:
            outs[name] = fn()  # warm-up; Triton autotunes on its first call for this key
            fn()
            torch.cuda.synchronize()
            status[name] = "ok"
        except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
            msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            status[name] = f"N/A: {msg}"
            del fns[name]
            torch.cuda.empty_cache()
    cfg = triton_config() if "triton" in fns else None
    diff = None
    ref_name = next((n for n in ("sdpa_efficient", "sdpa_math", "sdpa_flash") if n in outs), None)
    if "triton" in outs and ref_name is not None:
        diff = (outs["triton"].float() - outs[ref_name].float()).abs().max().item()
    outs.clear()
    timed = time_interleaved(torch, fns, args.rounds, args.min_ms) if fns else {"times": {}, "inner": {}}
    flops = 4 * batch * heads * seq * seq * head_dim / (2 if causal else 1)
    st = {n: stats(ts) for n, ts in timed["times"].items()}
    rows = []
    for name in ["triton", *SDPA_BACKENDS]:
        row = {
            "dtype": dtype_name,
            "head_dim": head_dim,
            "heads": heads,
            "batch": batch,
            "seq": seq,
            "case": case,
            "backend": name,
            "status": status.get(name, "N/A"),
        }
        if name in st:
            s = st[name]
            row.update({k: round(v, 5) if isinstance(v, float) else v for k, v in s.items()})
            row["inner"] = timed["inner"][name]
            row["tflops"] = round(flops / (s["median_ms"] * 1e-3) / 1e12, 2)
        if name == "triton":
            row["triton_config"] = cfg
            row["max_abs_diff_vs_sdpa"] = diff
            row["diff_reference"] = ref_name
            for other in SDPA_BACKENDS:
                if "triton" in st and other in st:
                    row[f"speedup_vs_{other}"] = round(st[other]["median_ms"] / st["triton"]["median_ms"], 3)
        rows.append(row)
    del q, k, v, mask, fns
    torch.cuda.empty_cache()
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    torch = cuda_or_exit()
    import triton  # noqa: F401 - fail here, clearly, if triton is missing

    header = machine(torch)
    print(
        f"# {header['machine']['gpu_name']} (sm_{header['machine']['capability'].replace('.', '')}), "
        f"torch {header['versions']['torch']}, triton {header['versions']['triton']}",
        flush=True,
    )
    t0 = time.time()
    rows = []
    for dtype_name in args.dtypes:
        for head_dim in args.head_dims:
            for seq in args.seqs:
                for case in args.cases:
                    case_rows = run_case(torch, args, dtype_name, head_dim, seq, case)
                    rows += case_rows
                    line = [
                        f"{dtype_name} d={head_dim} h={case_rows[0]['heads']} b={case_rows[0]['batch']} "
                        f"seq={seq} {case:8s}"
                    ]
                    for r in case_rows:
                        line.append(
                            f"{r['backend']}="
                            + (f"{r['median_ms']:.3f}ms/{r['tflops']:.0f}TF" if "median_ms" in r else "N/A")
                        )
                    print("  ".join(line), flush=True)
    payload = {
        "benchmark": "Triton fused attention forward vs torch SDPA backends",
        **header,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "method": (
            "interleaved rounds (rotated order), CUDA events around `inner` back-to-back calls; "
            "median/p10/p90 over rounds; TFLOP/s = 4*B*H*Sq*Sk*D / median (halved for causal), "
            "masked keys counted"
        ),
        "wall_s": round(time.time() - t0, 1),
        "rows": rows,
    }
    jpath = write_result(args.out_dir / f"{args.stem}.json", payload, csv_rows=rows)
    print(f"wrote {jpath} and {jpath.with_suffix('.csv')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
