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

With a padding mask two padding-free forms run too, on the same values packed to the
valid tokens only (packing is outside the timed region, as a server packs once per batch):
``triton_varlen`` (fastft.kernels.attention.attention_varlen_fwd with ``cu_seqlens``) and
``sdpa_nested`` (SDPA on jagged nested tensors, torch's own padding-free route). Their
TFLOP/s use the same padded FLOP count, so they read as effective rates.

Also recorded per case: the largest |triton - sdpa| over the output (a sanity check;
SDPA efficient, else math, is the comparison; for the padding-free forms only the valid
query rows are compared). The result file is rewritten after every case
(``"complete": false`` until the grid is done), so a run stopped early keeps what it
measured. The summary ``targets`` holds, for fp16 at seq 512..4096, the smallest ratio
of each target (Triton vs SDPA flash without a mask; the faster Triton form vs the
fastest SDPA backend that takes the mask) over head_dim 64 and 128.

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
PADDING_FREE = ("triton_varlen", "sdpa_nested")
DEVICE = "cuda"


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
    p.add_argument(
        "--precompile-workers",
        type=int,
        default=0,
        help="compile every autotuning config of every case in this many processes first (fills "
        "Triton's cache, so tuning only times); 0 = off",
    )
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
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    shape = (batch, heads, seq, head_dim)
    q, k, v = (torch.randn(shape, device=DEVICE, dtype=dtype, generator=g) for _ in range(3))
    mask = None
    if case == "padding":
        lengths = torch.randint(seq // 2, seq + 1, (batch,), device=DEVICE, generator=g)
        lengths[0] = seq  # at least one full row, so the longest case is always present
        mask = torch.arange(seq, device=DEVICE)[None, :] < lengths[:, None]
    return q, k, v, mask


def pack(torch, t, mask):
    """(batch, heads, seq, head_dim) -> the valid tokens of a prefix mask, (total, heads, head_dim)."""
    return t.transpose(1, 2)[mask].contiguous()


def packed(torch, q, k, v, mask):
    """q, k, v packed to the valid tokens of a prefix mask, with int32 ``cu_seqlens`` and the
    longest length: flash-attention's varlen arguments."""
    lengths = mask.sum(-1)
    cu32 = torch.zeros(lengths.numel() + 1, dtype=torch.int32, device=q.device)
    cu32[1:] = lengths.cumsum(0)
    return (*(pack(torch, t, mask) for t in (q, k, v)), cu32, int(lengths.max()))


def padding_free(torch, q, k, v, mask):
    """The padding-free forms of the padding case, on packed copies of q, k, v: ({name: fn},
    {name: reason} for a form that could not be set up)."""
    from fastft.kernels.attention import attention_varlen_fwd

    qp, kp, vp, cu32, max_len = packed(torch, q, k, v, mask)
    fns, failed = {}, {}
    fns["triton_varlen"] = lambda: attention_varlen_fwd(qp, kp, vp, cu32, cu32, max_len, max_len)
    try:
        import torch.nn.functional as F

        offsets = cu32.to(torch.int64)
        qn, kn, vn = (torch.nested.nested_tensor_from_jagged(t, offsets=offsets).transpose(1, 2) for t in (qp, kp, vp))
        fns["sdpa_nested"] = lambda: F.scaled_dot_product_attention(qn, kn, vn)
    except (RuntimeError, TypeError, ValueError, AttributeError) as exc:
        failed["sdpa_nested"] = _reason(exc)
    return fns, failed


def unpack_nested(out):
    """A nested (batch, heads, j, head_dim) SDPA output -> packed (total, heads, head_dim)."""
    return out.transpose(1, 2).values() if getattr(out, "is_nested", False) else out


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


def _precompile_one(task) -> str:
    """Worker: compile (and run once) one autotuning config of one case through the fixed-tile
    path, which builds the same kernel as the tuner, so the tuner finds it in Triton's cache."""
    dtype_name, head_dim, seq, case, (bm, bn, warps, stages) = task
    import torch

    from fastft.kernels.attention import attention_fwd, attention_varlen_fwd

    dtype = getattr(torch, DTYPES[dtype_name])
    kind = "padding" if case == "varlen" else case
    q, k, v, mask = make_case(torch, dtype, 2, HEADS[head_dim], seq, head_dim, kind, 0)
    tile = dict(block_m=bm, block_n=bn, num_warps=warps, num_stages=stages)
    try:
        if case == "varlen":
            qp, kp, vp, cu, max_len = packed(torch, q, k, v, mask)
            attention_varlen_fwd(qp, kp, vp, cu, cu, max_len, max_len, **tile)
        else:
            attention_fwd(q, k, v, mask, causal=case == "causal", **tile)
        torch.cuda.synchronize()
        return "ok"
    except Exception as exc:  # noqa: BLE001 - out of resources etc.: the tuner skips it too
        return _reason(exc)


def precompile(args) -> dict:
    """Compile every (case, config) pair in parallel processes; {outcome: count}."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from fastft.kernels import attention as A

    kinds = [*args.cases, *(["varlen"] if "padding" in args.cases else [])]
    seq = min(args.seqs)  # every benchmarked seq is a multiple of 16: one specialisation
    grid = [(dt, d, kind) for dt in args.dtypes for d in args.head_dims for kind in kinds]
    tasks = [(dt, d, seq, kind, cfg) for dt, d, kind in grid for cfg in A._GPU_CONFIGS]
    counts: dict = {}
    with ProcessPoolExecutor(args.precompile_workers, mp_context=mp.get_context("spawn")) as pool:
        for outcome in pool.map(_precompile_one, tasks):
            key = outcome if outcome == "ok" else outcome[:80]
            counts[key] = counts.get(key, 0) + 1
    return counts


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


def _reason(exc) -> str:
    msg = str(exc).strip()
    return f"N/A: {msg.splitlines()[0][:200] if msg else type(exc).__name__}"


def run_case(torch, args, dtype_name, head_dim, seq, case) -> list[dict]:
    dtype = getattr(torch, DTYPES[dtype_name])
    heads = HEADS[head_dim]
    batch = max(1, args.tokens // seq)
    causal = case == "causal"
    q, k, v, mask = make_case(torch, dtype, batch, heads, seq, head_dim, case, args.seed)
    fns = backends(torch, q, k, v, mask, causal)
    status = {}
    names = ["triton", *SDPA_BACKENDS]
    if mask is not None:
        free, failed = padding_free(torch, q, k, v, mask)
        fns.update(free)
        status.update(failed)
        names += list(PADDING_FREE)
    outs = {}
    for name, fn in list(fns.items()):
        try:
            outs[name] = fn()  # warm-up; Triton autotunes on its first call for this key
            fn()
            torch.cuda.synchronize()
            status[name] = "ok"
        except (RuntimeError, NotImplementedError, TypeError, ValueError, torch.cuda.OutOfMemoryError) as exc:
            status[name] = _reason(exc)
            del fns[name]
            outs.pop(name, None)
            torch.cuda.empty_cache()
    cfg = triton_config() if "triton" in fns else None
    ref_name = next((n for n in ("sdpa_efficient", "sdpa_math", "sdpa_flash") if n in outs), None)
    diffs = {}
    if ref_name is not None:
        ref = outs[ref_name].float()
        if "triton" in outs:
            diffs["triton"] = (outs["triton"].float() - ref).abs().max().item()
        if mask is not None:
            ref_valid = pack(torch, ref, mask)  # the valid query rows only
            for name in PADDING_FREE:
                if name in outs:
                    diffs[name] = (unpack_nested(outs[name]).float() - ref_valid).abs().max().item()
    outs.clear()
    timed = time_interleaved(torch, fns, args.rounds, args.min_ms) if fns else {"times": {}, "inner": {}}
    flops = 4 * batch * heads * seq * seq * head_dim / (2 if causal else 1)
    st = {n: stats(ts) for n, ts in timed["times"].items()}
    rows = []
    for name in names:
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
        if mask is not None and name == names[0]:
            row["valid_token_fraction"] = round(float(mask.float().mean()), 4)
        if name in st:
            s = st[name]
            row.update({k: round(v, 5) if isinstance(v, float) else v for k, v in s.items()})
            row["inner"] = timed["inner"][name]
            row["tflops"] = round(flops / (s["median_ms"] * 1e-3) / 1e12, 2)
        if name == "sdpa_nested":
            row["max_abs_diff_vs_sdpa"] = diffs.get(name)
        if name in ("triton", "triton_varlen"):
            if name == "triton":
                row["triton_config"] = cfg
            row["max_abs_diff_vs_sdpa"] = diffs.get(name)
            row["diff_reference"] = ref_name
            for other in (*SDPA_BACKENDS, "sdpa_nested"):
                if name in st and other in st:
                    row[f"speedup_vs_{other}"] = round(st[other]["median_ms"] / st[name]["median_ms"], 3)
        rows.append(row)
    del q, k, v, mask, fns
    torch.cuda.empty_cache()
    return rows


def targets(rows: list[dict]) -> dict:
    """The issue's two GPU targets over fp16, seq 512..4096, head_dim 64 and 128: the smallest
    ratio over those shapes (None where a needed backend did not run)."""
    by = {}
    for r in rows:
        by.setdefault((r["dtype"], r["head_dim"], r["seq"], r["case"]), {})[r["backend"]] = r
    nomask, padded, where = [], [], {}
    for (dt, d, seq, case), rs in sorted(by.items()):
        if dt != "fp16" or not 512 <= seq <= 4096:
            continue
        ours = {n: rs[n]["median_ms"] for n in ("triton", "triton_varlen") if "median_ms" in rs.get(n, {})}
        if not ours:
            continue
        best_ours = min(ours.values())
        if case == "none" and "median_ms" in rs.get("sdpa_flash", {}):
            ratio = round(rs["sdpa_flash"]["median_ms"] / ours.get("triton", best_ours), 3)
            nomask.append(ratio)
            where[f"none d{d} s{seq}"] = ratio
        if case == "padding":
            sdpa = [rs[n]["median_ms"] for n in SDPA_BACKENDS if "median_ms" in rs.get(n, {})]
            if sdpa:
                ratio = round(min(sdpa) / best_ours, 3)
                padded.append(ratio)
                where[f"padding d{d} s{seq} ({min(ours, key=ours.get)})"] = ratio
    return {
        "triton_vs_sdpa_flash_no_mask": {"min": min(nomask) if nomask else None, "target": 0.9},
        "triton_vs_fastest_masked_sdpa": {"min": min(padded) if padded else None, "target": 1.5},
        "per_shape": where,
    }


def write(args, header, rows, t0, complete: bool) -> Path:
    payload = {
        "benchmark": "Triton fused attention forward vs torch SDPA backends",
        **header,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "method": (
            "interleaved rounds (rotated order), CUDA events around `inner` back-to-back calls; "
            "median/p10/p90 over rounds; TFLOP/s = 4*B*H*Sq*Sk*D / median (halved for causal), "
            "masked keys and padded rows counted"
        ),
        "complete": complete,
        "wall_s": round(time.time() - t0, 1),
        "targets": targets(rows),
        "rows": rows,
    }
    return write_result(args.out_dir / f"{args.stem}.json", payload, csv_rows=rows)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch = cuda_or_exit()
    import triton  # noqa: F401 - fail here, clearly, if triton is missing

    header = machine(torch)
    print(
        f"# {header['machine']['gpu_name']} (sm_{header['machine']['capability'].replace('.', '')}), "
        f"torch {torch.__version__}, triton {header['versions']['triton']}",
        flush=True,
    )
    t0 = time.time()
    if args.precompile_workers > 0:
        counts = precompile(args)
        header["precompile"] = {"workers": args.precompile_workers, "outcomes": counts, "s": round(time.time() - t0, 1)}
        print(f"# precompiled in {time.time() - t0:.0f} s: {counts}", flush=True)
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
                    write(args, header, rows, t0, complete=False)
    jpath = write(args, header, rows, t0, complete=True)
    tg = targets(rows)
    for name, t in tg.items():
        if name != "per_shape":
            print(f"target {name}: min {t['min']} (target {t['target']})")
    print(f"wrote {jpath} and {jpath.with_suffix('.csv')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
