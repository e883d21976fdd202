"""fastft's C++ attention kernel running INSIDE ONNX Runtime, end to end, against the served graph.

    python bench/bench_ort_custom_attention.py                 # -> bench/results/ort_custom_attention.json/.csv
    python bench/bench_ort_custom_attention.py --parity-only   # the logits check alone
    python bench/bench_ort_custom_attention.py --export runs/teacher-onnx --reps 20 --result /tmp/a.json

bench/bench_attention_ort.py measured fastft's C++ kernel 1.2-2.2x faster than ORT's attention
kernel on the same shapes (AVX2, 2 threads). This asks whether that survives inside the served
graph through an onnxruntime-extensions Python custom op (PyOp): the first measurement, made
before fastft built its native custom-op library (csrc/ort_op.cpp, libfastft_ort, measured by
bench/bench_ort_op.py, which is what fastft serves). The PyOp's body calls
``fastft.ops.fused_attention_varlen`` (``--core padded``: ``fused_attention``) on the node's
buffers through torch.from_numpy.

The rewrite, per attention layer of ``fastft export``'s graph:

* fp32 ``com.microsoft.Attention(x, W, b, mask)`` -> ``MatMul(x, W) + b`` (ORT keeps the QKV
  projection) -> ``ai.onnx.contrib.FastftAttention(qkv, mask)``;
* INT8 ``com.microsoft.QAttention(xq, Wq, b, x_scale, w_scale, mask, x_zp, w_zp)`` ->
  ``com.microsoft.MatMulIntegerToFloat(xq, Wq, x_scale, w_scale, x_zp, w_zp) + b`` (the same
  dynamically quantised x from the graph's DynamicQuantizeLinear, ORT's own INT8 GEMM) ->
  ``FastftAttention(qkv, mask)``.

Everything else (embeddings, the output projections, FFNs, layer norms) stays as exported.

Overheads the custom op adds, all inside the timed call: the PyOp copies each input into a new
numpy array, takes the GIL, runs the Python body and copies the result into ORT's output. The
stock onnxruntime-extensions hook also turns the result into a Python list (``tolist``) before
it is copied; this script installs a hook that hands the numpy array over directly (the
``+stock`` backend keeps the stock hook, to show what an unmodified PyOp costs).

Measured, interleaved in one run per sequence length (batch 1, real text, ORT spinning off,
``--threads`` intra-op threads for ORT and torch): ``fp32`` (the exported model.onnx as served),
``fp32+cpp`` (the rewrite), ``fp32+cpp+stock`` (the rewrite with the stock PyOp hook), and
``int8`` / ``int8+cpp`` for model_int8.onnx. Each row: p10/p50/p90/p99 ms and the ratio of its
p50 to the served graph's (< 1: the custom op is faster). Before timing, logits of every
rewrite are compared with the unmodified graph at several shapes (padding included). After it,
``layer_breakdown`` times one fp32 attention layer alone: ORT's Attention node, the rewrite
(MatMul + Add + FastftAttention), the FastftAttention node alone and the kernel body called
directly, so the per-layer gap and the PyOp's own cost can be read off.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (see fastft bench)

import argparse  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from fastft.bench.runner import interleave, quantiles, write_result  # noqa: E402
from fastft.runtime.ort_attention import node_attr, swap_attention  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OP_DOMAIN = "ai.onnx.contrib"  # onnxruntime-extensions' domain for Python ops
OP_TYPE = "FastftAttention"
MS = "com.microsoft"
CORES = ("varlen", "padded")

# ---------------------------------------------------------------------------------------
# the custom op: ORT hands the QKV projection (batch, seq, 3*hidden) and the int32 key mask
# ---------------------------------------------------------------------------------------
_CORE = {"name": "varlen"}


def attention_core(qkv: np.ndarray, mask: np.ndarray, num_heads: int, scale: float) -> np.ndarray:
    """softmax(q k^T * scale + key mask) v for packed QKV ``(batch, seq, 3*hidden)`` (Q, K, V
    concatenated on the last axis, as com.microsoft.Attention's weight) and an int ``(batch, seq)``
    key mask (1 = attend). Returns ``(batch, seq, hidden)`` float32, C-contiguous."""
    from fastft.ops import fused_attention, fused_attention_varlen

    b, s, h3 = qkv.shape
    h = h3 // 3
    d = h // num_heads
    scale = scale or d**-0.5  # the Attention node's scale 0 means the default
    t = torch.from_numpy(qkv)
    m = torch.from_numpy(mask).bool()
    used = m.sum(1, dtype=torch.int32)
    right_padded = bool((m == (torch.arange(s)[None, :] < used[:, None])).all())
    if _CORE["name"] == "varlen" and right_padded:
        # (batch*seq, 3, heads, d) views: no copy of Q/K/V; the output is (batch*seq, heads, d) = (b, s, h)
        packed = t.view(b * s, 3, num_heads, d)
        cu = torch.arange(0, (b + 1) * s, s, dtype=torch.int32)
        seqused = None if int(used.min()) == s else used
        out = fused_attention_varlen(
            packed[:, 0], packed[:, 1], packed[:, 2], cu, cu, s, s, scale=scale, seqused_q=seqused, seqused_k=seqused
        )
        return out.view(b, s, h).numpy()
    q, k, v = t.view(b, s, 3, num_heads, d).permute(2, 0, 3, 1, 4)  # (b, heads, s, d) views each
    out = fused_attention(q, k, v, m, scale=scale)
    return out.transpose(1, 2).reshape(b, s, h).numpy()


_HOOK = {"stock": False}


def register_op() -> str:
    """Declare FastftAttention to onnxruntime-extensions and install the array-passing hook;
    returns the custom-op library path for ``SessionOptions.register_custom_ops_library``."""
    from onnxruntime_extensions import (
        PyCustomOpDef,
        _ocos,  # the stock hook (tolist) and the op registry
        get_library_path,
        onnx_op,
    )

    @onnx_op(
        op_type=OP_TYPE,
        inputs=[PyCustomOpDef.dt_float, PyCustomOpDef.dt_int32],
        outputs=[PyCustomOpDef.dt_float],
        attrs={"num_heads": PyCustomOpDef.dt_int64, "scale": PyCustomOpDef.dt_float},
    )
    def fastft_attention(qkv, mask, num_heads, scale):
        return attention_core(qkv, mask, num_heads, scale)

    stock = _ocos._on_pyop_invocation

    def invoke(k_id, feed, attributes):
        if _HOOK["stock"]:
            return stock(k_id, feed, attributes)
        op = _ocos.Opdef._odlist[k_id]
        out = np.ascontiguousarray(op.body(*feed, **op.cast_attributes(attributes)), dtype=np.float32)
        return (k_id, out.shape, out)  # the C++ side casts to py::array and copies: no Python list

    PyCustomOpDef.install_hooker(invoke)
    return get_library_path()


# ---------------------------------------------------------------------------------------
# the graph rewrite
# ---------------------------------------------------------------------------------------
def rewrite(model):
    """A copy of ``model`` (onnx ModelProto) with each com.microsoft Attention / QAttention split
    into ORT's QKV projection (+ bias: the PyOp takes none) and FastftAttention. Returns (model,
    number of nodes replaced). The same swap fastft serves with its native op
    (fastft.runtime.ort_attention), here onto the PyOp."""
    return swap_attention(model, fold_bias=False, domain=OP_DOMAIN, op_type=OP_TYPE)


# ---------------------------------------------------------------------------------------
# sessions, parity, timing
# ---------------------------------------------------------------------------------------
def export_dir(args) -> Path:
    """The fastft export (model.onnx + model_int8.onnx) to measure: --export, else the one
    ``fastft bench`` builds and caches for --model (the fine-tuned teacher by default)."""
    from fastft.bench import artifacts

    if args.export:
        d = Path(args.export)
        if not artifacts.is_export_dir(d):
            raise SystemExit(f"fastft: error: --export {d} is not a `fastft export --int8` directory")
        return d
    model_dir, what = (Path(args.model), "--model") if args.model else artifacts.default_model()
    art = artifacts.prepare(
        Path(model_dir), ["fastft-fp32", "fastft-int8"], artifacts.work_dir(Path(model_dir)), log=print
    )
    print(f"model: {what}; export: {art['fastft']}", flush=True)
    return art["fastft"]


def open_pair(path: Path, level: str, threads: int, lib: str):
    """(served session, custom-op session, nodes replaced) for one exported graph; both with the
    serving options (``threads`` intra-op threads, spinning off, sequential, ``level``)."""
    import onnx

    from fastft.runtime.session import create_session, session_options

    served = create_session(path, session_options(threads=threads, spinning=False, level=level))
    model, n = rewrite(onnx.load(str(path)))
    if n == 0:
        return served, None, 0
    opts = session_options(threads=threads, spinning=False, level=level)
    opts.register_custom_ops_library(lib)
    import onnxruntime as ort

    custom = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return served, custom, n


def feeds_for(tok, texts, batch: int, seq: int, lengths: list[int] | None, names: list[str]) -> dict:
    """batch x seq real-text ids; ``lengths``: per-row valid tokens (right padding, [SEP] last)."""
    from fastft.bench.runners import make_inputs

    f = make_inputs(tok, batch, seq, texts, lengths)
    return {k: v for k, v in f.items() if k in names}


# (batch, seq, valid tokens per row or None)
PARITY_SHAPES = [
    (1, 16, None),
    (1, 128, None),
    (1, 512, None),
    (2, 128, [128, 77]),
    (3, 512, [512, 300, 9]),
    (2, 16, [5, 16]),
]


def parity(pairs: dict, tok, texts) -> list[dict]:
    rows = []
    for name, (served, custom, _) in pairs.items():
        if custom is None:
            continue
        names = [i.name for i in served.get_inputs()]
        for b, s, lengths in PARITY_SHAPES:
            feeds = feeds_for(tok, texts, b, s, lengths, names)
            for core in CORES:
                _CORE["name"] = core
                a = served.run(None, feeds)[0]
                c = custom.run(None, feeds)[0]
                if a.ndim == 3:  # per-token logits: padded positions are no output (varlen leaves them zero)
                    valid = feeds["attention_mask"].astype(bool)
                    a, c = a[valid], c[valid]
                rows.append(
                    {
                        "graph": name,
                        "core": core,
                        "batch": b,
                        "seq": s,
                        "valid_tokens": lengths or [s] * b,
                        "max_abs_diff_logits": float(np.abs(a - c).max()),
                        "max_abs_logit": float(np.abs(a).max()),
                        "same_labels": bool((a.argmax(-1) == c.argmax(-1)).all()),
                    }
                )
                print(
                    f"parity {name:<5} core {core:<6} batch {b} seq {s:3d} valid {lengths or 'all'}: "
                    f"max |diff| {rows[-1]['max_abs_diff_logits']:.2e}",
                    flush=True,
                )
    _CORE["name"] = "varlen"
    return rows


def agreement(pairs: dict, tok, texts, n: int, max_len: int = 512) -> dict:
    """Labels and logits of every rewrite against its served graph on ``n`` real texts, batch 1,
    each at its own token length (the default core)."""
    out = {}
    for name, (served, custom, _) in pairs.items():
        if custom is None:
            continue
        names = [i.name for i in served.get_inputs()]
        same, diff, lengths = 0, 0.0, []
        for text in texts[:n]:
            enc = tok(text, truncation=True, max_length=max_len, return_tensors="np")
            feeds = {k: v.astype(np.int64) for k, v in enc.items() if k in names}
            a, c = served.run(None, feeds)[0], custom.run(None, feeds)[0]
            same += int((a.argmax(-1) == c.argmax(-1)).all())
            diff = max(diff, float(np.abs(a - c).max()))
            lengths.append(int(feeds["input_ids"].shape[1]))
        out[name] = {
            "texts": len(lengths),
            "tokens_min_median_max": [min(lengths), int(np.median(lengths)), max(lengths)],
            "label_agreement": round(same / max(len(lengths), 1), 4),
            "max_abs_diff_logits": diff,
        }
        print(f"agreement {name}: {out[name]}", flush=True)
    return out


def timing(pairs: dict, tok, texts, seqs, reps: int, warmup: int, core: str, stock: bool) -> list[dict]:
    _CORE["name"] = core
    rows = []
    for s in seqs:
        fns = {}
        for name, (served, custom, _) in pairs.items():
            feeds = feeds_for(tok, texts, 1, s, None, [i.name for i in served.get_inputs()])
            out = served.get_outputs()[0].name
            fns[name] = _runner(served, out, feeds, False)
            if custom is not None:
                fns[name + "+cpp"] = _runner(custom, out, feeds, False)
                if stock and name == "fp32":
                    fns[name + "+cpp+stock"] = _runner(custom, out, feeds, True)
        t = interleave(fns, reps, warmup=warmup)
        for name in fns:
            q = quantiles(t.wall[name])
            base = quantiles(t.wall[name.split("+")[0]])["p50_ms"]
            rows.append(
                {
                    "backend": name,
                    "seq": s,
                    "batch": 1,
                    "core": core if "+cpp" in name else None,
                    "p10_ms": round(q["p10_ms"], 3),
                    "p50_ms": round(q["p50_ms"], 3),
                    "p90_ms": round(q["p90_ms"], 3),
                    "p99_ms": round(q["p99_ms"], 3),
                    "ratio_p50_vs_served": round(q["p50_ms"] / base, 3),
                }
            )
            r = rows[-1]
            print(
                f"seq {s:4d} {name:<15} p10 {r['p10_ms']:7.2f} p50 {r['p50_ms']:7.2f} p90 {r['p90_ms']:7.2f} "
                f"p99 {r['p99_ms']:7.2f} ms  x{r['ratio_p50_vs_served']:.3f} of served",
                flush=True,
            )
    return rows


def layer_breakdown(fp32_path: Path, threads: int, lib: str, seqs, reps: int, warmup: int) -> list[dict]:
    """One attention layer, the first of ``fp32_path``, on random hidden states, batch 1, no padding:
    ``ort-attention`` (its com.microsoft Attention node alone), ``rewrite`` (MatMul + Add +
    FastftAttention in ORT), ``pyop`` (FastftAttention alone in ORT, on the projection's output:
    the kernel + the PyOp's copies and Python call) and ``kernel`` (the op body called directly)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from fastft.runtime.session import session_options

    src = onnx.load(str(fp32_path))
    att = next(n for n in src.graph.node if n.domain == MS and n.op_type == "Attention")
    inits = {i.name: i for i in src.graph.initializer if i.name in att.input[1:3]}
    w, bias = numpy_helper.to_array(inits[att.input[1]]), numpy_helper.to_array(inits[att.input[2]])
    heads, scale = int(node_attr(att, "num_heads")), float(node_attr(att, "scale", 0.0))
    hidden = w.shape[0]

    def session(nodes, inputs, custom: bool):
        graph = helper.make_graph(
            nodes,
            "layer",
            [helper.make_tensor_value_info(n, t, ["b", "s", d] if d else ["b", "s"]) for n, t, d in inputs],
            [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["b", "s", hidden])],
            initializer=list(inits.values()),
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1), helper.make_opsetid(OP_DOMAIN, 1)],
        )
        model.ir_version = 8
        opts = session_options(threads=threads, spinning=False, level="basic")
        if custom:
            opts.register_custom_ops_library(lib)
        return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])

    x_in, m_in = ("x", TensorProto.FLOAT, hidden), ("mask", TensorProto.INT32, None)
    a = helper.make_node("Attention", ["x", att.input[1], att.input[2], "mask"], ["out"], domain=MS)
    a.attribute.extend(att.attribute)
    core = helper.make_node(OP_TYPE, ["qkv", "mask"], ["out"], domain=OP_DOMAIN, num_heads=heads, scale=scale)
    sess_att = session([a], [x_in, m_in], False)
    sess_rw = session(
        [
            helper.make_node("MatMul", ["x", att.input[1]], ["mm"]),
            helper.make_node("Add", ["mm", att.input[2]], ["qkv"]),
            core,
        ],
        [x_in, m_in],
        True,
    )
    sess_op = session([core], [("qkv", TensorProto.FLOAT, 3 * hidden), m_in], True)
    rows = []
    rng = np.random.default_rng(0)
    for s in seqs:
        x = rng.standard_normal((1, s, hidden), dtype=np.float32)
        mask = np.ones((1, s), dtype=np.int32)
        feeds, qkv_feeds = {"x": x, "mask": mask}, {"qkv": x @ w + bias, "mask": mask}
        fns = {
            "ort-attention": lambda f=feeds: sess_att.run(None, f),
            "rewrite": lambda f=feeds: sess_rw.run(None, f),
            "pyop": lambda f=qkv_feeds: sess_op.run(None, f),
            "kernel": lambda f=qkv_feeds: attention_core(f["qkv"], f["mask"], heads, scale),
        }
        err = float(np.abs(fns["ort-attention"]()[0] - fns["rewrite"]()[0]).max())
        t = interleave(fns, reps, warmup=warmup)
        for name in fns:
            q = quantiles(t.wall[name])
            rows.append(
                {
                    "part": name,
                    "seq": s,
                    "p10_ms": round(q["p10_ms"], 4),
                    "p50_ms": round(q["p50_ms"], 4),
                    "p90_ms": round(q["p90_ms"], 4),
                    "max_abs_diff_rewrite_vs_ort": err,
                }
            )
            print(f"layer seq {s:4d} {name:<14} p50 {rows[-1]['p50_ms']:7.3f} ms", flush=True)
    return rows


def _runner(sess, out: str, feeds: dict, stock: bool):
    def run():
        _HOOK["stock"] = stock
        return sess.run([out], feeds)[0]

    return run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model directory [the fine-tuned teacher if one exists]")
    ap.add_argument("--export", default=None, help="a `fastft export --int8` directory to use as is")
    ap.add_argument("--seqs", default="128,512")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--core", choices=CORES, default="varlen", help="the fastft op the custom node calls")
    ap.add_argument("--no-stock", action="store_true", help="skip the fp32+cpp+stock backend")
    ap.add_argument("--agreement-texts", type=int, default=200, help="real texts for the label check [200]")
    ap.add_argument("--parity-only", action="store_true")
    ap.add_argument("--result", default=str(ROOT / "bench" / "results" / "ort_custom_attention.json"))
    args = ap.parse_args()
    try:
        seqs = [int(s) for s in args.seqs.split(",")]
    except ValueError:
        print("fastft: error: --seqs takes comma-separated integers", file=sys.stderr)
        return 2
    try:
        import onnxruntime_extensions
    except ImportError:
        print(
            "fastft: error: this benchmark needs onnxruntime-extensions (pip install onnxruntime-extensions)",
            file=sys.stderr,
        )
        return 2
    from fastft.bench.runners import bench_texts
    from fastft.models import load_tokenizer, read_meta
    from fastft.runtime.session import runtime_level

    torch.set_num_threads(args.threads)
    d = export_dir(args)
    meta = read_meta(d)
    tok, texts = load_tokenizer(d), bench_texts()
    lib = register_op()
    pairs, graphs = {}, {}
    for name, f in (("fp32", "model.onnx"), ("int8", "model_int8.onnx")):
        level = runtime_level(meta, f) or "all"
        pairs[name] = open_pair(d / f, level, args.threads, lib)
        graphs[name] = {"file": f, "graph_optimization": level, "attention_nodes_replaced": pairs[name][2]}
        print(f"{name}: {f} at level {level}, {pairs[name][2]} attention nodes replaced", flush=True)
    par = parity(pairs, tok, texts)
    agree = agreement(pairs, tok, texts, args.agreement_texts)
    if args.parity_only:
        return 0
    rows = timing(pairs, tok, texts, seqs, args.reps, args.warmup, args.core, not args.no_stock)
    layer = layer_breakdown(d / "model.onnx", args.threads, lib, seqs, args.reps, args.warmup)
    summary = {}
    for s in seqs:
        p50 = {r["backend"]: r["p50_ms"] for r in rows if r["seq"] == s}
        summary[str(s)] = {k: round(p50[k + "+cpp"] / p50[k], 3) for k in pairs if k + "+cpp" in p50}
    write_result(
        args.result,
        {
            "benchmark": "fastft C++ attention inside ONNX Runtime (onnxruntime-extensions PyOp) vs the served graph",
            "reps": args.reps,
            "warmup": args.warmup,
            "threads": args.threads,
            "core": args.core,
            "graphs": graphs,
            "ratio_p50_custom_vs_served": summary,
            "parity": par,
            "agreement": agree,
            "rows": rows,
            "layer_breakdown": layer,
            "versions": {"onnxruntime_extensions": onnxruntime_extensions.__version__},
        },
        csv_rows=rows,
    )
    print(f"wrote {args.result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
