"""End to end: fused attention in torch (swap) and in the exported ONNX graph (export_fused).

    python bench/bench_attention_e2e.py                 # minilm-l6 (teacher if trained), seq 512, batch 1, 2 threads
    python bench/bench_attention_e2e.py --rounds 40 --seq 128

One process, one input, backends timed interleaved (one call each per round, the order
rotating every round), median and quantiles per backend:

  torch-eager        HF PyTorch, attn_implementation="eager"
  torch-swapped      the same model after fastft.swap_attention (fastft.ops.fused_attention)
  ort-plain          fastft.export.onnx.export_onnx (eager attention, TorchScript), raw graph
  ort-fused          fastft.export.attention.export_fused (com.microsoft Attention, packed QKV)
  ort-fused-mha      export_fused(form="mha") (com.microsoft MultiHeadAttention)
  ort-plain+fusions  ort-plain after ORT's transformer optimizer (its pattern-matched Attention;
                     what `fastft export` ships today)
  ort-fused+fusions  ort-fused after the same optimizer (EmbedLayerNorm, SkipLayerNorm, BiasGelu)
  ort-plain+fusions-int8, ort-fused+fusions-int8
                     the two above after fastft's default dynamic INT8 recipe
                     (fastft.export.quantize; Attention -> QAttention)

All ORT sessions: same optimisation level (--level, default all), --threads intra-op
threads, spinning off. Before timing, every backend's logits are checked against
torch-eager. A second section times the attention alone (one layer's shapes:
batch 1, 12 heads, seq 512, head_dim 32, key padding mask) in the three ONNX forms the
exporter could write, which is how the default form was chosen.

Writes bench/results/attention_e2e.json (machine, versions, command included).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# torch's OpenMP threads spin while idle; on a shared, loaded machine that makes 2-thread torch
# several times slower (measured 3.1-4.0 s vs 0.35-0.56 s per minilm-l6 seq-512 call here).
# Passive waiting is torch's equivalent of ORT's "spinning off"; set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from fastft.bench.runner import interleave, quantiles, write_result  # noqa: E402 - notes the load at the start


def ort_session(model, threads: int, level: str):
    """A CPU session on a file path or serialized model bytes (fastft's serving options, spinning off)."""
    import onnxruntime as ort

    from fastft.runtime.session import create_session, session_options

    opts = session_options(threads=threads, spinning=False, level=level)
    if isinstance(model, bytes):
        return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    return create_session(model, opts)


# ---------------------------------------------------------------------------------------
# attention alone: the three forms an exporter can write
# ---------------------------------------------------------------------------------------
def attention_graphs(batch=1, heads=12, seq=512, head_dim=32, seed=0):
    """Three ONNX graphs computing the same attention block, x (batch, seq, hidden) ->
    (batch, seq, hidden) with QKV projection and an int32 key padding mask: com.microsoft
    Attention (packed), MatMul+Add + com.microsoft MultiHeadAttention, and the unfused
    MatMul-Softmax-MatMul graph."""
    from onnx import TensorProto as TP
    from onnx import helper as h
    from onnx import numpy_helper as nh

    e = heads * head_dim
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((e, 3 * e)) * 0.05).astype(np.float32)
    b = (rng.standard_normal(3 * e) * 0.01).astype(np.float32)
    inits = [nh.from_array(w, "W"), nh.from_array(b, "bias")]
    ins = [
        h.make_tensor_value_info("x", TP.FLOAT, [batch, seq, e]),
        h.make_tensor_value_info("mask", TP.INT32, [batch, seq]),
    ]
    outs = [h.make_tensor_value_info("y", TP.FLOAT, [batch, seq, e])]
    ops = [h.make_opsetid("", 17), h.make_opsetid("com.microsoft", 1)]

    def c(a, name, dtype):
        return nh.from_array(np.asarray(a, dtype=dtype), name)

    def model(nodes, extra=()):
        m = h.make_model(h.make_graph(nodes, "attention", ins, outs, inits + list(extra)), opset_imports=ops)
        m.ir_version = 10
        return m

    packed = model(
        [h.make_node("Attention", ["x", "W", "bias", "mask"], ["y"], domain="com.microsoft", num_heads=heads)]
    )
    mha = model(
        [
            h.make_node("MatMul", ["x", "W"], ["qkv0"]),
            h.make_node("Add", ["qkv0", "bias"], ["qkv"]),
            h.make_node("Split", ["qkv", "sp"], ["q", "k", "v"], axis=2),
            h.make_node(
                "MultiHeadAttention", ["q", "k", "v", "", "mask"], ["y"], domain="com.microsoft", num_heads=heads
            ),
        ],
        [c([e, e, e], "sp", np.int64)],
    )
    unfused = model(
        [
            h.make_node("MatMul", ["x", "W"], ["qkv0"]),
            h.make_node("Add", ["qkv0", "bias"], ["qkv"]),
            h.make_node("Reshape", ["qkv", "shp"], ["r"]),
            h.make_node("Transpose", ["r"], ["t"], perm=[2, 0, 3, 1, 4]),
            h.make_node("Split", ["t", "sp1"], ["q0", "k0", "v0"], axis=0),
            h.make_node("Squeeze", ["q0", "z"], ["q"]),
            h.make_node("Squeeze", ["k0", "z"], ["k"]),
            h.make_node("Squeeze", ["v0", "z"], ["v"]),
            h.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
            h.make_node("MatMul", ["q", "kt"], ["s0"]),
            h.make_node("Mul", ["s0", "sc"], ["s1"]),
            h.make_node("Cast", ["mask"], ["mf"], to=TP.FLOAT),
            h.make_node("Sub", ["one", "mf"], ["mi"]),
            h.make_node("Mul", ["mi", "neg"], ["madd"]),
            h.make_node("Unsqueeze", ["madd", "ax12"], ["m4"]),
            h.make_node("Add", ["s1", "m4"], ["s2"]),
            h.make_node("Softmax", ["s2"], ["p"], axis=-1),
            h.make_node("MatMul", ["p", "v"], ["o"]),
            h.make_node("Transpose", ["o"], ["ot"], perm=[0, 2, 1, 3]),
            h.make_node("Reshape", ["ot", "shp2"], ["y"]),
        ],
        [
            c([batch, seq, 3, heads, head_dim], "shp", np.int64),
            c([1, 1, 1], "sp1", np.int64),
            c([0], "z", np.int64),
            c(head_dim**-0.5, "sc", np.float32),
            c(1.0, "one", np.float32),
            c(-3.4e38, "neg", np.float32),
            c([1, 2], "ax12", np.int64),
            c([batch, seq, e], "shp2", np.int64),
        ],
    )
    x = rng.standard_normal((batch, seq, e)).astype(np.float32)
    mask = np.ones((batch, seq), np.int32)
    mask[:, seq - seq // 16 :] = 0
    return {
        "ms-attention (packed QKV)": packed,
        "matmul + ms-multiheadattention": mha,
        "unfused matmul-softmax-matmul": unfused,
    }, {"x": x, "mask": mask}


def bench_attention_forms(args) -> dict:
    graphs, feeds = attention_graphs(seq=args.seq)
    sessions = {k: ort_session(m.SerializeToString(), args.threads, args.level) for k, m in graphs.items()}
    ref = sessions["unfused matmul-softmax-matmul"].run(None, feeds)[0]
    diffs = {k: float(np.abs(s.run(None, feeds)[0] - ref).max()) for k, s in sessions.items()}
    times = interleave(
        {k: (lambda s=s: s.run(None, feeds)) for k, s in sessions.items()}, args.attn_rounds, warmup=5
    ).wall
    return {
        "shape": {
            "batch": 1,
            "heads": 12,
            "seq": args.seq,
            "head_dim": 32,
            "key_padding_mask": True,
            "qkv_projection_included": True,
        },
        "results": [{"form": k, **quantiles(v), "max_abs_diff_vs_unfused": diffs[k]} for k, v in times.items()],
    }


# ---------------------------------------------------------------------------------------
# end to end
# ---------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model directory (default: fastft bench's default model)")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--level", default="all", help="ORT graph optimisation level for every session")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--attn-rounds", type=int, default=100)
    ap.add_argument("--no-int8", action="store_true", help="skip the INT8 rows")
    ap.add_argument("--out", default=str(ROOT / "bench/results/attention_e2e.json"))
    args = ap.parse_args(argv)

    import torch
    from transformers import AutoModelForSequenceClassification

    import fastft
    from fastft.bench.artifacts import default_model
    from fastft.bench.runners import bench_texts, make_inputs
    from fastft.export.attention import count_attention_nodes, export_fused
    from fastft.export.onnx import export_onnx, model_input_names
    from fastft.export.optimize import fuse_transformer
    from fastft.models import load_tokenizer
    from fastft.ops import cpu_backend

    torch.set_num_threads(args.threads)
    if args.model:
        model_dir, model_desc = Path(args.model), f"model directory {args.model}"
    else:
        model_dir, model_desc = default_model()
    print(f"model: {model_desc} ({model_dir})", flush=True)

    def load(impl):
        return (
            AutoModelForSequenceClassification.from_pretrained(
                str(model_dir), attn_implementation=impl, trust_remote_code=False
            )
            .float()
            .eval()
        )

    eager = load("eager")
    swapped = fastft.swap_attention(load("eager"))
    names = model_input_names(eager)
    tok = load_tokenizer(model_dir)
    feeds = make_inputs(tok, args.batch, args.seq, bench_texts())
    feeds = {n: feeds[n] for n in names}
    tfeeds = {k: torch.from_numpy(v) for k, v in feeds.items()}

    int8_recipe = None
    scratch = Path(tempfile.mkdtemp(prefix="fastft-bench-attn-"))
    t0 = time.perf_counter()
    files = {
        "ort-plain": scratch / "plain.onnx",
        "ort-fused": scratch / "fused.onnx",
        "ort-fused-mha": scratch / "fused_mha.onnx",
        "ort-plain+fusions": scratch / "plain_fusions.onnx",
        "ort-fused+fusions": scratch / "fused_fusions.onnx",
    }
    export_onnx(load("eager"), files["ort-plain"], input_names=names)
    export_fused(load("eager"), files["ort-fused"])
    export_fused(load("eager"), files["ort-fused-mha"], form="mha")
    fuse_transformer(files["ort-plain"], files["ort-plain+fusions"], eager.config)
    fuse_transformer(files["ort-fused"], files["ort-fused+fusions"], eager.config)
    if not args.no_int8:
        from fastft.export.quantize import default_recipe, quantize_onnx

        recipe = default_recipe()
        int8_recipe = recipe.name
        for k in ("ort-plain+fusions", "ort-fused+fusions"):
            files[k + "-int8"] = scratch / (files[k].stem + "_int8.onnx")
            quantize_onnx(files[k], files[k + "-int8"], recipe)
    print(f"exports + fusions: {time.perf_counter() - t0:.1f} s", flush=True)
    graph_ops = {k: count_attention_nodes(p) for k, p in files.items()}

    sessions = {k: ort_session(p, args.threads, args.level) for k, p in files.items()}

    def torch_run(net):
        def run():
            with torch.inference_mode():
                return net(**tfeeds).logits.numpy()

        return run

    runners = {"torch-eager": torch_run(eager), "torch-swapped": torch_run(swapped)}
    for k, s in sessions.items():
        runners[k] = lambda s=s: s.run(["logits"], feeds)[0]
    ref = runners["torch-eager"]()
    parity = {k: float(np.abs(r() - ref).max()) for k, r in runners.items()}
    for k, v in parity.items():
        if "int8" not in k and v > 1e-4:
            raise SystemExit(f"{k}: logits differ from torch-eager by {v:.3g} (> 1e-4)")
    print("max |logits - torch-eager|:", {k: f"{v:.2e}" for k, v in parity.items()}, flush=True)

    times = interleave(runners, args.rounds, warmup=args.warmup).wall
    results = [
        {"backend": k, **quantiles(v), "max_abs_diff_vs_eager": parity[k], "attention_nodes": graph_ops.get(k)}
        for k, v in times.items()
    ]
    p50 = {r["backend"]: r["p50_ms"] for r in results}
    for r in results:
        print(
            f"{r['backend']:>18}: p50 {r['p50_ms']:7.1f} ms  p10 {r['p10_ms']:7.1f}  p90 {r['p90_ms']:7.1f}", flush=True
        )

    print("attention alone (one layer's shapes)...", flush=True)
    forms = bench_attention_forms(args)
    for r in forms["results"]:
        print(f"  {r['form']:>32}: p50 {r['p50_ms']:6.2f} ms  p10 {r['p10_ms']:6.2f}", flush=True)

    ratios = {
        "ort-fused / ort-plain": p50["ort-fused"] / p50["ort-plain"],
        "ort-fused-mha / ort-plain": p50["ort-fused-mha"] / p50["ort-plain"],
        "ort-fused+fusions / ort-plain+fusions": p50["ort-fused+fusions"] / p50["ort-plain+fusions"],
        "torch-swapped / torch-eager": p50["torch-swapped"] / p50["torch-eager"],
    }
    if "ort-fused+fusions-int8" in p50:
        ratios["ort-fused+fusions-int8 / ort-plain+fusions-int8"] = (
            p50["ort-fused+fusions-int8"] / p50["ort-plain+fusions-int8"]
        )
    payload = {
        "benchmark": "attention_e2e",
        "model": {"dir": str(model_dir), "description": model_desc},
        "config": {
            "seq": args.seq,
            "batch": args.batch,
            "threads": args.threads,
            "ort_level": args.level,
            "ort_spinning": False,
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
            "rounds": args.rounds,
            "warmup": args.warmup,
            "interleaved": True,
            "input": "real text (movie-snippets), full attention mask",
            "cpu_attention_backend": cpu_backend(),
            "int8_recipe": int8_recipe,
        },
        "results": results,
        "ratios_p50": ratios,
        "targets": [
            {
                "name": f"ORT with exported fused attention faster than the plain export at seq {args.seq}",
                "value": ratios["ort-fused / ort-plain"],
                "threshold": 1.0,
                "passed": p50["ort-fused"] < p50["ort-plain"],
            }
        ],
        "attention_forms": forms,
        "chosen_form": "attention (com.microsoft Attention with packed QKV): fastest form here, see attention_forms "
        "and ort-fused vs ort-fused-mha",
    }
    out = write_result(args.out, payload)
    print(f"wrote {out}")
    for k, v in ratios.items():
        print(f"  {k}: {v:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
