"""fastft's fused attention inside ONNX Runtime: the C++ kernel as a custom op (libfastft_ort).

``fastft export`` writes each encoder layer's attention as ONNX Runtime's ``com.microsoft``
Attention node (QAttention in model_int8.onnx). When the package was built with
``libfastft_ort`` (csrc/ort_op.cpp, next to ``fastft._C``), :class:`~fastft.runtime.ort.OrtPredictor`
swaps each of them, in memory, for ORT's own QKV projection followed by
``ai.fastft.FusedAttention``:

* ``Attention(x, W, b, mask)`` -> ``MatMul(x, W)`` -> ``FusedAttention(qkv, mask, b)``;
* ``QAttention(xq, Wq, b, x_scale, w_scale, mask, x_zp, w_zp)`` ->
  ``MatMulIntegerToFloat(xq, Wq, x_scale, w_scale, x_zp, w_zp)`` (ORT's INT8 GEMM on the same
  dynamically quantised x) -> ``FusedAttention(qkv, mask, b)``.

The op adds the bias as it reads q and v (k's bias only shifts each row's scores by a constant)
and is padding-free: a sequence whose key mask is a prefix attends only its valid rows, its
padded rows come out as zeros. The files on disk stay plain ONNX Runtime graphs, loadable
anywhere. Measured end to end in bench/bench_ort_op.py.

The same library's ``ai.fastft.SkipLayerNorm`` takes each residual ``Add (+ Add bias) +
LayerNormalization`` (:func:`swap_layernorm`): one pass over each row where ORT ran three nodes,
each spread over the intra-op threads (at seq 128 on two threads those ran slower than on one),
and its ``ai.fastft.BiasGelu`` each ``com.microsoft`` BiasGelu / Gelu (:func:`swap_gelu`): one
pass over the data where ORT makes three. ``ort_attention="onnxruntime"`` serves ORT's own
kernels for all of them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from fastft.core.errors import FastftError

__all__ = [
    "DOMAIN",
    "OP_TYPE",
    "MODES",
    "describe",
    "effective_mode",
    "library",
    "resolve",
    "Swaps",
    "swap_attention",
    "swap_gelu",
    "swap_layernorm",
]

DOMAIN = "ai.fastft"
OP_TYPE = "FusedAttention"
LN_OP_TYPE = "SkipLayerNorm"
GELU_OP_TYPE = "BiasGelu"
# what feeds a residual Add swap_layernorm folds: a weight product and the normalised stream
PROJECTIONS = {"MatMul", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "FusedMatMul", "MatMulNBits"}
NORMS = {
    "LayerNormalization",
    LN_OP_TYPE,
    "SkipLayerNormalization",
    "EmbedLayerNormalization",
    "QEmbedLayerNormalization",
}
MS = "com.microsoft"
MODES = ("auto", "fastft", "onnxruntime")
# attributes the swap carries over; a node with any other (qkv_hidden_sizes, mask_filter_value,
# do_rotary...) keeps ORT's kernel
SWAPPABLE_ATTRIBUTES = {"num_heads", "scale", "unidirectional"}
ENV = "FASTFT_ORT_ATTENTION"  # overrides "auto": fastft | onnxruntime


def library() -> Path | None:
    """libfastft_ort's path when this install built it, else None (:func:`fastft._native.ort_library`)."""
    from fastft import _native

    return _native.ort_library()


class Swaps(NamedTuple):
    """How many nodes of a served graph run on fastft's kernels inside ONNX Runtime, per op (all
    0: ORT's own kernels throughout)."""

    attention: int = 0  # ai.fastft.FusedAttention
    layernorm: int = 0  # ai.fastft.SkipLayerNorm
    gelu: int = 0  # ai.fastft.BiasGelu


def describe(swapped: int | Swaps) -> str:
    """What runs a session's attention, for reports (an int: its swapped attention nodes, as
    reports store them), then fastft's other ops where any runs: "fastft C++ kernel in ORT
    (6 nodes) + fastft SkipLayerNorm (12), BiasGelu (6)"."""
    s = swapped if isinstance(swapped, Swaps) else Swaps(int(swapped))
    text = f"fastft C++ kernel in ORT ({s.attention} nodes)" if s.attention else "onnxruntime"
    rows = [f"{op} ({n})" for op, n in (("SkipLayerNorm", s.layernorm), ("BiasGelu", s.gelu)) if n]
    return f"{text} + fastft {', '.join(rows)}" if rows else text


def effective_mode(mode: str) -> str:
    """``mode`` checked, with FASTFT_ORT_ATTENTION (fastft | onnxruntime) deciding ``auto``."""
    if mode not in MODES:
        raise FastftError(f"ort_attention must be one of {', '.join(MODES)} (got {mode!r})")
    if mode == "auto":
        env = os.environ.get(ENV, "").strip().lower()
        if env and env not in MODES:
            raise FastftError(f"{ENV} must be one of {', '.join(MODES)} (got {env!r})")
        mode = env or mode
    return mode


def resolve(mode: str, device_kind: str) -> bool:
    """Whether to swap attention for ``mode`` (:func:`effective_mode`; ``auto``: when the library
    is built and the device is the CPU)."""
    mode = effective_mode(mode)
    if mode == "onnxruntime":
        return False
    ok = device_kind == "cpu" and library() is not None
    if mode == "fastft" and not ok:
        why = (
            "runs on the CPU only"
            if device_kind != "cpu"
            else "needs libfastft_ort.so, which this install did not build"
        )
        raise FastftError(f"ort_attention='fastft' {why} (use 'auto' or 'onnxruntime')")
    if ok:
        from fastft import _native

        _native.forced_isa()  # the library reads it too: a bad value is an error now, not a fallback
    return ok


def node_attr(node, name, default=None):
    """The value of ``node``'s attribute ``name`` (an onnx NodeProto), or ``default``."""
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _mask_rank(graph, name: str) -> int | None:
    """Rank of the tensor ``name`` when it is a graph input, or rank-keeping Casts / Slices of one
    (fastft's exports: Cast(Slice(Cast(attention_mask))))."""
    producers = {o: n for n in graph.node for o in n.output}
    while name in producers and producers[name].op_type in ("Cast", "Slice", "Identity"):
        name = producers[name].input[0]
    for i in graph.input:
        if i.name == name and i.type.tensor_type.HasField("shape"):
            return len(i.type.tensor_type.shape.dim)
    return None


FLOAT = 1  # onnx.TensorProto.FLOAT


def _float_vectors(graph) -> dict:
    """{name: length} of the graph's 1-D float initializers (the LayerNorm scales and biases the
    op takes)."""
    return {i.name: int(i.dims[0]) for i in graph.initializer if len(i.dims) == 1 and i.data_type == FLOAT}


def _elem_types(graph) -> dict:
    """{tensor name: element type} for what the graph states: initializers, inputs, outputs, value_info."""
    out = {i.name: i.data_type for i in graph.initializer}
    for v in list(graph.input) + list(graph.output) + list(graph.value_info):
        if v.type.HasField("tensor_type"):
            out.setdefault(v.name, v.type.tensor_type.elem_type)
    return out


def _editable(model, copy: bool):
    """``model`` itself, or a copy of it (an onnx ModelProto) to rewrite."""
    import onnx

    if not copy:
        return model
    m = onnx.ModelProto()
    m.CopyFrom(model)
    return m


def _set_nodes(m, nodes: list, domain: str) -> None:
    """``m``'s graph with ``nodes`` in place of its own, value_info of tensors no node touches
    dropped, and ``domain`` imported."""
    from onnx import helper

    g = m.graph
    del g.node[:]
    g.node.extend(nodes)
    live = {t for x in g.node for t in list(x.input) + list(x.output)}
    keep = [vi for vi in g.value_info if vi.name in live]
    del g.value_info[:]
    g.value_info.extend(keep)
    if not any(o.domain == domain for o in m.opset_import):
        m.opset_import.append(helper.make_opsetid(domain, 1))


def swap_attention(
    model,
    *,
    extra_attrs: dict | None = None,
    fold_bias: bool = True,
    domain: str = DOMAIN,
    op_type: str = OP_TYPE,
    copy: bool = True,
):
    """A copy of ``model`` (onnx ModelProto; ``copy=False``: ``model`` itself, changed in place)
    with each ``com.microsoft`` Attention / QAttention node split into ORT's QKV projection and
    ``domain.op_type(qkv, mask[, bias])``.

    Only nodes the op computes exactly are swapped: bidirectional, no attribute beyond
    :data:`SWAPPABLE_ATTRIBUTES` (no qkv_hidden_sizes, mask_filter_value, rotary...), no past or
    extra bias inputs, no output but the first, and a (batch, seq) key mask or none; others stay.
    ``fold_bias=False`` adds the bias before the op instead of passing it (ops that take no
    bias): an Add after the fp32 projection, the INT8 GEMM's own bias input.
    Returns (model, number of nodes swapped).
    """
    from onnx import helper

    m = _editable(model, copy)
    g = m.graph
    nodes, swapped = [], 0
    for n in g.node:
        if n.domain != MS or n.op_type not in ("Attention", "QAttention"):
            nodes.append(n)
            continue
        ins = list(n.input)
        mask_at, extra = (3, 4) if n.op_type == "Attention" else (5, 8)
        mask = ins[mask_at] if len(ins) > mask_at else ""
        if (
            node_attr(n, "unidirectional", 0)
            or {a.name for a in n.attribute} - SWAPPABLE_ATTRIBUTES
            or any(ins[extra:])
            or any(n.output[1:])
            or (mask and _mask_rank(g, mask) != 2)
        ):
            nodes.append(n)
            continue
        base = n.name or n.output[0]
        qkv = base + "/fastft_qkv"
        bias = ins[2]
        if n.op_type == "Attention":
            proj = [helper.make_node("MatMul", ins[:2], [qkv], name=base + "/fastft_qkv_matmul")]
            if not fold_bias:
                proj[0].output[0] = qkv + "_nobias"
                proj.append(helper.make_node("Add", [qkv + "_nobias", bias], [qkv], name=base + "/fastft_qkv_add"))
        else:  # the same quantised x, ORT's INT8 GEMM (which adds the bias where the op takes none)
            xq, wq, _, x_scale, w_scale = ins[:5]
            x_zp = ins[6] if len(ins) > 6 else ""
            w_zp = ins[7] if len(ins) > 7 else ""
            gemm_in = [xq, wq, x_scale, w_scale, x_zp, w_zp] + ([] if fold_bias else [bias])
            proj = [helper.make_node("MatMulIntegerToFloat", gemm_in, [qkv], name=qkv, domain=MS)]
        op_inputs = [qkv, mask, bias] if fold_bias else [qkv, mask]
        nodes += proj
        nodes.append(
            helper.make_node(
                op_type,
                op_inputs,
                list(n.output[:1]),
                name=base + "/fastft_attention",
                domain=domain,
                num_heads=int(node_attr(n, "num_heads")),
                scale=float(node_attr(n, "scale", 0.0)),  # 0: head_dim ** -0.5, as the node's own default
                **(extra_attrs or {}),
            )
        )
        swapped += 1
    if swapped:
        _set_nodes(m, nodes, domain)
    return m, swapped


def swap_layernorm(model, *, extra_attrs: dict | None = None, copy: bool = True):
    """A copy of ``model`` (``copy=False``: ``model`` itself) with each residual
    ``LayerNormalization(Add(Add(a, b), bias))`` or ``LayerNormalization(Add(a, b))`` (the form
    :mod:`fastft.export.layernorm` leaves where ORT's SkipLayerNormalization is slower) as one
    ``ai.fastft.SkipLayerNorm(a, b, gamma, beta, bias)`` node.

    Only what the op computes exactly is taken: a LayerNormalization over the last axis whose
    mean / inverse-std outputs are unused, with a 1-D float constant scale (and bias), fed by Adds
    whose sums feed nothing else, the first adding a constant-weight product (:data:`PROJECTIONS`)
    to the output of a normalisation (:data:`NORMS`), the second adding a 1-D float constant of
    the hidden size. The op broadcasts the first Add's inputs as Add does.
    Returns (model, number of LayerNormalization nodes replaced).
    """
    from onnx import helper

    m = _editable(model, copy)
    g = m.graph
    sizes = _float_vectors(g)
    consts = {i.name for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    uses: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    for o in g.output:
        uses[o.name] = uses.get(o.name, 0) + 2  # a graph output is never folded away

    def only_use(name: str) -> bool:
        return uses.get(name, 0) == 1

    def made_by(name: str, kinds: set, weighted: bool = False) -> bool:
        """Whether ``name`` is the first output of a ``kinds`` node (``weighted``: whose second
        input, the weight, is a constant)."""
        n = producer.get(name)
        if n is None or n.op_type not in kinds or n.output[0] != name:
            return False
        return not weighted or (len(n.input) > 1 and n.input[1] in consts)

    def residual_add(name: str):
        """The Add producing ``name`` when it adds a projection to the residual stream: one
        input from a weight product, the other from a normalisation, both (batch, seq, hidden)
        (an Add of other tensors may broadcast, e.g. position embeddings, which the op refuses)."""
        n = producer.get(name)
        if n is None or n.op_type != "Add" or n.domain not in ("", "ai.onnx") or not only_use(name):
            return None
        a, b = n.input
        for proj, norm in ((a, b), (b, a)):
            if made_by(proj, PROJECTIONS, weighted=True) and made_by(norm, NORMS):
                return n
        return None

    drop, replace, swapped = set(), {}, 0
    for ln in g.node:
        if ln.op_type != "LayerNormalization" or ln.domain not in ("", "ai.onnx") or any(ln.output[1:]):
            continue
        if node_attr(ln, "axis", -1) != -1 or len(ln.input) < 2:
            continue
        x, gamma = ln.input[0], ln.input[1]
        beta = ln.input[2] if len(ln.input) > 2 else ""
        hidden = sizes.get(gamma)
        # one value may be broadcast over any width (the op takes one per unit); a true one-unit
        # layer's LayerNormalization is its bias alone, nothing to fuse
        if hidden is None or hidden < 2 or (beta and sizes.get(beta) != hidden):
            continue
        first, bias = residual_add(x), ""
        if first is None:  # Add(residual sum, bias constant)?
            n = producer.get(x)
            if n is None or n.op_type != "Add" or n.domain not in ("", "ai.onnx") or not only_use(x):
                continue
            consts_in = [i for i in n.input if i in consts]
            others = [i for i in n.input if i not in consts]
            if len(consts_in) != 1 or len(others) != 1 or sizes.get(consts_in[0]) != hidden:
                continue
            first = residual_add(others[0])
            if first is None:
                continue
            drop.add(id(n))
            bias = consts_in[0]
        drop.add(id(first))
        fused = helper.make_node(
            LN_OP_TYPE,
            [first.input[0], first.input[1], gamma, beta, bias],
            [ln.output[0]],
            name=(ln.name or ln.output[0]) + "/fastft_skip_layernorm",
            domain=DOMAIN,
            epsilon=float(node_attr(ln, "epsilon", 1e-5)),
            **(extra_attrs or {}),
        )
        replace[id(ln)] = fused
        swapped += 1
    if not swapped:
        return m, 0
    _set_nodes(m, [replace.get(id(n), n) for n in g.node if id(n) not in drop], DOMAIN)
    return m, swapped


def swap_gelu(model, *, extra_attrs: dict | None = None, copy: bool = True):
    """A copy of ``model`` (``copy=False``: ``model`` itself) with each ``com.microsoft`` BiasGelu
    (x, bias) and Gelu (x) node as ``ai.fastft.BiasGelu`` (the same erf GELU; the bias, as
    ORT's, one value per unit of the last axis). Returns (model, number of nodes replaced)."""
    from onnx import helper

    m = _editable(model, copy)
    types = _elem_types(m.graph)
    swapped = 0
    for i, n in enumerate(m.graph.node):
        if n.domain != MS or n.op_type not in ("BiasGelu", "Gelu") or len(n.output) != 1 or n.attribute:
            continue
        inputs = list(n.input[: 2 if n.op_type == "BiasGelu" else 1])
        if any(types.get(t, FLOAT) != FLOAT for t in inputs):  # the op takes float (the known types)
            continue
        fused = helper.make_node(
            GELU_OP_TYPE,
            inputs,
            list(n.output),
            name=(n.name or n.output[0]) + "/fastft_gelu",
            domain=DOMAIN,
            **(extra_attrs or {}),
        )
        m.graph.node[i].CopyFrom(fused)
        swapped += 1
    if swapped:
        _set_nodes(m, list(m.graph.node), DOMAIN)
    return m, swapped
