"""SkipLayerNormalization back into Add + LayerNormalization, where ONNX Runtime runs that faster.

ORT's transformer fusions turn every residual ``LayerNorm(x + skip + bias)`` into one
``com.microsoft`` SkipLayerNormalization node. On the CPU provider of onnxruntime 1.32 that kernel
is slower than the standard ops it replaces: at (1, 512, 384), 1.30 ms against 0.39 ms for
Add + Add + LayerNormalization (opset 17) on one thread, 0.67 against 0.25 ms on two
(``bench/results/skip_layernorm_avx2.json``, AVX2-only). Whole models gain 4-5% (the 6-layer
teacher, 12 nodes) to 11% (a head-pruned 3-layer INT8 student) in p50.

So the saved graph is rewritten only where a probe on this machine, with this onnxruntime, says
it pays: :func:`probe` times both forms on the model's hidden size, interleaved; only when the
split form is clearly faster (:data:`MIN_GAIN`) does :func:`split_skip_layernorm` rewrite the
nodes. The rewrite is exact up to float rounding (the same sum, the same normalisation) and keeps
the node's fourth output (the sum, which fused graphs feed to the next residual) when used. A node
whose mean or inverse-std outputs are used is left alone. The serving session opens the file at
``basic``, which does not fuse them back (nor did ORT's ``extended`` pass when tried here).
"""

from __future__ import annotations

import functools
import time

MIN_GAIN = 1.2  # split only when Add + LayerNormalization is at least this much faster in the probe
_PROBE_SEQ = 256
_PROBE_ROUNDS = 30


def _opset(model, domain: str = "") -> int:
    for imp in model.opset_import:
        if imp.domain in (domain, "ai.onnx" if domain == "" else domain):
            return int(imp.version)
    return 0


def splittable(model) -> list:
    """The SkipLayerNormalization nodes :func:`split_skip_layernorm` would rewrite."""
    if _opset(model) < 17:  # LayerNormalization is opset 17
        return []
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    out = []
    for n in model.graph.node:
        if n.op_type != "SkipLayerNormalization" or n.domain != "com.microsoft":
            continue
        if len(n.input) < 3 or not n.input[2]:
            continue
        if any(o and o in used for o in list(n.output)[1:3]):  # mean / inv_std_var: no LayerNormalization twin
            continue
        out.append(n)
    return out


def split_skip_layernorm(model) -> int:
    """Rewrite the model's splittable SkipLayerNormalization nodes in place; returns how many."""
    from onnx import helper

    nodes = splittable(model)
    if not nodes:
        return 0
    targets = {id(n) for n in nodes}
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    new_nodes = []
    for n in model.graph.node:
        if id(n) not in targets:
            new_nodes.append(n)
            continue
        ins = list(n.input) + [""] * (5 - len(n.input))
        x, skip, gamma, beta, bias = ins[:5]
        outs = list(n.output) + [""] * (4 - len(n.output))
        eps = next((a.f for a in n.attribute if a.name == "epsilon"), 1e-12)
        base = n.name or outs[0]
        summed = outs[3] if outs[3] and outs[3] in used else f"{base}_sum"
        if bias:
            new_nodes.append(helper.make_node("Add", [x, skip], [f"{base}_skip"], name=f"{base}_add_skip"))
            new_nodes.append(helper.make_node("Add", [f"{base}_skip", bias], [summed], name=f"{base}_add_bias"))
        else:
            new_nodes.append(helper.make_node("Add", [x, skip], [summed], name=f"{base}_add_skip"))
        ln_in = [summed, gamma] + ([beta] if beta else [])
        new_nodes.append(
            helper.make_node("LayerNormalization", ln_in, [outs[0]], name=f"{base}_ln", axis=-1, epsilon=eps)
        )
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    return len(nodes)


def hidden_size_of(model) -> int | None:
    """The width normalised by the first SkipLayerNormalization (its gamma's length)."""
    inits = {t.name: t for t in model.graph.initializer}
    for n in splittable(model):
        g = inits.get(n.input[2])
        if g is not None and len(g.dims) == 1:
            return int(g.dims[0])
    return None


@functools.lru_cache(maxsize=8)
def probe(hidden: int, threads: int | None = None, seq: int = _PROBE_SEQ, rounds: int = _PROBE_ROUNDS) -> dict:
    """Time one SkipLayerNormalization node against Add + Add + LayerNormalization at (1, seq, hidden)
    in ONNX Runtime on this CPU, interleaved; median milliseconds of each and their ratio."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from fastft.runtime.session import session_options

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32), n) for n in ("g", "b", "bias")]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, seq, hidden]) for n in ("x", "skip")]
    fused = [helper.make_node("SkipLayerNormalization", ["x", "skip", "g", "b", "bias"], ["y"], domain="com.microsoft")]
    split = [
        helper.make_node("Add", ["x", "skip"], ["t"]),
        helper.make_node("Add", ["t", "bias"], ["u"]),
        helper.make_node("LayerNormalization", ["u", "g", "b"], ["y"], axis=-1, epsilon=1e-12),
    ]

    def session(nodes):
        out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, seq, hidden])
        graph = helper.make_graph(nodes, "probe", io, [out], initializer=inits)
        opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
        m = helper.make_model(graph, opset_imports=opsets)
        m.ir_version = 8
        so = session_options(threads=threads, spinning=False, level="disable")  # the serving threads
        return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])

    feeds = {n: rng.standard_normal((1, seq, hidden)).astype(np.float32) for n in ("x", "skip")}
    sessions = {"fused_ms": session(fused), "split_ms": session(split)}
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for s in sessions.values():
        s.run(None, feeds)
    for i in range(rounds):
        for k in sorted(sessions, reverse=bool(i % 2)):
            t0 = time.perf_counter()
            sessions[k].run(None, feeds)
            times[k].append(time.perf_counter() - t0)
    med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
    return {
        "shape": [1, seq, hidden],
        "fused_ms": round(med["fused_ms"], 4),
        "split_ms": round(med["split_ms"], 4),
        "gain": round(med["fused_ms"] / med["split_ms"], 3) if med["split_ms"] > 0 else None,
    }


def maybe_split(path, threads: int | None = None) -> dict:
    """Probe, and rewrite the ONNX file at ``path`` when splitting pays; what was done, for reports."""
    import onnx

    model = onnx.load(str(path))
    hidden = hidden_size_of(model)
    if hidden is None:
        return {"split": 0, "reason": "no splittable SkipLayerNormalization"}
    p = dict(probe(hidden, threads))  # cached per width and thread count: one probe per process
    if not p["gain"] or p["gain"] < MIN_GAIN:
        return {"split": 0, "probe": p, "min_gain": MIN_GAIN}
    n = split_skip_layernorm(model)
    onnx.save(model, str(path))
    return {"split": n, "probe": p, "min_gain": MIN_GAIN}
