"""ONNX Runtime's own attention kernel against fastft's C++ kernel, on the same shapes.

    python bench/bench_attention_ort.py                     # -> bench/results/attention_ort_cpu.json/.csv
    python bench/bench_attention_ort.py --seqs 128 --reps 20 --result /tmp/a.json

The served graph runs attention inside ONNX Runtime (the ``com.microsoft`` Attention node
that ``fastft export`` writes). Running fastft's C++ kernel there instead would need a
custom-op library; that is only worth building where ORT's kernel is the slower one. This
benchmark answers that: per shape, one ORT session holding a single ``com.microsoft``
MultiHeadAttention node (the attention core of the fused Attention node, without its QKV
projection: Q, K, V in (batch, seq, heads*head_dim) and a key padding mask), against
``fastft.ops.fused_attention`` (padded, the C++ kernel) and ``fused_attention_varlen``
(padding-free) and torch SDPA, on the same numbers, interleaved, batch 1, 12 heads, the same
thread count for every backend (ORT intra-op threads with spinning off; torch threads).

Each row: p10/p50/p90 ms, ratio of ORT's p50 to the backend's p50 (> 1: faster than ORT), and
the largest absolute difference from SDPA on the valid rows (a correctness check).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fastft.bench.runner import interleave, quantiles, write_result

ROOT = Path(__file__).resolve().parents[1]


def mha_session(heads: int, threads: int, masked: bool):
    import onnxruntime as ort
    from onnx import TensorProto, helper

    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["b", "s", "h"]) for n in ("query", "key", "value")]
    node_inputs = ["query", "key", "value"]
    if masked:
        inputs.append(helper.make_tensor_value_info("key_padding_mask", TensorProto.INT32, ["b", "s"]))
        node_inputs += ["", "key_padding_mask"]  # bias absent
    node = helper.make_node("MultiHeadAttention", node_inputs, ["out"], domain="com.microsoft", num_heads=heads)
    graph = helper.make_graph(
        [node], "mha", inputs, [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["b", "s", "h"])]
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    model.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def bench_shape(seq: int, head_dim: int, masked: bool, threads: int, reps: int, heads: int = 12) -> list[dict]:
    from fastft.ops import fused_attention, fused_attention_varlen

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, heads, seq, head_dim, generator=gen) for _ in range(3))
    n_valid = int(seq * 0.75) if masked else seq
    mask = torch.zeros(1, seq, dtype=torch.bool)
    mask[:, :n_valid] = True
    # ORT layout: (batch, seq, heads*head_dim), contiguous, made once (as the graph holds it)
    qo, ko, vo = (t.transpose(1, 2).reshape(1, seq, heads * head_dim).contiguous().numpy() for t in (q, k, v))
    sess = mha_session(heads, threads, masked)
    feeds = {"query": qo, "key": ko, "value": vo}
    if masked:
        feeds["key_padding_mask"] = mask.numpy().astype(np.int32)

    flat = [t[0].transpose(0, 1) for t in (q, k, v)]  # (seq, heads, d) views
    slots = torch.tensor([0, seq], dtype=torch.int32)
    used = torch.tensor([n_valid], dtype=torch.int32)
    attn_mask = mask[:, None, None, :] if masked else None

    fns = {
        "ort-mha": lambda: sess.run(None, feeds)[0],
        "fastft": lambda: fused_attention(q, k, v, mask if masked else None),
        "fastft-varlen": lambda: fused_attention_varlen(*flat, slots, slots, seq, seq, seqused_q=used, seqused_k=used),
        "sdpa": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask),
    }
    # correctness on the valid query rows, against SDPA
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)[0, :, :n_valid]  # (h, n, d)
    err = {}
    for name, fn in fns.items():
        out = fn()
        if name == "ort-mha":
            o = torch.from_numpy(np.asarray(out)).reshape(1, seq, heads, head_dim)[0, :n_valid].transpose(0, 1)
        elif name == "fastft-varlen":
            o = out[:n_valid].transpose(0, 1)
        else:
            o = out[0, :, :n_valid]
        err[name] = float((o - ref).abs().max())
    t = interleave(fns, reps, warmup=3)
    q_ort = quantiles(t.wall["ort-mha"])
    rows = []
    for name in fns:
        qq = quantiles(t.wall[name])
        rows.append(
            {
                "backend": name,
                "seq": seq,
                "head_dim": head_dim,
                "heads": heads,
                "masked": masked,
                "valid_keys": n_valid,
                "threads": threads,
                "p10_ms": round(qq["p10_ms"], 4),
                "p50_ms": round(qq["p50_ms"], 4),
                "p90_ms": round(qq["p90_ms"], 4),
                "speedup_vs_ort": round(q_ort["p50_ms"] / qq["p50_ms"], 3),
                "max_abs_err_vs_sdpa": err[name],
            }
        )
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seqs", default="128,512")
    ap.add_argument("--head-dims", default="32,64")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=60)
    ap.add_argument("--result", default=str(ROOT / "bench" / "results" / "attention_ort_cpu.json"))
    args = ap.parse_args()
    try:
        seqs = [int(s) for s in args.seqs.split(",")]
        dims = [int(s) for s in args.head_dims.split(",")]
    except ValueError:
        print("fastft: error: --seqs and --head-dims take comma-separated integers", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    rows = []
    for masked in (True, False):
        for d in dims:
            for s in seqs:
                rows += bench_shape(s, d, masked, args.threads, args.reps)
                for r in rows[-4:]:
                    print(
                        f"seq {s:5d} d {d:3d} mask {int(masked)} {r['backend']:<14} p50 {r['p50_ms']:8.3f} ms"
                        f"  x{r['speedup_vs_ort']:.2f} vs ORT  err {r['max_abs_err_vs_sdpa']:.1e}",
                        flush=True,
                    )
    write_result(
        args.result,
        {
            "benchmark": "ORT MultiHeadAttention vs fastft C++ attention, same shapes",
            "reps": args.reps,
            "rows": rows,
        },
        csv_rows=rows,
    )
    print(f"wrote {args.result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
